"""Tell which IP-Adapter a state dict is, from its keys and shapes alone (reference-spec §2.6).

`describe` returns a small frozen `AdapterSpec` or raises `AdapterFileError` saying what was found and
what a valid file looks like. Nothing else in the pack guesses a variant from a file name.
"""

from dataclasses import dataclass

import torch

from .checkpoint import AdapterFileError
from .layers import LAYERS
from .projection import build_projection

FAMILIES = {768: "sd15", 2048: "sdxl"}  # cross-attention width C -> base model family
FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


@dataclass(frozen=True)
class ImageEncoder:
    """The CLIP vision output an adapter consumes."""

    name: str  # "ViT-H/14" | "ViT-bigG/14"
    output: str  # "image_embeds" (pooled, projected) | "penultimate_hidden_states" (257 tokens)
    width: int  # feature width E: 1024 / 1280 pooled, 1280 for ViT-H hidden states
    file_name: str  # the usual file name of that encoder in models/clip_vision


VIT_H_EMBEDS = ImageEncoder("ViT-H/14", "image_embeds", 1024, "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
VIT_BIGG_EMBEDS = ImageEncoder("ViT-bigG/14", "image_embeds", 1280, "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors")
VIT_H_HIDDEN = ImageEncoder("ViT-H/14", "penultimate_hidden_states", 1280, VIT_H_EMBEDS.file_name)


@dataclass(frozen=True)
class AdapterSpec:
    family: str  # "sd15" | "sdxl"
    projection: str  # "base" (linear) | "full-face" (per-token MLP) | "plus" (Resampler)
    cross_attention_dim: int  # C: 768 or 2048
    num_tokens: int  # T image tokens per reference image
    encoder: ImageEncoder
    resampler_dim: int = 0  # plus only
    resampler_heads: int = 0  # plus only
    resampler_depth: int = 0  # plus only

    @property
    def uncond(self) -> str:
        """The reference's negative tokens (§5.3): base adapters project a zero embedding, the others encode an
        all-zero normalised pixel tensor."""
        return "zero embedding" if self.encoder.output == "image_embeds" else "zero pixels"

    @property
    def num_layers(self) -> int:
        return len(LAYERS[self.family])

    @property
    def reference_weight(self) -> float:
        return 1.0  # the authors' IPAdapter.generate(scale=1.0)

    @property
    def label(self) -> str:
        kind = {"base": "IP-Adapter", "full-face": "IP-Adapter full-face", "plus": "IP-Adapter plus"}[self.projection]
        return f"{FAMILY_NAMES[self.family]} {kind} ({self.num_tokens} tokens, needs CLIP vision {self.encoder.name})"


VALID_FILES = (
    "A valid file is one of the released IP-Adapter models for SD1.5 or SDXL (for example "
    "ip-adapter_sd15.safetensors, ip-adapter-plus_sd15.safetensors, ip-adapter_sdxl_vit-h.safetensors): "
    "it holds 'image_proj.*' weights and 16 (SD1.5) or 70 (SDXL) 'ip_adapter.N.to_k_ip/to_v_ip' pairs."
)


def describe(state_dict: dict, name: str = "state dict") -> AdapterSpec:
    """Identify the adapter in a nested {"image_proj", "ip_adapter"} dict, or explain why it is not one."""
    proj = state_dict.get("image_proj", {})
    ip = state_dict.get("ip_adapter", {})
    if not proj and not ip:
        raise AdapterFileError(f"'{name}' is not an IP-Adapter file: {_what_is_it(state_dict)}. {VALID_FILES}")
    _reject_unsupported(proj, ip, name)
    for part, tensors in (("image_proj", proj), ("ip_adapter", ip)):
        bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise AdapterFileError(f"IP-Adapter file '{name}' has non-tensor entries in {part}: {bad[:3]}.")

    if "1.to_k_ip.weight" not in ip:
        raise AdapterFileError(
            f"IP-Adapter file '{name}' has no 'ip_adapter.1.to_k_ip.weight' (found {len(ip)} ip_adapter tensors): "
            f"the file is incomplete. {VALID_FILES}"
        )
    cross_dim = ip["1.to_k_ip.weight"].shape[1]
    family = FAMILIES.get(cross_dim)
    if family is None:
        raise AdapterFileError(
            f"IP-Adapter file '{name}' is for a model with cross-attention width {cross_dim}; this pack supports "
            "SD1.5 (768) and SDXL (2048) adapters."
        )
    _check_layers(ip, family, cross_dim, name)
    spec = _describe_projection(proj, family, cross_dim, name)
    return spec


def _what_is_it(sd) -> str:
    """A guess at what a non-adapter file is, for the error message."""
    keys = list(sd.get("other", {}))
    text = " ".join(str(k) for k in keys[:2000])
    if "lora_unet" in text or "lora_down" in text or "lora_A" in text:
        return "it looks like a LoRA (put it in models/loras and use a LoRA loader)"
    if "model.diffusion_model." in text or "input_blocks." in text or "down_blocks." in text:
        return "it looks like a Stable Diffusion checkpoint or UNet (put it in models/checkpoints)"
    if "vision_model." in text or "visual.transformer" in text:
        return "it looks like a CLIP vision encoder (put it in models/clip_vision and load it with Load CLIP Vision)"
    return f"none of its {len(keys)} keys start with 'image_proj.' or 'ip_adapter.'"


def _reject_unsupported(proj, ip, name):
    if "proj_in.weight" in proj and proj["proj_in.weight"].shape[1] == 1024:
        raise AdapterFileError(
            f"IP-Adapter file '{name}' is a Kolors adapter (CLIP ViT-L/336 input); Kolors is not supported yet."
        )


def _check_layers(ip, family, cross_dim, name):
    expected = LAYERS[family]
    missing, wrong = [], []
    for site in expected:
        for proj in ("to_k_ip", "to_v_ip"):
            key = f"{site.index}.{proj}.weight"
            if key not in ip:
                missing.append(key)
            elif tuple(ip[key].shape) != (site.hidden_size, cross_dim):
                wrong.append(f"{key} {tuple(ip[key].shape)} (expected {(site.hidden_size, cross_dim)})")
    extra = sorted(set(ip) - {f"{s.index}.{p}.weight" for s in expected for p in ("to_k_ip", "to_v_ip")})
    if missing or wrong or extra:
        details = "; ".join(
            f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("wrong shape", wrong), ("unexpected", extra))
            if items
        )
        raise AdapterFileError(
            f"IP-Adapter file '{name}' looks like a {FAMILY_NAMES[family]} adapter but its attention weights do not "
            f"match the {len(expected)} {FAMILY_NAMES[family]} cross-attention layers ({details}). The file is "
            "incomplete or modified: download it again."
        )


