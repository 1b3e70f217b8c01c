"""Workflows in ComfyUI_IPAdapter_plus's format, written by us from its node tables (no file of that pack is
copied): its nodes' sockets here, their widget order in converter/plus_nodes.py. They are built with the same
builder as workflows/, so the core nodes around them are exactly what the frontend writes.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

import build_workflows as bw  # noqa: E402
from converter.plus_nodes import WIDGETS  # noqa: E402

M, A, I, K, C = "MODEL", "IPADAPTER", "IMAGE", "MASK", "CLIP_VISION"
# node type -> ([(socket, type, optional)], [output types])
SOCKETS = {
    "IPAdapterUnifiedLoader": ([("model", M, False), ("ipadapter", A, True)], [M, A]),
    "IPAdapterUnifiedLoaderCommunity": ([("model", M, False), ("ipadapter", A, True)], [M, A]),
    "IPAdapterUnifiedLoaderFaceID": ([("model", M, False), ("ipadapter", A, True)], [M, A]),
    "IPAdapterModelLoader": ([], [A]),
    "IPAdapterInsightFaceLoader": ([], ["INSIGHTFACE"]),
    "IPAdapter": ([("model", M, False), ("ipadapter", A, False), ("image", I, False), ("attn_mask", K, True)], [M]),
    "IPAdapterEncoder": ([("ipadapter", A, False), ("image", I, False), ("mask", K, True), ("clip_vision", C, True)],
                         ["EMBEDS", "EMBEDS"]),
    "IPAdapterCombineEmbeds": ([(f"embed{i}", "EMBEDS", i > 1) for i in range(1, 6)], ["EMBEDS"]),
    "IPAdapterEmbeds": ([("model", M, False), ("ipadapter", A, False), ("pos_embed", "EMBEDS", False),
                         ("neg_embed", "EMBEDS", True), ("attn_mask", K, True), ("clip_vision", C, True)], [M]),
    "IPAdapterSaveEmbeds": ([("embeds", "EMBEDS", False)], []),
    "IPAdapterLoadEmbeds": ([], ["EMBEDS"]),
    "IPAdapterNoise": ([("image_optional", I, True)], [I]),
    "IPAdapterStyleComposition": ([("model", M, False), ("ipadapter", A, False), ("image_style", I, False),
                                   ("image_composition", I, False), ("image_negative", I, True), ("attn_mask", K, True),
                                   ("clip_vision", C, True)], [M]),
    "IPAdapterFaceID": ([("model", M, False), ("ipadapter", A, False), ("image", I, False), ("image_negative", I, True),
                         ("attn_mask", K, True), ("clip_vision", C, True), ("insightface", "INSIGHTFACE", True)],
                        [M, I]),
}
SOCKETS["IPAAdapterFaceIDBatch"] = SOCKETS["IPAdapterFaceID"]
ADVANCED = [("model", M, False), ("ipadapter", A, False), ("image", I, False), ("image_negative", I, True),
            ("attn_mask", K, True), ("clip_vision", C, True)]
for kind in ("IPAdapterAdvanced", "IPAdapterBatch", "IPAdapterPreciseStyleTransfer", "IPAdapterPreciseComposition",
             "IPAdapterPreciseStyleTransferBatch", "IPAdapterPreciseCompositionBatch", "IPAdapterClipVisionEnhancer"):
    SOCKETS[kind] = (ADVANCED, [M])
SOCKETS["IPAdapterMS"] = (ADVANCED + [("insightface", "INSIGHTFACE", True)], [M])
SOCKETS["IPAdapterTiled"] = (ADVANCED, [M, I, K])


def _register():
    """Teach the builder these node types (their widgets and sockets), as if the frontend had recorded them."""
    for kind, (sockets, outputs) in SOCKETS.items():
        names = [n for n, _ in WIDGETS[kind]]
        defaults = [d for _, d in WIDGETS[kind]]
        bw.FRONTEND[kind] = {"widgets_values": names, "defaults": defaults, "size": [315, 60 + 24 * len(names)]}
        bw.DEFS[kind] = {"inputs": [[n, t, {}, opt] for n, t, opt in sockets] + [[n, "*", {}, False] for n in names],
                         "outputs": outputs}


_register()
out = bw.out
SD15, VIT_H = bw.SD15, bw.VIT_H


def base(g, ckpt=SD15, text="a portrait", reference=True):
    n = {"checkpoint": g.add("CheckpointLoaderSimple", "models", {"ckpt_name": ckpt})}
    if reference:
        n["reference"] = g.add("LoadImage", "images", {"image": "reference.png"})
    n["positive"] = g.add("CLIPTextEncode", "encode", {"text": text}, clip=out(n["checkpoint"], 1))
    n["negative"] = g.add("CLIPTextEncode", "encode", {"text": bw.NEGATIVE}, clip=out(n["checkpoint"], 1))
    return n


def unified_simple():
    """Unified loader (PLUS) -> IPAdapter, the most common graph of that pack."""
    g = bw.Graph()
    n = base(g)
    loader = g.add("IPAdapterUnifiedLoader", "models", {"preset": "PLUS (high strength)"}, model=out(n["checkpoint"]))
    apply = g.add("IPAdapter", "apply", {"weight": 0.8, "start_at": 0.0, "end_at": 0.9, "weight_type": "standard"},
                  model=out(loader), ipadapter=out(loader, 1), image=out(n["reference"]))
    return bw.sample(g, n, out(apply), steps=4, size=(256, 256))


def advanced_model_loader():
    """Model loader + CLIP vision + LoRA -> IPAdapter Advanced with a negative image and a mask."""
    g = bw.Graph()
    n = base(g)
    lora = g.add("LoraLoader", "models", {"lora_name": "your_sd15_lora.safetensors", "strength_model": 0.7,
                                           "strength_clip": 0.7}, model=out(n["checkpoint"]), clip=out(n["checkpoint"], 1))
    loader = g.add("IPAdapterModelLoader", "models", {"ipadapter_file": "ip-adapter_sd15.safetensors"})
    clip = g.add("CLIPVisionLoader", "models", {"clip_name": VIT_H})
    negative = g.add("LoadImage", "images", {"image": "negative.png"})
    mask = g.add("LoadImageMask", "images", {"image": "mask.png", "channel": "alpha"})
    apply = g.add("IPAdapterAdvanced", "apply", {"weight": 0.7, "weight_type": "ease in", "combine_embeds": "average",
                                                 "start_at": 0.1, "end_at": 0.8, "embeds_scaling": "K+V"},
                  model=out(lora), ipadapter=out(loader), image=out(n["reference"]), image_negative=out(negative),
                  attn_mask=out(mask), clip_vision=out(clip))
    return bw.sample(g, n, out(apply), steps=4, size=(256, 256))


def embeds_pipeline():
    """Two encoders, combined (average), applied by IPAdapter Embeds, and saved."""
    g = bw.Graph()
    n = base(g)
    second = g.add("LoadImage", "images", {"image": "second.png"})
    loader = g.add("IPAdapterModelLoader", "models", {"ipadapter_file": "ip-adapter-plus_sd15.safetensors"})
    clip = g.add("CLIPVisionLoader", "models", {"clip_name": VIT_H})
    first_embeds = g.add("IPAdapterEncoder", "encode", {"weight": 1.0}, ipadapter=out(loader), image=out(n["reference"]),
                         clip_vision=out(clip))
    second_embeds = g.add("IPAdapterEncoder", "encode", {"weight": 0.5}, ipadapter=out(loader), image=out(second),
                          clip_vision=out(clip))
    combined = g.add("IPAdapterCombineEmbeds", "encode", {"method": "average"}, embed1=out(first_embeds),
                     embed2=out(second_embeds))
    g.add("IPAdapterSaveEmbeds", "output", {"filename_prefix": "IP_embeds"}, embeds=out(combined))
    apply = g.add("IPAdapterEmbeds", "apply", {"weight": 0.9, "weight_type": "linear", "start_at": 0.0, "end_at": 1.0,
                                               "embeds_scaling": "V only"},
                  model=out(n["checkpoint"]), ipadapter=out(loader), pos_embed=out(combined),
                  neg_embed=out(first_embeds, 1))
    return bw.sample(g, n, out(apply), steps=4, size=(256, 256))


def batch_and_layers():
    """A 2-frame batch (IPAdapter Batch), then Mad Scientist layer weights and Precise Style Transfer chained."""
    g = bw.Graph()
    n = base(g)
    second = g.add("LoadImage", "images", {"image": "second.png"})
    frames = g.add("ImageBatch", "images", image1=out(n["reference"]), image2=out(second))
    loader = g.add("IPAdapterUnifiedLoader", "models", {"preset": "STANDARD (medium strength)"}, model=out(n["checkpoint"]))
    batch = g.add("IPAdapterBatch", "apply", {"weight": 1.0, "weight_type": "linear", "start_at": 0.0, "end_at": 1.0,
                                              "embeds_scaling": "V only", "encode_batch_size": 0},
                  model=out(loader), ipadapter=out(loader, 1), image=out(frames))
    ms = g.add("IPAdapterMS", "apply", {"weight": 0.6, "weight_type": "linear", "layer_weights": "3:1, 6:0.5, 12:0.25"},
               model=out(batch), ipadapter=out(loader, 1), image=out(n["reference"]))
    precise = g.add("IPAdapterPreciseStyleTransfer", "apply", {"weight": 0.5, "style_boost": 1.5},
                    model=out(ms), ipadapter=out(loader, 1), image=out(second))
    return bw.sample(g, n, out(precise), steps=4, size=(256, 256), batch=2)


def load_embeds():
    """Embeds loaded from a .ipadpt file (a pickle, never opened here)."""
    g = bw.Graph()
    n = base(g, reference=False)
    loader = g.add("IPAdapterModelLoader", "models", {"ipadapter_file": "ip-adapter_sd15.safetensors"})
    embeds = g.add("IPAdapterLoadEmbeds", "encode", {"embeds": "IP_embeds_00001_.ipadpt"})
    apply = g.add("IPAdapterEmbeds", "apply", {"weight": 1.0}, model=out(n["checkpoint"]), ipadapter=out(loader),
                  pos_embed=out(embeds))
    return bw.sample(g, n, out(apply), steps=4, size=(256, 256))


def style_composition_sdxl():
    g = bw.Graph()
    n = base(g, bw.SDXL)
    composition = g.add("LoadImage", "images", {"image": "composition.png"})
    loader = g.add("IPAdapterUnifiedLoader", "models", {"preset": "PLUS (high strength)"}, model=out(n["checkpoint"]))
    apply = g.add("IPAdapterStyleComposition", "apply", {"weight_style": 1.2, "weight_composition": 0.8,
                                                         "expand_style": False, "combine_embeds": "average"},
                  model=out(loader), ipadapter=out(loader, 1), image_style=out(n["reference"]),
                  image_composition=out(composition))
    return bw.sample(g, n, out(apply), steps=4, size=(1024, 1024))


def faceid_and_noise():
    """What stays: the noise generator; the FaceID pair and a plain IPAdapter beside it convert."""
    g = bw.Graph()
    n = base(g)
    faceid_loader = g.add("IPAdapterUnifiedLoaderFaceID", "models", {"preset": "FACEID PLUS V2", "lora_strength": 0.6},
                          model=out(n["checkpoint"]))
    faceid = g.add("IPAdapterFaceID", "apply", {"weight": 0.85}, model=out(faceid_loader),
                   ipadapter=out(faceid_loader, 1), image=out(n["reference"]))
    noise = g.add("IPAdapterNoise", "images", {"type": "gaussian", "strength": 0.5})
    loader = g.add("IPAdapterModelLoader", "models", {"ipadapter_file": "ip-adapter_sd15.safetensors"})
    clip = g.add("CLIPVisionLoader", "models", {"clip_name": VIT_H})
    apply = g.add("IPAdapterAdvanced", "apply", {"weight": 0.5}, model=out(faceid), ipadapter=out(loader),
                  image=out(n["reference"]), image_negative=out(noise), clip_vision=out(clip))
    return bw.sample(g, n, out(apply), steps=4, size=(256, 256))


def faceid_unified():
    """The unified FaceID loader (Plus v2, its LoRA at 0.6) and IPAdapter FaceID with weight_faceidv2, whose face crops
    go to a preview."""
    g = bw.Graph()
    n = base(g, reference=False)
    face = g.add("LoadImage", "images", {"image": "face.png"})
    loader = g.add("IPAdapterUnifiedLoaderFaceID", "models", {"preset": "FACEID PLUS V2", "lora_strength": 0.6},
                   model=out(n["checkpoint"]))
    faceid = g.add("IPAdapterFaceID", "apply", {"weight": 0.85, "weight_faceidv2": 1.5, "start_at": 0.1},
                   model=out(loader), ipadapter=out(loader, 1), image=out(face))
    g.add("ImageBatch", "output", image1=out(faceid, 1), image2=out(faceid, 1))  # a consumer of its face_image
    return bw.sample(g, n, out(faceid), steps=4, size=(256, 256))


def faceid_batch_insightface():
    """A FaceID file through the plain model loader, that pack's InsightFace loader, and one face per frame."""
    g = bw.Graph()
    n = base(g, reference=False)
    batch = g.add("ImageBatch", "images", image1=out(g.add("LoadImage", "images", {"image": "face_1.png"})),
                  image2=out(g.add("LoadImage", "images", {"image": "face_2.png"})))
    loader = g.add("IPAdapterModelLoader", "models", {"ipadapter_file": "ip-adapter-faceid_sd15.bin"})
    insightface = g.add("IPAdapterInsightFaceLoader", "models", {"provider": "CPU"})
    faceid = g.add("IPAAdapterFaceIDBatch", "apply", {"weight": 0.9, "weight_type": "ease in"},
                   model=out(n["checkpoint"]), ipadapter=out(loader), image=out(batch), insightface=out(insightface))
    return bw.sample(g, n, out(faceid), steps=4, size=(256, 256), batch=2)


FIXTURES = {"plus_unified_simple": unified_simple, "plus_advanced_model_loader": advanced_model_loader,
            "plus_embeds_pipeline": embeds_pipeline, "plus_batch_and_layers": batch_and_layers,
            "plus_load_embeds": load_embeds, "plus_style_composition_sdxl": style_composition_sdxl,
            "plus_faceid_and_noise": faceid_and_noise, "plus_faceid_unified": faceid_unified,
            "plus_faceid_batch_insightface": faceid_batch_insightface}


def fixture(name) -> dict:
    return FIXTURES[name]().json()
