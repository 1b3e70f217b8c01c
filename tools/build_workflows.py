"""Write the example workflows in workflows/ (ComfyUI UI format, schema 0.4).

Run `python tools/build_workflows.py` after changing a node's inputs. Each node is described by its widget values
*by name*; `widgets_values` is then written in the order the real frontend reads it, which
tests/fixtures/frontend_nodes.json records from the frontend itself (the browser check keeps that file honest).
The same names give `intended_prompt()`, the API prompt the workflow is meant to queue: the browser check drops
each file on the real frontend and compares its `app.graphToPrompt()` with it.

Layout: one column per part, read left to right (a note on the model files, models, images, prompts, IP-Adapter,
sampling, output), each column a named group, nodes stacked at the size the frontend computes for them.
Model file names are the standard ones users download.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from workflow_format import FRONTEND_ONLY, load_definitions, load_frontend_nodes  # noqa: E402

DEFS = load_definitions()
FRONTEND = load_frontend_nodes()
SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
NEGATIVE = "blurry, lowres, bad anatomy, worst quality, low quality"

# (key, group title): the columns, left to right
COLUMNS = [("note", "Read me"), ("models", "Models"), ("images", "Reference images"), ("encode", "Prompts"),
           ("apply", "IP-Adapter"), ("sample", "Sampling"), ("output", "Output")]
# within a column, image prompts above text prompts above the rest; otherwise in the order they were added
RANK = {"EncodeImagePrompt": 0, "CLIPTextEncode": 1, "FluxGuidance": 1}
NODE_WIDTH = 320  # wide enough for the standard file names in the combo widgets
TEXT_HEIGHT = 150  # room for a few lines in the prompt boxes
NOTE_SIZE = (420, 420)
TITLE_HEIGHT = 30  # LiteGraph draws the title bar above a node's pos
GAP = 40
GROUP_PAD = 20
GROUP_TITLE = 50
TOP = 40 + GROUP_TITLE + TITLE_HEIGHT

# where each model file goes and where it comes from
AUTO_ENCODER = "auto (by content)"  # Load IP-Adapter + Encoder's clip_vision choice
MODEL_FOLDERS = {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints", ("LoadIPAdapter", "ipadapter_file"): "ipadapter",
                 ("LoadIPAdapterAndEncoder", "ipadapter_file"): "ipadapter",
                 ("LoadIPAdapterAndEncoder", "clip_vision"): "clip_vision",
                 ("CLIPVisionLoader", "clip_name"): "clip_vision", ("LoraLoader", "lora_name"): "loras",
                 ("ControlNetLoader", "control_net_name"): "controlnet", ("UNETLoader", "unet_name"): "diffusion_models",
                 ("DualCLIPLoader", "clip_name1"): "text_encoders", ("DualCLIPLoader", "clip_name2"): "text_encoders",
                 ("VAELoader", "vae_name"): "vae", ("TripleCLIPLoader", "clip_name1"): "text_encoders",
                 ("TripleCLIPLoader", "clip_name2"): "text_encoders", ("TripleCLIPLoader", "clip_name3"): "text_encoders"}
SOURCES = {
    SD15: "Comfy-Org/stable-diffusion-v1-5-archive (Hugging Face)",
    SDXL: "stabilityai/stable-diffusion-xl-base-1.0",
    VIT_H: "h94/IP-Adapter, models/image_encoder/model.safetensors, renamed",
    "control_v11p_sd15_canny.pth": "lllyasviel/ControlNet-v1-1",
    "your_sd15_lora.safetensors": "any SD1.5 LoRA of yours",
    "flux1-dev.safetensors": "black-forest-labs/FLUX.1-dev",
    "clip_l.safetensors": "comfyanonymous/flux_text_encoders",
    "t5xxl_fp16.safetensors": "comfyanonymous/flux_text_encoders",
    "ae.safetensors": "black-forest-labs/FLUX.1-dev",
    "flux-ip-adapter.safetensors": "XLabs-AI/flux-ip-adapter (v1; v2: XLabs-AI/flux-ip-adapter-v2)",
    "clip-vit-large-patch14.safetensors": "openai/clip-vit-large-patch14, model.safetensors, renamed",
    "instantx-flux1-dev-ip-adapter.bin": "InstantX/FLUX.1-dev-IP-Adapter, ip-adapter.bin, renamed",
    "siglip-so400m-patch14-384.safetensors": "google/siglip-so400m-patch14-384, model.safetensors, renamed "
                                             "(it has the pooling head the InstantX Flux adapter needs)",
    "sd3.5_large.safetensors": "stabilityai/stable-diffusion-3.5-large",
    "clip_g.safetensors": "stabilityai/stable-diffusion-3.5-large, text_encoders/",
    "instantx-sd3.5-large-ip-adapter.bin": "InstantX/SD3.5-Large-IP-Adapter, ip-adapter.bin, renamed",
    "ip-adapter-faceid-plusv2_sd15.bin": "h94/IP-Adapter-FaceID (its LoRA is inside: do not add the _lora file too)",
    "ip-adapter-faceid_sdxl.bin": "h94/IP-Adapter-FaceID (its LoRA is inside: do not add the _lora file too)",
    "ip-adapter-faceid_sd15.bin": "h94/IP-Adapter-FaceID (its LoRA is inside: do not add the _lora file too)",
}
SOURCES["clip_l.safetensors"] = "comfyanonymous/flux_text_encoders (the same file as SD3.5's text_encoders/clip_l)"
SOURCES["t5xxl_fp16.safetensors"] = "comfyanonymous/flux_text_encoders (the same file as SD3.5's text_encoders/t5xxl_fp16)"
FLUX = "flux1-dev.safetensors"


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, kind, column, widgets=None, **inputs):
        """Add a node in a column; widget values by name (unnamed ones take the frontend's default),
        inputs as name=(node, output index)."""
        assert kind in FRONTEND, f"{kind}: not in tests/fixtures/frontend_nodes.json (record it)"
        layout, widgets = FRONTEND[kind], dict(widgets or {})
        unknown = set(widgets) - set(layout["widgets_values"])
        assert not unknown, f"{kind} has no widgets {unknown}"
        values = {name: widgets.get(name, default) for name, default in zip(layout["widgets_values"], layout["defaults"])}
        width = max(NODE_WIDTH, layout["size"][0])
        height = max(TEXT_HEIGHT, layout["size"][1]) if kind == "CLIPTextEncode" else layout["size"][1]
        if kind in FRONTEND_ONLY:
            width, height = NOTE_SIZE
        node = {
            "id": len(self.nodes) + 1, "type": kind, "pos": [0, 0], "size": [width, height],
            "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
            "properties": {"Node name for S&R": kind}, "widgets_values": list(values.values()),
            "_column": column, "_values": values,
        }
        self.nodes.append(node)
        definition = DEFS.get(kind, {"inputs": [], "outputs": []})
        node["outputs"] = [{"name": t, "type": t, "links": [], "slot_index": i} for i, t in enumerate(definition["outputs"])]
        for name, kind_, _, _ in definition["inputs"]:
            if name in values:
                continue
            slot = {"name": name, "type": kind_, "link": None}
            node["inputs"].append(slot)
            if name in inputs:
                self.connect(inputs.pop(name), node, name)
        assert not inputs, f"{kind} has no inputs {list(inputs)}"
        return node

    def connect(self, source, node, name):
        """Link output (source node, index) to input `name` of `node`, replacing any link already there."""
        source_node, index = source
        slot = next(i for i, inp in enumerate(node["inputs"]) if inp["name"] == name)
        old = node["inputs"][slot]["link"]
        if old is not None:
            link = next(link for link in self.links if link[0] == old)
            self.nodes[link[1] - 1]["outputs"][link[2]]["links"].remove(old)
            self.links.remove(link)
        link_id = max((link[0] for link in self.links), default=0) + 1
        self.links.append([link_id, source_node["id"], index, node["id"], slot, node["inputs"][slot]["type"]])
        source_node["outputs"][index]["links"].append(link_id)
        node["inputs"][slot]["link"] = link_id

    def add_note(self):
        """A note node listing the model files this graph loads and the folder each goes in."""
        lines = ["Model files for this workflow. Put each in the ComfyUI folder shown, then press R (refresh) "
                 "or restart ComfyUI:", ""]
        for node in self.nodes:
            for name, value in node["_values"].items():
                folder = MODEL_FOLDERS.get((node["type"], name))
                if folder and value == AUTO_ENCODER:  # the loader finds it by content: any file name will do
                    lines.append(f"- models/clip_vision/{VIT_H} (any name: Load IP-Adapter + Encoder finds it by its "
                                 f"contents)\n    from {SOURCES[VIT_H]}")
                elif folder:
                    source = SOURCES.get(value, "h94/IP-Adapter (Hugging Face)")
                    lines.append(f"- models/{folder}/{value}\n    from {source}")
        for node in self.nodes:
            if node["type"] == "LoadFaceAnalyzer":
                lines.append(f"- models/insightface/models/{node['_values']['pack']}/ with det_10g.onnx and w600k_r50.onnx\n"
                             "    from insightface's buffalo_l.zip (unzip it so the .onnx files sit directly in that "
                             "folder); needs pip install onnxruntime. The InsightFace models and the FaceID adapters "
                             "are for non-commercial use only.")
        images = sorted({n["_values"]["image"] for n in self.nodes if n["type"] in ("LoadImage", "LoadImageMask")})
        lines += ["", "Images: replace " + ", ".join(images) + " with your own (click the image box, or drop a file "
                  "on the node). Masks: right-click a Load Image node > Open in MaskEditor."]
        self.add("Note", "note", {"text": "\n".join(lines)})

    def layout(self):
        """Stack each column's nodes top to bottom, columns left to right, and frame each column in a group."""
        x, groups = 40, []
        for key, title in COLUMNS:
            members = sorted((n for n in self.nodes if n["_column"] == key), key=lambda n: RANK.get(n["type"], 9))
            if not members:
                continue
            width, y = max(n["size"][0] for n in members), TOP
            for node in members:
                node["pos"] = [x + GROUP_PAD, y]
                y += node["size"][1] + TITLE_HEIGHT + GAP
            groups.append({"title": title, "bounding": [x, TOP - TITLE_HEIGHT - GROUP_TITLE, width + 2 * GROUP_PAD,
                                                        y - GAP - TOP + TITLE_HEIGHT + GROUP_TITLE + GROUP_PAD],
                           "color": "#3f789e", "font_size": 24, "flags": {}})
            x += width + 2 * GROUP_PAD + GAP
        return groups

    def json(self):
        if not any(n["type"] == "Note" for n in self.nodes):
            self.add_note()
        groups = self.layout()
        nodes = [{k: v for k, v in n.items() if not k.startswith("_")} for n in self.nodes]
        return {
            "last_node_id": len(self.nodes), "last_link_id": max((link[0] for link in self.links), default=0),
            "nodes": nodes, "links": self.links, "groups": groups, "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [0, 0]}}, "version": 0.4,
        }

    def intended_prompt(self):
        """The API prompt this graph is meant to queue: what the frontend's graphToPrompt must give."""
        links = {link[0]: link for link in self.links}
        prompt = {}
        for node in self.nodes:
            if node["type"] in FRONTEND_ONLY:
                continue
            declared = {name for name, _, _, _ in DEFS[node["type"]]["inputs"]}
            inputs = {name: value for name, value in node["_values"].items() if name in declared}
            for inp in node["inputs"]:
                if inp["link"] is not None:
                    _, src, src_slot, _, _, _ = links[inp["link"]]
                    inputs[inp["name"]] = [str(src), src_slot]
            prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
        return prompt


def out(node, index=0):
    return (node, index)


def encoders(g, ckpt, adapter, image="reference.png", text="", clip_vision=VIT_H):
    """Checkpoint, adapter, CLIP vision, a reference image, its image prompt and the two text prompts."""
    n = {"checkpoint": g.add("CheckpointLoaderSimple", "models", {"ckpt_name": ckpt})}
    n["loader"] = g.add("LoadIPAdapter", "models", {"ipadapter_file": adapter})
    n["clip_vision"] = g.add("CLIPVisionLoader", "models", {"clip_name": clip_vision})
    n["reference"] = g.add("LoadImage", "images", {"image": image})
    n["prompt"] = g.add("EncodeImagePrompt", "encode", ipadapter=out(n["loader"]), clip_vision=out(n["clip_vision"]),
                        image=out(n["reference"]))
    n["positive"] = g.add("CLIPTextEncode", "encode", {"text": text}, clip=out(n["checkpoint"], 1))
    n["negative"] = g.add("CLIPTextEncode", "encode", {"text": NEGATIVE}, clip=out(n["checkpoint"], 1))
    return n


def sample(g, n, model, size=(512, 512), batch=1, latent=None, steps=30, cfg=6.5, denoise=1.0):
    """Empty latent (unless given), KSampler, decode and save."""
    if latent is None:
        latent = out(g.add("EmptyLatentImage", "sample", {"width": size[0], "height": size[1], "batch_size": batch}))
    sampler = g.add("KSampler", "sample", {"seed": 0, "control_after_generate": "fixed", "steps": steps, "cfg": cfg,
                                           "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": denoise},
                    model=model, positive=out(n["positive"]), negative=out(n["negative"]), latent_image=latent)
    n["sampler"] = sampler
    decoded = g.add("VAEDecode", "output", samples=out(sampler), vae=out(n["checkpoint"], 2))
    g.add("SaveImage", "output", {"filename_prefix": "ipadapter"}, images=out(decoded))
    return g


def apply(g, n, weight=1.0, model=None, prompt=None, **inputs):
    return g.add("ApplyIPAdapter", "apply", {"weight": weight}, model=model or out(n["checkpoint"]),
                 ipadapter=out(n["loader"]), image_prompt=out(prompt or n["prompt"]), **inputs)


def apply_advanced(g, n, weight_type, weight=1.0, **widgets):
    return g.add("ApplyIPAdapterAdvanced", "apply", dict(weight=weight, weight_type=weight_type, **widgets),
                 model=out(n["checkpoint"]), ipadapter=out(n["loader"]), image_prompt=out(n["prompt"]))


def sd15_image_prompt():
    g = Graph()
    n = encoders(g, SD15, "ip-adapter_sd15.safetensors")
    return sample(g, n, out(apply(g, n)))


def sdxl_image_prompt():
    g = Graph()
    n = encoders(g, SDXL, "ip-adapter_sdxl_vit-h.safetensors")
    return sample(g, n, out(apply(g, n)), size=(1024, 1024), cfg=5.0)


def sd15_text_and_image():
    g = Graph()
    n = encoders(g, SD15, "ip-adapter-plus_sd15.safetensors", text="a watercolor painting of a lighthouse at dusk")
    return sample(g, n, out(apply(g, n, weight=0.5)))


def sd15_lora_controlnet():
    g = Graph()
    n = encoders(g, SD15, "ip-adapter-plus_sd15.safetensors", text="a portrait, studio lighting")
    lora = g.add("LoraLoader", "models", {"lora_name": "your_sd15_lora.safetensors", "strength_model": 0.8,
                                          "strength_clip": 0.8},
                 model=out(n["checkpoint"]), clip=out(n["checkpoint"], 1))
    g.connect(out(lora, 1), n["positive"], "clip")
    g.connect(out(lora, 1), n["negative"], "clip")
    controlnet = g.add("ControlNetLoader", "models", {"control_net_name": "control_v11p_sd15_canny.pth"})
    edges = g.add("LoadImage", "images", {"image": "canny_edges.png"})
    control = g.add("ControlNetApplyAdvanced", "encode", {"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0},
                    positive=out(n["positive"]), negative=out(n["negative"]), control_net=out(controlnet),
                    image=out(edges))
    applied = apply(g, n, weight=0.7, model=out(lora))
    sample(g, n, out(applied))
    g.connect(out(control, 0), n["sampler"], "positive")
    g.connect(out(control, 1), n["sampler"], "negative")
    return g


def sd15_img2img():
    g = Graph()
    n = encoders(g, SD15, "ip-adapter-plus_sd15.safetensors", text="oil painting")
    source = g.add("LoadImage", "images", {"image": "img2img_source.png"})
    encoded = g.add("VAEEncode", "encode", pixels=out(source), vae=out(n["checkpoint"], 2))
    # denoise 0.6 keeps the source's layout
    return sample(g, n, out(apply(g, n, weight=0.8)), latent=out(encoded), denoise=0.6)


def sd15_inpainting():
    g = Graph()
    n = encoders(g, SD15, "ip-adapter-plus_sd15.safetensors", text="a vase of flowers on the table")
    source = g.add("LoadImage", "images", {"image": "inpaint_source.png"})  # paint the area in the mask editor
    encoded = g.add("VAEEncode", "encode", pixels=out(source), vae=out(n["checkpoint"], 2))
    masked = g.add("SetLatentNoiseMask", "encode", samples=out(encoded), mask=out(source, 1))
    # the image prompt acts only where the picture is repainted
    return sample(g, n, out(apply(g, n, attn_mask=out(source, 1))), latent=out(masked))


def sd15_two_adapters():
    g = Graph()
    n = encoders(g, SD15, "ip-adapter-plus_sd15.safetensors", image="style_reference.png", text="a portrait in a garden")
    face_loader = g.add("LoadIPAdapter", "models", {"ipadapter_file": "ip-adapter-plus-face_sd15.safetensors"})
    face = g.add("LoadImage", "images", {"image": "face_reference.png"})
    face_prompt = g.add("EncodeImagePrompt", "encode", ipadapter=out(face_loader), clip_vision=out(n["clip_vision"]),
                        image=out(face))
    style = apply(g, n, weight=0.6)
    second = g.add("ApplyIPAdapter", "apply", {"weight": 0.7}, model=out(style), ipadapter=out(face_loader),
                   image_prompt=out(face_prompt))
    return sample(g, n, out(second))


def sdxl_style_transfer():
    g = Graph()
    n = encoders(g, SDXL, "ip-adapter-plus_sdxl_vit-h.safetensors", image="style_reference.png",
                 text="a cat sitting on a windowsill, masterpiece")
    return sample(g, n, out(apply_advanced(g, n, "style transfer")), size=(1024, 1024), cfg=5.0)


def sd15_composition():
    g = Graph()
    n = encoders(g, SD15, "ip-adapter-plus_sd15.safetensors", image="composition_reference.png",
                 text="a medieval castle, oil painting")
    return sample(g, n, out(apply_advanced(g, n, "composition")))


def sdxl_style_and_composition():
    g = Graph()
    n = encoders(g, SDXL, "ip-adapter-plus_sdxl_vit-h.safetensors", image="style_reference.png", text="a lighthouse")
    layout = g.add("LoadImage", "images", {"image": "composition_reference.png"})
    layout_prompt = g.add("EncodeImagePrompt", "encode", ipadapter=out(n["loader"]), clip_vision=out(n["clip_vision"]),
                          image=out(layout))
    both = g.add("ApplyIPAdapterStyleComposition", "apply", model=out(n["checkpoint"]), ipadapter=out(n["loader"]),
                 style_prompt=out(n["prompt"]), composition_prompt=out(layout_prompt))
    return sample(g, n, out(both), size=(1024, 1024), cfg=5.0)


def sd15_two_regions():
    """Two references, each steering its own region through a mask (paint them in the mask editor)."""
    g = Graph()
    n = encoders(g, SD15, "ip-adapter-plus_sd15.safetensors", image="left_reference.png",
                 text="two friends on a bench in a park")
    left_mask = g.add("LoadImageMask", "images", {"image": "left_mask.png", "channel": "alpha"})
    right = g.add("LoadImage", "images", {"image": "right_reference.png"})
    right_mask = g.add("LoadImageMask", "images", {"image": "right_mask.png", "channel": "alpha"})
    right_prompt = g.add("EncodeImagePrompt", "encode", ipadapter=out(n["loader"]), clip_vision=out(n["clip_vision"]),
                         image=out(right))
    left_applied = apply(g, n, weight=0.8, attn_mask=out(left_mask))
    both = g.add("ApplyIPAdapter", "apply", {"weight": 0.8}, model=out(left_applied), ipadapter=out(n["loader"]),
                 image_prompt=out(right_prompt), attn_mask=out(right_mask))
    return sample(g, n, out(both), size=(768, 512))


def sd15_animation_batch():
    """Four frames, each steered by its own reference (per_frame), fading the adapter out over the batch."""
    g = Graph()
    n = encoders(g, SD15, "ip-adapter-plus_sd15.safetensors", image="frame_1.png", text="a flower opening, timelapse")
    batch = n["reference"]
    for i in range(2, 5):
        frame = g.add("LoadImage", "images", {"image": f"frame_{i}.png"})
        batch = g.add("ImageBatch", "images", image1=out(batch), image2=out(frame))
    g.connect(out(batch), n["prompt"], "image")
    applied = apply_advanced(g, n, "linear", per_frame=True, frame_weights="1.0, 0.9, 0.8, 0.7")
    return sample(g, n, out(applied), batch=4)


def paired_encoders(g, adapter, image, text):
    """Checkpoint, Load IP-Adapter + Encoder (the image encoder found by content) and the two text prompts."""
    n = {"checkpoint": g.add("CheckpointLoaderSimple", "models", {"ckpt_name": SD15})}
    n["loader"] = g.add("LoadIPAdapterAndEncoder", "models", {"ipadapter_file": adapter, "clip_vision": AUTO_ENCODER})
    n["reference"] = g.add("LoadImage", "images", {"image": image})
    n["positive"] = g.add("CLIPTextEncode", "encode", {"text": text}, clip=out(n["checkpoint"], 1))
    n["negative"] = g.add("CLIPTextEncode", "encode", {"text": NEGATIVE}, clip=out(n["checkpoint"], 1))
    return n


def sd15_animation_context_windows():
    """Six frames, each steered by its own reference, sampled in ComfyUI's context windows of 4 frames (overlap 2):
    every frame keeps its reference, weight and mask whichever window it is in."""
    g = Graph()
    n = paired_encoders(g, "ip-adapter-plus_sd15.safetensors", "frame_1.png", "a flower opening, timelapse")
    batch = n["reference"]
    for i in range(2, 7):
        frame = g.add("LoadImage", "images", {"image": f"frame_{i}.png"})
        batch = g.add("ImageBatch", "images", image1=out(batch), image2=out(frame))
    n["prompt"] = g.add("EncodeImagePrompt", "encode", ipadapter=out(n["loader"]), clip_vision=out(n["loader"], 1),
                        image=out(batch))
    applied = g.add("ApplyIPAdapterAdvanced", "apply", {"weight": 0.8, "per_frame": True,
                                                         "frame_weights": "1.0, 0.95, 0.9, 0.85, 0.8, 0.75"},
                    model=out(n["checkpoint"]), ipadapter=out(n["loader"]), image_prompt=out(n["prompt"]))
    windows = g.add("ContextWindowsManual", "sample", {"context_length": 4, "context_overlap": 2,
                                                       "fuse_method": "pyramid"}, model=out(applied))
    return sample(g, n, out(windows), batch=6)


def sd15_combined_prompts():
    """Two references encoded their own way (one cropped, one padded whole) and combined into one image prompt."""
    g = Graph()
    n = paired_encoders(g, "ip-adapter-plus_sd15.safetensors", "reference.png", "a portrait, soft light")
    second = g.add("LoadImage", "images", {"image": "second_reference.png"})
    first = g.add("EncodeImagePrompt", "encode", {"crop": "center crop"}, ipadapter=out(n["loader"]),
                  clip_vision=out(n["loader"], 1), image=out(n["reference"]))
    padded = g.add("EncodeImagePrompt", "encode", {"crop": "pad", "image_weights": "0.6"}, ipadapter=out(n["loader"]),
                   clip_vision=out(n["loader"], 1), image=out(second))
    combined = g.add("CombineImagePrompts", "encode", {"combine": "concat"}, image_prompt_1=out(first),
                     image_prompt_2=out(padded))
    applied = g.add("ApplyIPAdapter", "apply", {"weight": 0.8}, model=out(n["checkpoint"]), ipadapter=out(n["loader"]),
                    image_prompt=out(combined))
    return sample(g, n, out(applied))


def face_prompt(g, loader, images, clip_vision=None, **embed):
    """Load Face Analyzer (buffalo_l) -> Embed Faces -> Encode Image Prompt for a FaceID adapter."""
    analyzer = g.add("LoadFaceAnalyzer", "models", {"pack": "buffalo_l"})
    faces = g.add("EmbedFaces", "images", embed, face_analyzer=out(analyzer), image=out(images))
    inputs = {"clip_vision": clip_vision} if clip_vision else {}
    return g.add("EncodeImagePrompt", "encode", ipadapter=out(loader), faces=out(faces), **inputs)


def sd15_faceid_plusv2():
    """A portrait from one face photo with FaceID-Plus v2: the identity from ArcFace, the face's detail from CLIP
    ViT-H of the aligned crop, the LoRA of the file at the authors' strength (1.0), s_scale 1.0 as they run it."""
    g = Graph()
    n = paired_encoders(g, "ip-adapter-faceid-plusv2_sd15.bin", "face.png",
                        "a portrait photo of a person in a garden, soft light, high quality")
    n["prompt"] = face_prompt(g, n["loader"], n["reference"], out(n["loader"], 1))
    applied = g.add("ApplyIPAdapterAdvanced", "apply", {"weight": 1.0, "s_scale": 1.0, "lora_strength": 1.0},
                    model=out(n["checkpoint"]), ipadapter=out(n["loader"]), image_prompt=out(n["prompt"]))
    return sample(g, n, out(applied), cfg=7.5)


def sdxl_faceid():
    """SDXL FaceID: the identity from ArcFace alone (no image encoder), with the file's LoRA; cfg 5 as the authors."""
    g = Graph()
    n = {"checkpoint": g.add("CheckpointLoaderSimple", "models", {"ckpt_name": SDXL}),
         "loader": g.add("LoadIPAdapter", "models", {"ipadapter_file": "ip-adapter-faceid_sdxl.bin"}),
         "reference": g.add("LoadImage", "images", {"image": "face.png"})}
    n["prompt"] = face_prompt(g, n["loader"], n["reference"])
    n["positive"] = g.add("CLIPTextEncode", "encode", {"text": "a portrait photo of a person, city at night, "
                                                                "cinematic"}, clip=out(n["checkpoint"], 1))
    n["negative"] = g.add("CLIPTextEncode", "encode", {"text": NEGATIVE}, clip=out(n["checkpoint"], 1))
    return sample(g, n, out(apply(g, n)), size=(1024, 1024), cfg=5.0)


def sd15_faceid_batch_skip():
    """Three frames, each with the face of its own photo (per_frame); the middle photo has no face, so Embed Faces
    (no_face: skip) gives that frame weight 0 instead of stopping the run."""
    g = Graph()
    n = {"checkpoint": g.add("CheckpointLoaderSimple", "models", {"ckpt_name": SD15}),
         "loader": g.add("LoadIPAdapter", "models", {"ipadapter_file": "ip-adapter-faceid_sd15.bin"})}
    batch = g.add("LoadImage", "images", {"image": "face_1.png"})
    for name in ("no_face_2.png", "face_3.png"):
        frame = g.add("LoadImage", "images", {"image": name})
        batch = g.add("ImageBatch", "images", image1=out(batch), image2=out(frame))
    n["prompt"] = face_prompt(g, n["loader"], batch, no_face="skip")
    n["positive"] = g.add("CLIPTextEncode", "encode", {"text": "a portrait photo of a person, smiling"},
                          clip=out(n["checkpoint"], 1))
    n["negative"] = g.add("CLIPTextEncode", "encode", {"text": NEGATIVE}, clip=out(n["checkpoint"], 1))
    applied = apply_advanced(g, n, "linear", per_frame=True)
    return sample(g, n, out(applied), batch=3, cfg=7.5)


def flux_graph(adapter, clip_vision, text, guidance, crop="center crop"):
    """Flux.1-dev from its separate files (UNET, the two text encoders, VAE), an image prompt and both text prompts,
    each with its FluxGuidance (the guidance embedding both CFG passes see)."""
    g = Graph()
    n = {"unet": g.add("UNETLoader", "models", {"unet_name": FLUX, "weight_dtype": "default"})}
    n["clip"] = g.add("DualCLIPLoader", "models", {"clip_name1": "clip_l.safetensors",
                                                   "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"})
    n["vae"] = g.add("VAELoader", "models", {"vae_name": "ae.safetensors"})
    n["loader"] = g.add("LoadIPAdapter", "models", {"ipadapter_file": adapter})
    n["clip_vision"] = g.add("CLIPVisionLoader", "models", {"clip_name": clip_vision})
    n["reference"] = g.add("LoadImage", "images", {"image": "reference.png"})
    n["prompt"] = g.add("EncodeImagePrompt", "encode", {"crop": crop}, ipadapter=out(n["loader"]),
                        clip_vision=out(n["clip_vision"]), image=out(n["reference"]))
    for name, words in (("positive", text), ("negative", "")):
        encoded = g.add("CLIPTextEncode", "encode", {"text": words}, clip=out(n["clip"]))
        n[name] = g.add("FluxGuidance", "encode", {"guidance": guidance}, conditioning=out(encoded))
    return g, n


def flux_sample(g, n, model, steps, cfg):
    latent = g.add("EmptySD3LatentImage", "sample", {"width": 1024, "height": 1024, "batch_size": 1})
    sampler = g.add("KSampler", "sample", {"seed": 0, "control_after_generate": "fixed", "steps": steps, "cfg": cfg,
                                           "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0},
                    model=model, positive=out(n["positive"]), negative=out(n["negative"]), latent_image=out(latent))
    decoded = g.add("VAEDecode", "output", samples=out(sampler), vae=out(n["vae"]))
    g.add("SaveImage", "output", {"filename_prefix": "ipadapter_flux"}, images=out(decoded))
    return g


def flux_xlabs():
    """The XLabs recipe: true CFG 3.5 against an empty negative (its uncond image tokens come from a black image),
    guidance 4, 25 steps, weight 1.0. For v2 (flux-ip-adapter-v2) set cfg to 1.0: XLabs says v2 wants no true CFG."""
    g, n = flux_graph("flux-ip-adapter.safetensors", "clip-vit-large-patch14.safetensors",
                      "a portrait of a woman in a garden, detailed", guidance=4.0)
    applied = g.add("ApplyIPAdapter", "apply", {"weight": 1.0}, model=out(n["unet"]), ipadapter=out(n["loader"]),
                    image_prompt=out(n["prompt"]))
    return flux_sample(g, n, out(applied), steps=25, cfg=3.5)


def flux_instantx():
    """InstantX's example: FLUX.1-dev at guidance 3.5 with no CFG (cfg 1), 24 steps, weight 0.7; the encoder sees the
    image squashed to 384x384, as SigLIP's processor does."""
    g, n = flux_graph("instantx-flux1-dev-ip-adapter.bin", "siglip-so400m-patch14-384.safetensors",
                      "a young girl playing guitar, watercolor", guidance=3.5, crop="squash")
    applied = g.add("ApplyIPAdapter", "apply", {"weight": 0.7}, model=out(n["unet"]), ipadapter=out(n["loader"]),
                    image_prompt=out(n["prompt"]))
    return flux_sample(g, n, out(applied), steps=24, cfg=1.0)


def sd35_instantx():
    """InstantX's SD3.5-Large example: weight 0.5, cfg 5, 24 steps; SigLIP sees the image squashed to 384x384."""
    g = Graph()
    checkpoint = g.add("CheckpointLoaderSimple", "models", {"ckpt_name": "sd3.5_large.safetensors"})
    clip = g.add("TripleCLIPLoader", "models", {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors",
                                                "clip_name3": "t5xxl_fp16.safetensors"})
    loader = g.add("LoadIPAdapter", "models", {"ipadapter_file": "instantx-sd3.5-large-ip-adapter.bin"})
    clip_vision = g.add("CLIPVisionLoader", "models", {"clip_name": "siglip-so400m-patch14-384.safetensors"})
    reference = g.add("LoadImage", "images", {"image": "reference.png"})
    prompt = g.add("EncodeImagePrompt", "encode", {"crop": "squash"}, ipadapter=out(loader),
                   clip_vision=out(clip_vision), image=out(reference))
    n = {"positive": g.add("CLIPTextEncode", "encode", {"text": "a cat, masterpiece, best quality"}, clip=out(clip)),
         "negative": g.add("CLIPTextEncode", "encode", {"text": "lowres, low quality, worst quality"}, clip=out(clip))}
    applied = g.add("ApplyIPAdapter", "apply", {"weight": 0.5}, model=out(checkpoint), ipadapter=out(loader),
                    image_prompt=out(prompt))
    latent = g.add("EmptySD3LatentImage", "sample", {"width": 1024, "height": 1024, "batch_size": 1})
    sampler = g.add("KSampler", "sample", {"seed": 0, "control_after_generate": "fixed", "steps": 24, "cfg": 5.0,
                                           "sampler_name": "euler", "scheduler": "sgm_uniform", "denoise": 1.0},
                    model=out(applied), positive=out(n["positive"]), negative=out(n["negative"]), latent_image=out(latent))
    decoded = g.add("VAEDecode", "output", samples=out(sampler), vae=out(checkpoint, 2))
    g.add("SaveImage", "output", {"filename_prefix": "ipadapter_sd35"}, images=out(decoded))
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
    "sd15_animation_context_windows": sd15_animation_context_windows,
    "sd15_combined_prompts": sd15_combined_prompts,
    "flux_xlabs_image_prompt": flux_xlabs,
    "flux_instantx_image_prompt": flux_instantx,
    "sd35_large_image_prompt": sd35_instantx,
    "sd15_faceid_plusv2_portrait": sd15_faceid_plusv2,
    "sdxl_faceid": sdxl_faceid,
    "sd15_faceid_batch_skip": sd15_faceid_batch_skip,
}


def render(build):
    """The file text of one workflow, exactly as written to workflows/."""
    return json.dumps(build().json(), indent=1) + "\n"


if __name__ == "__main__":
    os.makedirs(os.path.join(ROOT, "workflows"), exist_ok=True)
    for name, build in WORKFLOWS.items():
        with open(os.path.join(ROOT, "workflows", f"{name}.json"), "w") as f:
            f.write(render(build))
        print("wrote", name)
