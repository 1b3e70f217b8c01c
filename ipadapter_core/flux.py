"""IP-Adapters for Flux.1: XLabs v1 (4 tokens) and v2 (16 tokens), and InstantX (128 tokens) (dit-families.md §1, §2).

Both add, beside the model's joint attention, an attention of the image-stream query over image tokens, with the
base model frozen. The query is the block's own query after its QK norm and before RoPE. They differ in where:

* XLabs: the 19 double blocks; `img += s * Attn(q_img, K, V)` after the whole block (past both residuals, no gate,
  no projection); K and V have biases and no norms. Negative = a black image through CLIP.
* InstantX: the 19 double blocks, then the 38 single blocks (checkpoint index j = 19 + i); K is RMS-normalised per
  head (no affine, eps 1e-5), V is not; the result is added to the attention output before the block's output
  projection (double: the image rows; single: every row of [text; image], text included). No negative.

Shapes: B batch rows, H heads, L query tokens, d head width, T image tokens, C token width (4096), W = H*d (3072).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import AdapterFileError
from .detect import ImageEncoder

VIT_L_EMBEDS = ImageEncoder("ViT-L/14", "image_embeds", 768, "clip-vit-large-patch14.safetensors")
SIGLIP_POOLED = ImageEncoder("SigLIP so400m-patch14-384", "siglip_pooled", 1152, "siglip-so400m-patch14-384.safetensors")
XLABS_PROJ = "ip_adapter_proj_model."
RELEASED = "XLabs flux-ip-adapter (v1, v2: 19 double blocks) or InstantX FLUX.1-dev-IP-Adapter (19 + 38 blocks)"


@dataclass(frozen=True)
class FluxAdapterSpec:
    projection: str  # "xlabs" | "instantx"
    num_tokens: int  # T per reference image
    cross_attention_dim: int  # C, the image-token width (4096)
    hidden_size: int  # W, the model width to_k_ip writes (3072)
    num_layers: int  # XLabs: double blocks; InstantX: double + single blocks
    encoder: ImageEncoder
    family: str = "flux"

    @property
    def uncond(self) -> str:
        """The negative tokens when no negative image is given: XLabs encodes a black image; InstantX has none."""
        return "black image" if self.projection == "xlabs" else "none"

    @property
    def reference_weight(self) -> float:
        """XLabs' main.py ip_scale=1.0; InstantX's example pipeline scale=0.7."""
        return 1.0 if self.projection == "xlabs" else 0.7

    @property
    def label(self) -> str:
        kind = {"xlabs": "XLabs", "instantx": "InstantX"}[self.projection]
        return f"Flux.1 {kind} IP-Adapter ({self.num_tokens} tokens, needs {self.encoder.name})"


def is_flux_adapter(nested: dict) -> bool:
    """True for the two Flux layouts: XLabs' flat keys, or InstantX's nested dict numbered from 0 with no LoRA."""
    other, ip = nested.get("other", {}), nested.get("ip_adapter", {})
    if any(str(k).startswith(XLABS_PROJ) for k in other):
        return True
    return "0.to_k_ip.weight" in ip and not any("lora" in k for k in ip) and "0.norm_ip.linear.weight" not in ip


class XLabsImageProj(nn.Module):
    """CLIP ViT-L image_embeds [B, E] -> LayerNorm(reshape(proj(e), [B, T, C]))."""

    def __init__(self, embed_dim, cross_attention_dim, num_tokens):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(embed_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds):
        return self.norm(self.proj(image_embeds).unflatten(-1, (self.num_tokens, -1)))


class InstantXImageProj(nn.Module):
    """SigLIP pooled [B, E] -> LayerNorm(reshape(Linear(GELU(Linear(e))), [B, T, C]))."""

    def __init__(self, embed_dim, inner_dim, cross_attention_dim, num_tokens):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(nn.Linear(embed_dim, inner_dim), nn.GELU(), nn.Linear(inner_dim, num_tokens * cross_attention_dim))
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds):
        return self.norm(self.proj(image_embeds).unflatten(-1, (self.num_tokens, -1)))


class XLabsProcessor(nn.Module):
    def __init__(self, cross_attention_dim, hidden_size):
        super().__init__()
        self.ip_adapter_double_stream_k_proj = nn.Linear(cross_attention_dim, hidden_size)
        self.ip_adapter_double_stream_v_proj = nn.Linear(cross_attention_dim, hidden_size)


class XLabsBlock(nn.Module):
    def __init__(self, cross_attention_dim, hidden_size):
        super().__init__()
        self.processor = XLabsProcessor(cross_attention_dim, hidden_size)


class XLabsFluxAdapter(nn.Module):
    """State-dict keys equal the file's: `ip_adapter_proj_model.*`, `double_blocks.{i}.processor.*`."""

    def __init__(self, spec: FluxAdapterSpec):
        super().__init__()
        self.spec = spec
        self.ip_adapter_proj_model = XLabsImageProj(spec.encoder.width, spec.cross_attention_dim, spec.num_tokens)
        self.double_blocks = nn.ModuleDict(
            {str(i): XLabsBlock(spec.cross_attention_dim, spec.hidden_size) for i in range(spec.num_layers)})

    @property
    def image_proj(self):
        return self.ip_adapter_proj_model

    def kv(self, layer: int):
        """(to_k weight, bias, to_v weight, bias) of checkpoint layer `layer` (the double block's index)."""
        p = self.double_blocks[str(layer)].processor
        k, v = p.ip_adapter_double_stream_k_proj, p.ip_adapter_double_stream_v_proj
        return k.weight, k.bias, v.weight, v.bias


