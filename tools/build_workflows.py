"""Write the example workflows in workflows/ (ComfyUI UI format, schema 0.4).

Run `python tools/build_workflows.py` after changing a node's inputs; tests/test_workflows.py checks every file
against the node definitions, and tests/integration validates and runs them in the real ComfyUI.
Model file names are the standard ones users download.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from workflow_format import is_widget, load_definitions, widget_slots  # noqa: E402

DEFS = load_definitions()
SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
NEGATIVE = "blurry, lowres, bad anatomy, worst quality, low quality"
ENCODE_WIDGETS = ["center crop", "concat", "", 0.5]  # crop, combine, image_weights, content_scale
ADVANCED_WIDGETS = ["", 1.0, 1.0, 0.0, ""]  # layer_weights, composition_weight, style_boost, composition_boost, frame_weights


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, kind, widgets=(), column=0, row=0, **inputs):
        """Add a node; widgets in slot order (hidden slots included), inputs as name=(node, output index)."""
        d = DEFS[kind]
        node = {
            "id": len(self.nodes) + 1, "type": kind, "pos": [40 + 340 * column, 40 + 190 * row], "size": [315, 130],
            "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [],
            "outputs": [{"name": t, "type": t, "links": [], "slot_index": i} for i, t in enumerate(d["outputs"])],
            "properties": {"Node name for S&R": kind}, "widgets_values": list(widgets),
        }
        assert len(node["widgets_values"]) == len(widget_slots(d)), (kind, widget_slots(d))
        self.nodes.append(node)
        for name, kind_, options, _ in d["inputs"]:
            if is_widget(kind_, options):
                continue
            slot = {"name": name, "type": kind_, "link": None}
            node["inputs"].append(slot)
            if name in inputs:
                source, index = inputs.pop(name)
                link_id = max((link[0] for link in self.links), default=0) + 1
                self.links.append([link_id, source["id"], index, node["id"], len(node["inputs"]) - 1, kind_])
                source["outputs"][index]["links"].append(link_id)
                slot["link"] = link_id
        assert not inputs, f"{kind} has no inputs {list(inputs)}"
        return node

    def json(self):
        return {
            "last_node_id": len(self.nodes), "last_link_id": max((link[0] for link in self.links), default=0),
            "nodes": self.nodes, "links": self.links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
        }


def out(node, index=0):
    return (node, index)


def image_prompt_graph(ckpt, adapter, text="", weight=1.0, size=512, image="reference.png", steps=30, cfg=6.5):
    """Checkpoint -> Load/Encode/Apply IP-Adapter -> KSampler -> Save: the shape every example starts from."""
    g = Graph()
    checkpoint = g.add("CheckpointLoaderSimple", [ckpt], 0, 0)
    loader = g.add("LoadIPAdapter", [adapter], 0, 1)
    clip_vision = g.add("CLIPVisionLoader", [VIT_H], 0, 2)
    reference = g.add("LoadImage", [image, "image"], 0, 3)
    prompt = g.add("EncodeImagePrompt", ENCODE_WIDGETS, 1, 1, ipadapter=out(loader), clip_vision=out(clip_vision),
                   image=out(reference))
    applied = g.add("ApplyIPAdapter", [weight, 0.0, 1.0], 2, 0, model=out(checkpoint), ipadapter=out(loader),
                    image_prompt=out(prompt))
    positive = g.add("CLIPTextEncode", [text], 1, 2, clip=out(checkpoint, 1))
    negative = g.add("CLIPTextEncode", [NEGATIVE], 1, 3, clip=out(checkpoint, 1))
    latent = g.add("EmptyLatentImage", [size, size, 1], 2, 2)
    sampler = g.add("KSampler", [0, "fixed", steps, cfg, "dpmpp_2m", "karras", 1.0], 3, 0, model=out(applied),
                    positive=out(positive), negative=out(negative), latent_image=out(latent))
    decoded = g.add("VAEDecode", [], 4, 0, samples=out(sampler), vae=out(checkpoint, 2))
    g.add("SaveImage", ["ipadapter"], 5, 0, images=out(decoded))
    return g, dict(checkpoint=checkpoint, loader=loader, clip_vision=clip_vision, reference=reference, prompt=prompt,
                   applied=applied, positive=positive, negative=negative, latent=latent, sampler=sampler)


def relink(g, node, name, source, index=0):
    """Point input `name` of `node` at another output (used to insert nodes into a built graph)."""
    slot = next(i for i, inp in enumerate(node["inputs"]) if inp["name"] == name)
    old = node["inputs"][slot]["link"]
    link = next(link for link in g.links if link[0] == old)
    g.nodes[link[1] - 1]["outputs"][link[2]]["links"].remove(old)
    link[1], link[2] = source["id"], index
    source["outputs"][index]["links"].append(old)


def sd15_image_prompt():
    return image_prompt_graph(SD15, "ip-adapter_sd15.safetensors")[0]


def sdxl_image_prompt():
    return image_prompt_graph(SDXL, "ip-adapter_sdxl_vit-h.safetensors", size=1024, cfg=5.0)[0]


def sd15_text_and_image():
    return image_prompt_graph(SD15, "ip-adapter-plus_sd15.safetensors",
                              text="a watercolor painting of a lighthouse at dusk", weight=0.5)[0]


def sd15_lora_controlnet():
    g, n = image_prompt_graph(SD15, "ip-adapter-plus_sd15.safetensors", text="a portrait, studio lighting", weight=0.7)
    lora = g.add("LoraLoader", ["your_sd15_lora.safetensors", 0.8, 0.8], 1, 0, model=out(n["checkpoint"]),
                 clip=out(n["checkpoint"], 1))
    relink(g, n["applied"], "model", lora)
    relink(g, n["positive"], "clip", lora, 1)
    relink(g, n["negative"], "clip", lora, 1)
    controlnet = g.add("ControlNetLoader", ["control_v11p_sd15_canny.pth"], 2, 3)
    edges = g.add("LoadImage", ["canny_edges.png", "image"], 2, 4)
    control = g.add("ControlNetApplyAdvanced", [0.8, 0.0, 1.0], 3, 2, positive=out(n["positive"]),
                    negative=out(n["negative"]), control_net=out(controlnet), image=out(edges))
    relink(g, n["sampler"], "positive", control, 0)
    relink(g, n["sampler"], "negative", control, 1)
    return g


def sd15_img2img():
    g, n = image_prompt_graph(SD15, "ip-adapter-plus_sd15.safetensors", text="oil painting", weight=0.8)
    source = g.add("LoadImage", ["img2img_source.png", "image"], 1, 4)
    encoded = g.add("VAEEncode", [], 2, 3, pixels=out(source), vae=out(n["checkpoint"], 2))
    relink(g, n["sampler"], "latent_image", encoded)
    n["sampler"]["widgets_values"][-1] = 0.6  # denoise: keep the source's layout
    return g


def sd15_inpainting():
    g, n = image_prompt_graph(SD15, "ip-adapter-plus_sd15.safetensors", text="a vase of flowers on the table")
    source = g.add("LoadImage", ["inpaint_source.png", "image"], 1, 4)  # paint the area in the mask editor
    encoded = g.add("VAEEncode", [], 2, 3, pixels=out(source), vae=out(n["checkpoint"], 2))
    masked = g.add("SetLatentNoiseMask", [], 2, 4, samples=out(encoded), mask=out(source, 1))
    relink(g, n["sampler"], "latent_image", masked)
    # the image prompt acts only where the picture is repainted
    slot = next(i for i, inp in enumerate(n["applied"]["inputs"]) if inp["name"] == "attn_mask")
    link_id = max(link[0] for link in g.links) + 1
    g.links.append([link_id, source["id"], 1, n["applied"]["id"], slot, "MASK"])
    source["outputs"][1]["links"].append(link_id)
    n["applied"]["inputs"][slot]["link"] = link_id
    return g


def sd15_two_adapters():
    g, n = image_prompt_graph(SD15, "ip-adapter-plus_sd15.safetensors", text="a portrait in a garden", weight=0.6,
                              image="style_reference.png")
    face_loader = g.add("LoadIPAdapter", ["ip-adapter-plus-face_sd15.safetensors"], 1, 4)
    face = g.add("LoadImage", ["face_reference.png", "image"], 0, 4)
    face_prompt = g.add("EncodeImagePrompt", ENCODE_WIDGETS, 1, 5, ipadapter=out(face_loader),
                        clip_vision=out(n["clip_vision"]), image=out(face))
    second = g.add("ApplyIPAdapter", [0.7, 0.0, 1.0], 2, 1, model=out(n["applied"]), ipadapter=out(face_loader),
                   image_prompt=out(face_prompt))
    relink(g, n["sampler"], "model", second)
    return g


def advanced(g, n, weight_type, weight=1.0, per_frame=False, frame_weights=""):
    """Replace the graph's Apply IP-Adapter with Apply IP-Adapter (advanced)."""
    old = n["applied"]
    widgets = [weight, 0.0, 1.0, weight_type, "V only", per_frame] + ADVANCED_WIDGETS[:-1] + [frame_weights]
    node = g.add("ApplyIPAdapterAdvanced", widgets, 2, 1, model=(g.nodes[link_source(g, old, "model")[0] - 1],
                                                                link_source(g, old, "model")[1]),
                 ipadapter=out(n["loader"]), image_prompt=out(n["prompt"]))
    relink(g, n["sampler"], "model", node)
    remove(g, old)
    return node


