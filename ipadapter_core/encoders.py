"""Which image encoder a file in models/clip_vision is, from its .safetensors header alone.

Only the header (tensor names and shapes) is read, never the tensors, so a whole folder of multi-GB
encoders is classified in milliseconds. The rules are the ones ComfyUI's `clip_vision.load` uses to pick a
config (layer count, width, position embeddings), so a file is named here as ComfyUI will build it.
`.bin` files are not opened at all: reading one means unpickling it whole.
"""

import json
import os
import re
import struct
from dataclasses import dataclass

# The encoder names adapters ask for (ImageEncoder.name); the two extra kinds exist in the wild and are
# named so a listing can say what a file is even though no adapter here uses it.
VIT_H, VIT_BIGG, VIT_L = "ViT-H/14", "ViT-bigG/14", "ViT-L/14"
VIT_L_336 = "ViT-L/14-336"
SIGLIP_384 = "SigLIP so400m-patch14-384"


@dataclass(frozen=True)
class EncoderFile:
    file_name: str  # as listed by ComfyUI (may include a subfolder)
    kind: str  # one of the names above, or "" when the file is not an encoder we know
    detail: str  # what was found, for listings: "ViT-H/14 (32 layers, 1280 wide)", "not read: .bin"


def read_header(path: str) -> dict:
    """{tensor name: shape} from a .safetensors header: 8 bytes of length, then that much JSON."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > 100_000_000:
            raise ValueError("header length is not plausible")
        header = json.loads(f.read(length))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _layer_count(shapes: dict, stem: str) -> int:
    """Layers under `stem`: one more than the highest index `<stem>.<i>.` among the names."""
    found = [re.match(re.escape(stem) + r"\.(\d+)\.", k) for k in shapes]
    return 1 + max((int(m.group(1)) for m in found if m), default=-1)


def classify(shapes: dict) -> tuple:
    """(kind, detail) for a header's {name: shape}, following ComfyUI's clip_vision config choice."""
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in shapes:  # OpenCLIP layout, converted on load
        layers = _layer_count(shapes, "visual.transformer.resblocks")
        width = shapes["visual.transformer.resblocks.0.attn.in_proj_weight"][-1]  # [3 * width, width]
        kind = {48: VIT_BIGG, 32: VIT_H}.get(layers, "")
        return kind, f"{kind or 'an OpenCLIP vision tower'} ({layers} layers, {width} wide, OpenCLIP layout)"
    norm = "vision_model.encoder.layers.0.layer_norm1.weight"
    if norm not in shapes:
        return "", "not a CLIP or SigLIP vision model"
    layers = _layer_count(shapes, "vision_model.encoder.layers")
    width = shapes[norm][0]
    positions = shapes.get("vision_model.embeddings.position_embedding.weight", [0])[0]
    if layers >= 48:
        kind = VIT_BIGG
    elif layers >= 31:
        kind = VIT_H
    elif layers >= 23 and width == 1152:
        kind = SIGLIP_384 if positions == 729 else ""
    elif layers >= 23:
        kind = VIT_L_336 if positions == 577 else VIT_L
    else:
        kind = ""
    name = kind or ("a SigLIP vision model" if width == 1152 else "a vision model no IP-Adapter here uses")
    return kind, f"{name} ({layers} layers, {width} wide, {positions} positions)"


def describe_file(folder_path: str, file_name: str) -> EncoderFile:
    """What one listed file is; unreadable files are described, not raised."""
    if not file_name.lower().endswith((".safetensors", ".sft")):
        return EncoderFile(file_name, "", "not read: only .safetensors headers are inspected")
    try:
        kind, detail = classify(read_header(folder_path))
    except (OSError, ValueError) as e:
        return EncoderFile(file_name, "", f"unreadable ({e})")
    return EncoderFile(file_name, kind, detail)


def pick(files: list, kind: str, usual_name: str):
    """The file to use for encoder `kind` among described `files`, or None.

    Stable: the encoder's usual file name wins, then the shortest name, then alphabetical order, so the
    same folder always gives the same choice whatever order the listing comes in.
    """
    fits = [f for f in files if f.kind == kind]
    if not fits:
        return None
    usual = usual_name.lower()
    return min(fits, key=lambda f: (os.path.basename(f.file_name).lower() != usual, len(f.file_name), f.file_name))


# Where each encoder is downloaded from, for the error that says which file is missing.
SOURCES = {
    VIT_H: "h94/IP-Adapter, models/image_encoder/model.safetensors",
    VIT_BIGG: "h94/IP-Adapter, sdxl_models/image_encoder/model.safetensors",
    VIT_L: "openai/clip-vit-large-patch14, model.safetensors",
    SIGLIP_384: "google/siglip-so400m-patch14-384, model.safetensors (with its pooling head)",
}