def _describe_projection(proj, family, cross_dim, name) -> AdapterSpec:
    try:
        if "proj.weight" in proj:  # ImageProjModel: Linear(E -> T*C) + LayerNorm(C)
            width = proj["proj.weight"].shape[1]
            encoder = {1024: VIT_H_EMBEDS, 1280: VIT_BIGG_EMBEDS}.get(width)
            _expect(encoder is not None, f"an image embedding width of 1024 (ViT-H) or 1280 (ViT-bigG), found {width}")
            tokens, rem = divmod(proj["proj.weight"].shape[0], cross_dim)
            _expect(rem == 0 and proj["norm.weight"].shape == (cross_dim,), "proj/norm widths")
            _expect_keys(proj, {"proj.weight", "proj.bias", "norm.weight", "norm.bias"})
            return AdapterSpec(family, "base", cross_dim, tokens, encoder)
        if "proj.3.weight" in proj:  # MLPProjModel, per token
            _expect(proj["proj.0.weight"].shape == (1280, 1280), "proj.0 is 1280x1280")
            _expect(proj["proj.2.weight"].shape == (cross_dim, 1280), f"proj.2 is {cross_dim}x1280")
            _expect_keys(proj, {f"proj.{i}.{p}" for i in (0, 2, 3) for p in ("weight", "bias")})
            return AdapterSpec(family, "full-face", cross_dim, 257, VIT_H_HIDDEN)
        if "latents" in proj:  # Resampler
            _, tokens, dim = proj["latents"].shape
            _expect(proj["proj_in.weight"].shape == (dim, 1280), f"proj_in is {dim}x1280 (ViT-H hidden states)")
            _expect(proj["proj_out.weight"].shape == (cross_dim, dim), f"proj_out is {cross_dim}x{dim}")
            depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
            heads, rem = divmod(proj["layers.0.0.to_q.weight"].shape[0], 64)
            _expect(rem == 0 and depth > 0, "attention heads of width 64")
            spec = AdapterSpec(family, "plus", cross_dim, tokens, VIT_H_HIDDEN, dim, heads, depth)
            _expect_keys(proj, set(build_projection(spec, device="meta").state_dict()))
            return spec
    except (KeyError, ValueError, IndexError) as e:
        raise AdapterFileError(
            f"IP-Adapter file '{name}' has an image projection that does not match any released adapter ({e}). "
            f"{VALID_FILES}"
        ) from None
    raise AdapterFileError(
        f"IP-Adapter file '{name}' has an unknown image projection (keys: {', '.join(sorted(proj)[:6]) or 'none'}). "
        f"{VALID_FILES}"
    )


def _expect(condition, what):
    if not condition:
        raise ValueError(f"expected {what}")


def _expect_keys(proj, expected):
    missing, extra = sorted(expected - set(proj)), sorted(set(proj) - expected)
    if missing or extra:
        raise ValueError(f"missing {missing[:3]}, unexpected {extra[:3]}")