def link_source(g, node, name):
    link_id = next(inp["link"] for inp in node["inputs"] if inp["name"] == name)
    link = next(link for link in g.links if link[0] == link_id)
    return link[1], link[2]


def remove(g, node):
    """Drop a node whose outputs are no longer used, and the links into it."""
    assert not any(o["links"] for o in node["outputs"]), node["type"]
    for inp in node["inputs"]:
        if inp["link"] is not None:
            link = next(link for link in g.links if link[0] == inp["link"])
            g.nodes[link[1] - 1]["outputs"][link[2]]["links"].remove(link[0])
            g.links.remove(link)
    g.nodes.remove(node)
    renumber(g)


def renumber(g):
    """Keep node ids 1..n after a removal (links follow)."""
    mapping = {node["id"]: i + 1 for i, node in enumerate(g.nodes)}
    for node in g.nodes:
        node["id"] = mapping[node["id"]]
        node["order"] = node["id"] - 1
    for link in g.links:
        link[1], link[3] = mapping[link[1]], mapping[link[3]]


def sdxl_style_transfer():
    g, n = image_prompt_graph(SDXL, "ip-adapter-plus_sdxl_vit-h.safetensors", size=1024, cfg=5.0,
                              text="a cat sitting on a windowsill, masterpiece", image="style_reference.png")
    advanced(g, n, "style transfer")
    return g