class InstantXLayer(nn.Module):
    def __init__(self, cross_attention_dim, hidden_size):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)


class InstantXFluxAdapter(nn.Module):
    """State-dict keys equal the file's: `image_proj.*`, `ip_adapter.{j}.to_{k,v}_ip.weight`."""

    def __init__(self, spec: FluxAdapterSpec, inner_dim: int):
        super().__init__()
        self.spec = spec
        self.image_proj = InstantXImageProj(spec.encoder.width, inner_dim, spec.cross_attention_dim, spec.num_tokens)
        self.ip_adapter = nn.ModuleDict(
            {str(j): InstantXLayer(spec.cross_attention_dim, spec.hidden_size) for j in range(spec.num_layers)})

    def kv(self, layer: int):
        ip = self.ip_adapter[str(layer)]
        return ip.to_k_ip.weight, None, ip.to_v_ip.weight, None


def describe_flux(nested: dict, name: str):
    """(spec, flat state dict with the module's key names, builder) for a Flux adapter, or AdapterFileError."""
    other = nested.get("other", {})
    if any(str(k).startswith(XLABS_PROJ) for k in other):
        return _describe_xlabs(other, name)
    return _describe_instantx(nested["image_proj"], nested["ip_adapter"], name)


def _numbered(keys, prefix):
    """Indices i of keys `prefix{i}.…`, checked to be 0..n-1."""
    found = sorted({int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)})
    return found, found == list(range(len(found)))


def _fail(name, what):
    raise AdapterFileError(f"IP-Adapter file '{name}' looks like a Flux IP-Adapter, but {what}. A valid file is the "
                           f"{RELEASED}: download it again.")


def _describe_xlabs(sd, name):
    try:
        proj, norm = sd[XLABS_PROJ + "proj.weight"], sd[XLABS_PROJ + "norm.weight"]
    except KeyError as e:
        _fail(name, f"it has no {e.args[0]}")
    cross_dim, embed_dim = norm.shape[0], proj.shape[1]
    tokens, rem = divmod(proj.shape[0], cross_dim)
    if rem or embed_dim != VIT_L_EMBEDS.width:
        _fail(name, f"its projection is {list(proj.shape)} (expected [T*{cross_dim}, 768] from CLIP ViT-L)")
    blocks, contiguous = _numbered(sd, "double_blocks.")
    if not blocks or not contiguous:
        _fail(name, f"its double blocks are numbered {blocks[:5]}... (expected 0 to 18)")
    k0 = sd.get("double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight")
    if k0 is None:
        _fail(name, "double block 0 has no ip_adapter_double_stream_k_proj")
    spec = FluxAdapterSpec("xlabs", tokens, cross_dim, k0.shape[0], len(blocks), VIT_L_EMBEDS)
    return spec, sd, lambda: XLabsFluxAdapter(spec)


