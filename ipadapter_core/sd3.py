"""The InstantX SD3.5-Large IP-Adapter (dit-families.md §3): a timestep-aware resampler and an image branch in each of
the 38 joint blocks, on the image (x) stream only.

Per sampling step the resampler turns SigLIP's penultimate hidden states [B, 729, 1152] into 64 tokens [B, 64, 2432]
and a timestep embedding [B, 1280] (the same timestep the MMDiT sees). In block i the tokens are AdaLN-modulated by
that embedding, projected to K_ip, V_ip and joined to the block's own image keys and values:

    o = Attn(norm_q(q_x), [norm_k(k_x); norm_ip_k(K_ip)], [v_x; V_ip]),    x_attn += s * o

with the adapter's own RMSNorms on the *raw* (pre-QK-norm) image query and key, before the block's output projection.
The negative is `zeros_like` of the features through the resampler (not a zero token set: its latents and biases
still speak).

Module and parameter names equal the file's original InstantX keys (`image_proj.*`, `ip_adapter.{i}.*`).
Shapes: B batch rows, N encoder tokens, T image tokens (64), C token width (2432), H heads (38), d head width (64),
L image-stream tokens.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import AdapterFileError
from .detect import ImageEncoder

SIGLIP_PENULTIMATE = ImageEncoder("SigLIP so400m-patch14-384", "penultimate_hidden_states", 1152,
                                  "siglip-so400m-patch14-384.safetensors")
RELEASED = "InstantX SD3.5-Large-IP-Adapter (ip-adapter.bin: a TimeResampler and 38 blocks)"


@dataclass(frozen=True)
class SD3AdapterSpec:
    num_tokens: int  # T (64)
    cross_attention_dim: int  # C, the tokens' width (2432 = the model width)
    hidden_size: int  # the width to_k_ip writes (2432)
    head_dim: int  # d (64), from the adapter's RMSNorm weights
    num_layers: int  # joint blocks (38)
    resampler_dim: int
    resampler_depth: int
    resampler_heads: int
    timestep_dim: int  # 320: the sinusoidal embedding width
    encoder: ImageEncoder = SIGLIP_PENULTIMATE
    family: str = "sd3"
    projection: str = "instantx"

    @property
    def uncond(self) -> str:
        return "zero features"

    @property
    def reference_weight(self) -> float:
        return 0.5  # diffusers' SD3IPAdapterJointAttnProcessor2_0(scale=0.5)

    @property
    def label(self) -> str:
        return f"SD3.5-Large InstantX IP-Adapter ({self.num_tokens} tokens, needs {self.encoder.name})"


def is_sd3_adapter(nested: dict) -> bool:
    return "0.norm_ip.linear.weight" in nested.get("ip_adapter", {}) or \
        "time_embedding.linear_1.weight" in nested.get("image_proj", {})


def timestep_embedding(t, dim):
    """Sinusoidal embedding of t [B] (diffusers' Timesteps with flip_sin_to_cos=True, shift 0): [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    def __init__(self, in_dim, dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResamplerAttention(nn.Module):
    """Latents attend to [features; latents]; q and k scaled by d^(-1/4) each, softmax in fp32 (as the reference)."""

    def __init__(self, dim, heads, dim_head=64):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)  # on the image features
        self.norm2 = nn.LayerNorm(dim)  # on the latents
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, features, latents, shift, scale):
        features = self.norm1(features)
        latents = self.norm2(latents) * (1 + scale[:, None]) + shift[:, None]
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((features, latents), dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        s = q.shape[-1] ** -0.25
        weights = torch.softmax(((q * s) @ (k * s).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        return self.to_out((weights @ v).transpose(1, 2).flatten(2))


class TimeResampler(nn.Module):
    """SigLIP hidden states and the timestep -> (tokens [B, T, C], timestep embedding [B, dim])."""

    def __init__(self, dim, depth, heads, num_tokens, embed_dim, output_dim, timestep_dim):
        super().__init__()
        self.timestep_dim = timestep_dim
        self.latents = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.proj_in = nn.Linear(embed_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.time_embedding = TimeEmbedding(timestep_dim, dim)
        self.layers = nn.ModuleList(nn.ModuleList([
            ResamplerAttention(dim, heads),
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim, bias=False), nn.GELU(), nn.Linear(4 * dim, dim, bias=False)),
            nn.Sequential(nn.SiLU(), nn.Linear(dim, 4 * dim)),  # adaLN: shift/scale for the attention and the FF
        ]) for _ in range(depth))

    def forward(self, features, timestep):
        temb = self.time_embedding(timestep_embedding(timestep, self.timestep_dim).to(features.dtype))  # [B, dim]
        x = self.proj_in(features) + temb[:, None]
        latents = self.latents.expand(features.shape[0], -1, -1)
        for attn, ff, adaln in self.layers:
            shift_msa, scale_msa, shift_mlp, scale_mlp = adaln(temb).chunk(4, dim=1)
            latents = attn(x, latents, shift_msa, scale_msa) + latents
            norm, up, act, down = ff
            latents = down(act(up(norm(latents) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]))) + latents
        return self.norm_out(self.proj_out(latents)), temb


class AdaNormIP(nn.Module):
    def __init__(self, temb_dim, dim):
        super().__init__()
        self.linear = nn.Linear(temb_dim, 2 * dim)


class SD3IPLayer(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.norm_ip = AdaNormIP(spec.resampler_dim, spec.cross_attention_dim)
        self.to_k_ip = nn.Linear(spec.cross_attention_dim, spec.hidden_size, bias=False)
        self.to_v_ip = nn.Linear(spec.cross_attention_dim, spec.hidden_size, bias=False)
        self.norm_q = RMSWeight(spec.head_dim)
        self.norm_k = RMSWeight(spec.head_dim)
        self.norm_ip_k = RMSWeight(spec.head_dim)


class RMSWeight(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class SD3IPAdapter(nn.Module):
    def __init__(self, spec: SD3AdapterSpec):
        super().__init__()
        self.spec = spec
        self.image_proj = TimeResampler(spec.resampler_dim, spec.resampler_depth, spec.resampler_heads, spec.num_tokens,
                                        spec.encoder.width, spec.cross_attention_dim, spec.timestep_dim)
        self.ip_adapter = nn.ModuleDict({str(i): SD3IPLayer(spec) for i in range(spec.num_layers)})


def _fail(name, what):
    raise AdapterFileError(f"IP-Adapter file '{name}' looks like an SD3.5 IP-Adapter, but {what}. A valid file is the "
                           f"{RELEASED}: download it again.")


def sd3_adapter_from_state_dict(nested: dict, name: str) -> SD3IPAdapter:
    proj, ip = nested["image_proj"], nested["ip_adapter"]
    try:
        _, tokens, dim = proj["latents"].shape
        embed_dim = proj["proj_in.weight"].shape[1]
        output_dim = proj["proj_out.weight"].shape[0]
        timestep_dim = proj["time_embedding.linear_1.weight"].shape[1]
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        heads = proj["layers.0.0.to_q.weight"].shape[0] // 64
        hidden, head_dim = ip["0.to_k_ip.weight"].shape[0], ip["0.norm_q.weight"].shape[0]
    except KeyError as e:
        _fail(name, f"it has no {e.args[0]}")
    layers = sorted({int(k.split(".")[0]) for k in ip})
    if layers != list(range(len(layers))):
        _fail(name, f"its ip_adapter blocks are numbered {layers[:5]}... (expected 0 to 37)")
    if embed_dim != SIGLIP_PENULTIMATE.width:
        _fail(name, f"its resampler reads {embed_dim}-wide features (expected 1152 from SigLIP so400m)")
    spec = SD3AdapterSpec(tokens, output_dim, hidden, head_dim, len(layers), dim, depth, heads, timestep_dim)
    flat = {**{f"image_proj.{k}": v for k, v in proj.items()}, **{f"ip_adapter.{k}": v for k, v in ip.items()}}
    with torch.device("meta"):
        adapter = SD3IPAdapter(spec)
    expected = adapter.state_dict()
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    wrong = [k for k in expected if k in flat and tuple(flat[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        _fail(name, f"its tensors do not match (missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]})")
    adapter.load_state_dict(flat, strict=True, assign=True)
    return adapter.requires_grad_(False).eval()


# --- per block -------------------------------------------------------------------------------------------------

def rms_norm(x, weight, eps=1e-6):
    return F.rms_norm(x, (x.shape[-1],), weight.to(x.device, x.dtype), eps)


def ip_kv(layer, tokens, temb, heads):
    """K_ip (normalised by norm_ip_k) and V_ip of the block, [B, H, T, d], from the tokens AdaLN-modulated by temb.
    The layer's weights (in the file's dtype) are cast to the tokens' device and dtype."""
    def w(t):
        return t.to(tokens.device, tokens.dtype)

    shift, scale = F.linear(F.silu(temb), w(layer.norm_ip.linear.weight), w(layer.norm_ip.linear.bias)).chunk(2, dim=1)
    normed = F.layer_norm(tokens, (tokens.shape[-1],), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    ip_k = F.linear(normed, w(layer.to_k_ip.weight)).unflatten(-1, (heads, -1)).transpose(1, 2)
    ip_v = F.linear(normed, w(layer.to_v_ip.weight)).unflatten(-1, (heads, -1)).transpose(1, 2)
    return rms_norm(ip_k, layer.norm_ip_k.weight), ip_v