def sd15_composition():
    g, n = image_prompt_graph(SD15, "ip-adapter-plus_sd15.safetensors", text="a medieval castle, oil painting",
                              image="composition_reference.png")
    advanced(g, n, "composition")
    return g


def sdxl_style_and_composition():
    g, n = image_prompt_graph(SDXL, "ip-adapter-plus_sdxl_vit-h.safetensors", size=1024, cfg=5.0,
                              text="a lighthouse", image="style_reference.png")
    layout = g.add("LoadImage", ["composition_reference.png", "image"], 0, 4)
    layout_prompt = g.add("EncodeImagePrompt", ENCODE_WIDGETS, 1, 4, ipadapter=out(n["loader"]),
                          clip_vision=out(n["clip_vision"]), image=out(layout))
    model_source = link_source(g, n["applied"], "model")
    both = g.add("ApplyIPAdapterStyleComposition", [1.0, 1.0, 0.0, 1.0, "V only"], 2, 1,
                 model=(g.nodes[model_source[0] - 1], model_source[1]), ipadapter=out(n["loader"]),
                 style_prompt=out(n["prompt"]), composition_prompt=out(layout_prompt))
    relink(g, n["sampler"], "model", both)
    remove(g, n["applied"])
    return g


def sd15_two_regions():
    """Two references, each steering its own region through a mask (paint them in the mask editor)."""
    g, n = image_prompt_graph(SD15, "ip-adapter-plus_sd15.safetensors", text="two friends on a bench in a park",
                              weight=0.8, image="left_reference.png", size=512)
    n["latent"]["widgets_values"] = [768, 512, 1]
    left_mask = g.add("LoadImageMask", ["left_mask.png", "image", "alpha"], 1, 5)
    slot = next(i for i, inp in enumerate(n["applied"]["inputs"]) if inp["name"] == "attn_mask")
    link_id = max(link[0] for link in g.links) + 1
    g.links.append([link_id, left_mask["id"], 0, n["applied"]["id"], slot, "MASK"])
    left_mask["outputs"][0]["links"].append(link_id)
    n["applied"]["inputs"][slot]["link"] = link_id
    right = g.add("LoadImage", ["right_reference.png", "image"], 0, 5)
    right_prompt = g.add("EncodeImagePrompt", ENCODE_WIDGETS, 1, 6, ipadapter=out(n["loader"]),
                         clip_vision=out(n["clip_vision"]), image=out(right))
    right_mask = g.add("LoadImageMask", ["right_mask.png", "image", "alpha"], 1, 7)
    second = g.add("ApplyIPAdapter", [0.8, 0.0, 1.0], 2, 1, model=out(n["applied"]), ipadapter=out(n["loader"]),
                   image_prompt=out(right_prompt), attn_mask=out(right_mask))
    relink(g, n["sampler"], "model", second)
    return g