def _describe_instantx(proj, ip, name):
    if not {"proj.0.weight", "proj.2.weight", "norm.weight"} <= set(proj):
        _fail(name, f"its image projection has keys {sorted(proj)[:6]} (expected proj.0, proj.2, norm)")
    layers, contiguous = _numbered(ip, "")
    if not contiguous:
        _fail(name, f"its ip_adapter layers are numbered {layers[:5]}... (expected 0 to 56)")
    cross_dim = proj["norm.weight"].shape[0]
    inner_dim, embed_dim = proj["proj.0.weight"].shape
    tokens, rem = divmod(proj["proj.2.weight"].shape[0], cross_dim)
    if rem or embed_dim != SIGLIP_POOLED.width:
        _fail(name, f"its projection reads {embed_dim}-wide features (expected 1152 from SigLIP so400m)")
    spec = FluxAdapterSpec("instantx", tokens, cross_dim, ip["0.to_k_ip.weight"].shape[0], len(layers), SIGLIP_POOLED)
    flat = {**{f"image_proj.{k}": v for k, v in proj.items()}, **{f"ip_adapter.{k}": v for k, v in ip.items()}}
    return spec, flat, lambda: InstantXFluxAdapter(spec, inner_dim)


def flux_adapter_from_state_dict(nested: dict, name: str):
    """Build the adapter around the file's tensors without copying them (they keep the file's dtypes)."""
    spec, flat, build = describe_flux(nested, name)
    with torch.device("meta"):
        adapter = build()
    expected = set(adapter.state_dict())
    missing, extra = sorted(expected - set(flat)), sorted(set(flat) - expected)
    if missing or extra:
        _fail(name, f"its tensors do not match ({'missing ' + ', '.join(missing[:3]) if missing else ''}"
                    f"{'; unexpected ' + ', '.join(extra[:3]) if extra else ''})")
    wrong = [k for k, v in adapter.state_dict().items() if tuple(flat[k].shape) != tuple(v.shape)]
    if wrong:
        _fail(name, f"{wrong[0]} is {list(flat[wrong[0]].shape)}, expected {list(adapter.state_dict()[wrong[0]].shape)}")
    adapter.load_state_dict(flat, strict=True, assign=True)
    return adapter.requires_grad_(False).eval()


# --- the math, per block ---------------------------------------------------------------------------------------

def rope(x, pe):
    """Rotate x [B, H, L, d] by ComfyUI's RoPE matrices pe [B, 1, L, d/2, 2, 2] (pairs of channels)."""
    pairs = x.float().unflatten(-1, (-1, 1, 2))  # [B, H, L, d/2, 1, 2]
    out = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]  # [B, H, L, d/2, 2]
    return out.flatten(-2).type_as(x)


def unrope(x, pe):
    """The query before RoPE: rotation matrices are orthogonal, so the inverse is the transpose."""
    return rope(x, pe.transpose(-1, -2))


def image_kv(image_tokens, to_k, k_bias, to_v, v_bias, heads, normalize_k=False):
    """K and V of the image tokens, [B, H, T, d] each; InstantX RMS-normalises K per head (eps 1e-5, no affine)."""
    ip_k = F.linear(image_tokens, to_k, k_bias).unflatten(-1, (heads, -1)).transpose(1, 2)
    ip_v = F.linear(image_tokens, to_v, v_bias).unflatten(-1, (heads, -1)).transpose(1, 2)
    if normalize_k:
        ip_k = F.rms_norm(ip_k, (ip_k.shape[-1],), eps=1e-5)
    return ip_k, ip_v


def image_attention(q, ip_k, ip_v):
    """Attn(q, K_img, V_img) with the pre-RoPE query q [B, H, L, d]: merged heads [B, L, W]."""
    return F.scaled_dot_product_attention(q, ip_k.to(q.dtype), ip_v.to(q.dtype)).transpose(1, 2).flatten(2)

