"""Stand-in for comfy.ldm.flux.layers (v0.8.0): the FLUX.1 blocks, with ComfyUI's module and parameter names.

Written from the public FLUX.1 architecture (Black Forest Labs). Names, constructor parameters, shapes and
forward signatures are those of ComfyUI v0.8.0, so state dicts, replace patches and code that reaches into a
block's submodules (img_mod, img_norm1, img_attn.qkv, img_attn.norm ...) behave as on the real host. Only the
FLUX.1 path exists: per-block modulation, GELU(tanh) MLPs; the Flux2 / Chroma variants (global modulation,
SiLU-gated or "yak" MLPs) raise NotImplementedError.

`operations` is ComfyUI's ops namespace (Linear, LayerNorm); None means torch.nn.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .math import attention, rope


def _ops(operations):
    return nn if operations is None else operations


def _flux1_only(**flags):
    on = [name for name, value in flags.items() if value]
    if on:
        raise NotImplementedError(f"the stand-in Flux implements FLUX.1 only; not {', '.join(on)}")


class EmbedND(nn.Module):
    """Positions ids [B, L, n_axes] -> RoPE matrices [B, 1, L, sum(axes_dim)/2, 2, 2]."""

    def __init__(self, dim: int, theta: int, axes_dim: list):
        super().__init__()
        self.dim = dim
        self.theta = theta
        self.axes_dim = axes_dim

    def forward(self, ids: Tensor) -> Tensor:
        per_axis = [rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])]
        return torch.cat(per_axis, dim=-3).unsqueeze(1)


def timestep_embedding(t: Tensor, dim, max_period=10000, time_factor: float = 1000.0):
    """Sinusoidal embedding [cos | sin] of time_factor * t, t [N] -> [N, dim]."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    if torch.is_floating_point(t):
        emb = emb.to(t)
    return emb


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, bias=True, dtype=None, device=None, operations=None):
        super().__init__()
        ops = _ops(operations)
        self.in_layer = ops.Linear(in_dim, hidden_dim, bias=bias, dtype=dtype, device=device)
        self.silu = nn.SiLU()
        self.out_layer = ops.Linear(hidden_dim, hidden_dim, bias=bias, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


def build_mlp(hidden_size, mlp_hidden_dim, mlp_silu_act=False, yak_mlp=False, dtype=None, device=None, operations=None):
    _flux1_only(mlp_silu_act=mlp_silu_act, yak_mlp=yak_mlp)
    ops = _ops(operations)
    return nn.Sequential(
        ops.Linear(hidden_size, mlp_hidden_dim, bias=True, dtype=dtype, device=device),
        nn.GELU(approximate="tanh"),
        ops.Linear(mlp_hidden_dim, hidden_size, bias=True, dtype=dtype, device=device),
    )


class RMSNorm(nn.Module):
    """x / rms(x) * scale, eps 1e-6 (parameter named `scale`, as in ComfyUI)."""

    def __init__(self, dim: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: Tensor):
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * self.scale.to(x)


class QKNorm(nn.Module):
    def __init__(self, dim: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.query_norm = RMSNorm(dim, dtype=dtype, device=device, operations=operations)
        self.key_norm = RMSNorm(dim, dtype=dtype, device=device, operations=operations)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    """Holds the projections of one stream (qkv, per-head QK RMSNorm, output proj); the blocks run them."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_bias: bool = True, dtype=None, device=None, operations=None):
        super().__init__()
        ops = _ops(operations)
        self.num_heads = num_heads
        self.qkv = ops.Linear(dim, dim * 3, bias=qkv_bias, dtype=dtype, device=device)
        self.norm = QKNorm(dim // num_heads, dtype=dtype, device=device, operations=operations)
        self.proj = ops.Linear(dim, dim, bias=proj_bias, dtype=dtype, device=device)


@dataclass
class ModulationOut:
    shift: Tensor
    scale: Tensor
    gate: Tensor


class Modulation(nn.Module):
    """vec [B, D] -> (shift, scale, gate) once, or twice when double (attention, then MLP)."""

    def __init__(self, dim: int, double: bool, bias=True, dtype=None, device=None, operations=None):
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = _ops(operations).Linear(dim, self.multiplier * dim, bias=bias, dtype=dtype, device=device)

    def forward(self, vec: Tensor) -> tuple:
        if vec.ndim == 2:
            vec = vec[:, None, :]
        chunks = self.lin(nn.functional.silu(vec)).chunk(self.multiplier, dim=-1)
        first = ModulationOut(*chunks[:3])
        second = ModulationOut(*chunks[3:]) if self.is_double else None
        return first, second


def apply_mod(tensor, m_mult, m_add=None, modulation_dims=None):
    """tensor * m_mult (+ m_add); with modulation_dims [(start, end, i), ...] rows start:end use entry i, in place."""
    if modulation_dims is None:
        return tensor * m_mult if m_add is None else torch.addcmul(m_add, tensor, m_mult)
    for start, end, i in modulation_dims:
        tensor[:, start:end] *= m_mult[:, i]
        if m_add is not None:
            tensor[:, start:end] += m_add[:, i]
    return tensor


def _heads(qkv: Tensor, num_heads: int):
    """[B, L, 3*H*D] -> q, k, v each [B, H, L, D]."""
    return qkv.view(qkv.shape[0], qkv.shape[1], 3, num_heads, -1).permute(2, 0, 3, 1, 4)


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights, one joint attention over [txt; img]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False, flipped_img_txt=False, modulation=True, mlp_silu_act=False, proj_bias=True, yak_mlp=False, dtype=None, device=None, operations=None):
        super().__init__()
        _flux1_only(global_modulation=not modulation, mlp_silu_act=mlp_silu_act, yak_mlp=yak_mlp)
        ops = _ops(operations)
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.modulation = modulation
        factory = dict(dtype=dtype, device=device)

        def norm():
            return ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)

        def attn():
            return SelfAttention(dim=hidden_size, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, operations=operations, **factory)

        # registration order as ComfyUI's (img_mod, img_norm1, img_attn, img_norm2, img_mlp, then txt_*)
        self.img_mod = Modulation(hidden_size, double=True, operations=operations, **factory)
        self.img_norm1 = norm()
        self.img_attn = attn()
        self.img_norm2 = norm()
        self.img_mlp = build_mlp(hidden_size, mlp_hidden_dim, operations=operations, **factory)
        self.txt_mod = Modulation(hidden_size, double=True, operations=operations, **factory)
        self.txt_norm1 = norm()
        self.txt_attn = attn()
        self.txt_norm2 = norm()
        self.txt_mlp = build_mlp(hidden_size, mlp_hidden_dim, operations=operations, **factory)
        self.flipped_img_txt = flipped_img_txt

    def _qkv(self, x, mod, norm1, attn, modulation_dims):
        q, k, v = _heads(attn.qkv(apply_mod(norm1(x), 1 + mod.scale, mod.shift, modulation_dims)), self.num_heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor, attn_mask=None, modulation_dims_img=None, modulation_dims_txt=None, transformer_options={}):
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)

        img_q, img_k, img_v = self._qkv(img, img_mod1, self.img_norm1, self.img_attn, modulation_dims_img)
        txt_q, txt_k, txt_v = self._qkv(txt, txt_mod1, self.txt_norm1, self.txt_attn, modulation_dims_txt)

        first, second = ((img_q, img_k, img_v), (txt_q, txt_k, txt_v)) if self.flipped_img_txt else \
            ((txt_q, txt_k, txt_v), (img_q, img_k, img_v))
        q, k, v = (torch.cat((a, b), dim=2) for a, b in zip(first, second))
        attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
        if self.flipped_img_txt:
            img_attn, txt_attn = attn[:, :img.shape[1]], attn[:, img.shape[1]:]
        else:
            txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]

        # residual updates in place, as ComfyUI's block does (the caller's img / txt tensors change)
        img += apply_mod(self.img_attn.proj(img_attn), img_mod1.gate, None, modulation_dims_img)
        img += apply_mod(self.img_mlp(apply_mod(self.img_norm2(img), 1 + img_mod2.scale, img_mod2.shift, modulation_dims_img)),
                         img_mod2.gate, None, modulation_dims_img)
        txt += apply_mod(self.txt_attn.proj(txt_attn), txt_mod1.gate, None, modulation_dims_txt)
        txt += apply_mod(self.txt_mlp(apply_mod(self.txt_norm2(txt), 1 + txt_mod2.scale, txt_mod2.shift, modulation_dims_txt)),
                         txt_mod2.gate, None, modulation_dims_txt)
        if txt.dtype == torch.float16:
            txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
        return img, txt


class SingleStreamBlock(nn.Module):
    """One stream over [txt; img]: linear1 gives q, k, v and the MLP input in parallel, linear2 merges both."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_scale: float = None, modulation=True, mlp_silu_act=False, bias=True, yak_mlp=False, dtype=None, device=None, operations=None):
        super().__init__()
        _flux1_only(global_modulation=not modulation, mlp_silu_act=mlp_silu_act, yak_mlp=yak_mlp)
        ops = _ops(operations)
        factory = dict(dtype=dtype, device=device)
        self.hidden_dim = hidden_size
        self.num_heads = num_heads
        head_dim = hidden_size // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.mlp_hidden_dim_first = self.mlp_hidden_dim
        self.yak_mlp = yak_mlp
        self.mlp_act = nn.GELU(approximate="tanh")
        self.linear1 = ops.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim_first, bias=bias, **factory)
        self.linear2 = ops.Linear(hidden_size + self.mlp_hidden_dim, hidden_size, bias=bias, **factory)
        self.norm = QKNorm(head_dim, operations=operations, **factory)
        self.hidden_size = hidden_size
        self.pre_norm = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **factory)
        self.modulation = Modulation(hidden_size, double=False, operations=operations, **factory)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor, attn_mask=None, modulation_dims=None, transformer_options={}) -> Tensor:
        mod, _ = self.modulation(vec)
        h = self.linear1(apply_mod(self.pre_norm(x), 1 + mod.scale, mod.shift, modulation_dims))
        qkv, mlp = torch.split(h, [3 * self.hidden_size, self.mlp_hidden_dim_first], dim=-1)
        q, k, v = _heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
        out = self.linear2(torch.cat((attn, self.mlp_act(mlp)), 2))
        x += apply_mod(out, mod.gate, None, modulation_dims)  # in place, as ComfyUI's block
        if x.dtype == torch.float16:
            x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
        return x


class LastLayer(nn.Module):
    """adaLN (shift, scale from vec) over a LayerNorm, then the projection back to patch channels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, bias=True, dtype=None, device=None, operations=None):
        super().__init__()
        ops = _ops(operations)
        self.norm_final = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        self.linear = ops.Linear(hidden_size, patch_size * patch_size * out_channels, bias=bias, dtype=dtype, device=device)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ops.Linear(hidden_size, 2 * hidden_size, bias=bias, dtype=dtype, device=device))

    def forward(self, x: Tensor, vec: Tensor, modulation_dims=None) -> Tensor:
        if vec.ndim == 2:
            vec = vec[:, None, :]
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)
        return self.linear(apply_mod(self.norm_final(x), 1 + scale, shift, modulation_dims))