def sd15_animation_batch():
    """Four frames, each steered by its own reference (per_frame), fading the adapter out over the batch."""
    g, n = image_prompt_graph(SD15, "ip-adapter-plus_sd15.safetensors", text="a flower opening, timelapse",
                              image="frame_1.png")
    batch = n["reference"]
    for i in range(2, 5):
        frame = g.add("LoadImage", [f"frame_{i}.png", "image"], 0, 3 + i)
        batch = g.add("ImageBatch", [], 1, 3 + i, image1=out(batch), image2=out(frame))
    relink(g, n["prompt"], "image", batch)
    n["latent"]["widgets_values"] = [512, 512, 4]
    advanced(g, n, "linear", per_frame=True, frame_weights="1.0, 0.9, 0.8, 0.7")
    return g


WORKFLOWS = {
    "sd15_image_prompt": sd15_image_prompt,
    "sdxl_image_prompt": sdxl_image_prompt,
    "sd15_text_and_image": sd15_text_and_image,
    "sd15_lora_controlnet": sd15_lora_controlnet,
    "sd15_img2img": sd15_img2img,
    "sd15_inpainting": sd15_inpainting,
    "sd15_two_adapters": sd15_two_adapters,
    "sdxl_style_transfer": sdxl_style_transfer,
    "sd15_composition": sd15_composition,
    "sdxl_style_and_composition": sdxl_style_and_composition,
    "sd15_two_regions": sd15_two_regions,
    "sd15_animation_batch": sd15_animation_batch,
}

if __name__ == "__main__":
    os.makedirs(os.path.join(ROOT, "workflows"), exist_ok=True)
    for name, build in WORKFLOWS.items():
        with open(os.path.join(ROOT, "workflows", f"{name}.json"), "w") as f:
            json.dump(build().json(), f, indent=1)
        print("wrote", name)
