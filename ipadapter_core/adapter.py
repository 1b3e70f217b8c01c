"""A loaded IP-Adapter: its description, its image projection and its per-layer to_k_ip / to_v_ip."""

import os

import torch
from torch import nn

from .checkpoint import read_state_dict
from .detect import AdapterSpec, describe
from .faceid import faceid_adapter_from_state_dict, is_faceid_adapter
from .flux import flux_adapter_from_state_dict, is_flux_adapter
from .sd3 import is_sd3_adapter, sd3_adapter_from_state_dict
from .layers import LAYERS
from .projection import IPLayer, build_projection, run_projection


class IPAdapter(nn.Module):
    """State-dict keys equal the flat .safetensors keys: `image_proj.*` and `ip_adapter.N.to_{k,v}_ip.weight`."""

    def __init__(self, spec: AdapterSpec, device=None):
        super().__init__()
        self.spec = spec
        self.image_proj = build_projection(spec, device=device)
        with torch.device(device or "cpu"):
            self.ip_adapter = nn.ModuleDict(
                {str(site.index): IPLayer(spec.cross_attention_dim, site.hidden_size) for site in LAYERS[spec.family]}
            )

    @property
    def layers(self):
        return LAYERS[self.spec.family]


def adapter_from_state_dict(state_dict: dict, name: str = "state dict", path: str | None = None) -> IPAdapter:
    """Build the adapter around the given tensors without copying them (they keep the file's dtypes).
    The family is told from the tensors: SD3.5, Flux and FaceID layouts first, then SD1.5 / SDXL. `path` (the file)
    lets FaceID tell v1 from v2 by the file's size and hash."""
    if is_sd3_adapter(state_dict):
        return sd3_adapter_from_state_dict(state_dict, name)
    if is_flux_adapter(state_dict):
        return flux_adapter_from_state_dict(state_dict, name)
    if is_faceid_adapter(state_dict):
        return faceid_adapter_from_state_dict(state_dict, name, path)
    spec = describe(state_dict, name)
    adapter = IPAdapter(spec, device="meta")
    flat = {f"{part}.{k}": v for part in ("image_proj", "ip_adapter") for k, v in state_dict[part].items()}
    adapter.load_state_dict(flat, strict=True, assign=True)
    return adapter.requires_grad_(False).eval()


def load_adapter(path: str) -> IPAdapter:
    return adapter_from_state_dict(read_state_dict(path), os.path.basename(path), path)


POOLED = ("image_embeds", "siglip_pooled")  # one vector per image; the other outputs are token sequences


class ImagePromptError(ValueError):
    """Image features that do not fit the adapter; the message says which encoder is needed."""


def check_features(spec: AdapterSpec, features: torch.Tensor, source: str = "the CLIP vision model"):
    """Raise ImagePromptError unless `features` is what the adapter's projection consumes."""
    enc = spec.encoder
    if enc.output in POOLED:
        ok, expected = features.ndim == 2 and features.shape[1] == enc.width, f"[batch, {enc.width}]"
    else:
        tokens = 729 if "SigLIP" in enc.name else 257
        ok, expected = features.ndim == 3 and features.shape[2] == enc.width, f"[batch, {tokens}, {enc.width}]"
    if not ok:
        raise ImagePromptError(
            f"{source} gives {enc.output} of shape {list(features.shape)}, but the {spec.label} expects {expected}. "
            f"Load the CLIP vision model {enc.file_name} ({enc.name}) for this adapter."
        )


def image_tokens(adapter: IPAdapter, features: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Image tokens for the UNet, [B, T, C], from the encoder output the adapter consumes."""
    check_features(adapter.spec, features)
    return run_projection(adapter.image_proj, features, dtype)


def uncond_features(spec: AdapterSpec, encode_normalized_pixels=None, batch: int = 1) -> torch.Tensor:
    """The encoder-side input of the unconditional (negative) image tokens, as the reference makes them (§5.3).

    Base adapters project a zero image embedding. Plus and full-face adapters encode an all-zero
    *normalised* pixel tensor (an image of the CLIP mean colour, not black): pass
    `encode_normalized_pixels(pixels [B, 3, 224, 224]) -> features` for those.
    """
    if spec.encoder.output == "image_embeds":
        return torch.zeros(batch, spec.encoder.width)
    if encode_normalized_pixels is None:
        raise ValueError(f"the {spec.label} needs the image encoder to make its unconditional tokens")
    return encode_normalized_pixels(torch.zeros(batch, 3, 224, 224))
