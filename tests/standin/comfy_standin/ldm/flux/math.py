"""Stand-in for comfy.ldm.flux.math (v0.8.0): RoPE as 2x2 rotation matrices and the attention call.

`pe` (from EmbedND) is [B, 1, L, D/2, 2, 2]: for each position and frequency the matrix
[[cos a, -sin a], [sin a, cos a]], applied to the pairs (x[2i], x[2i+1]) of each head's channels.
"""

import torch
from torch import Tensor

from ..modules.attention import optimized_attention


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor, mask=None, transformer_options={}) -> Tensor:
    """q, k, v [B, H, L, D] -> [B, L, H*D]; RoPE on q and k, then the host's attention (skip_reshape)."""
    if pe is not None:
        q, k = apply_rope(q, k, pe)
    heads = q.shape[1]
    return optimized_attention(q, k, v, heads, skip_reshape=True, mask=mask, transformer_options=transformer_options)


def rope(pos: Tensor, dim: int, theta: int) -> Tensor:
    """pos [B, L] -> rotation matrices [B, L, dim/2, 2, 2] (float32); angles pos * theta^(-2i/dim)."""
    assert dim % 2 == 0
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = theta ** (-exponents)
    angles = pos.to(torch.float64)[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([cos, -sin], dim=-1), torch.stack([sin, cos], dim=-1)], dim=-2)
    return rot.to(torch.float32)


def apply_rope1(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Rotate the channel pairs of x [B, H, L, D] by freqs_cis [B, 1, L, D/2, 2, 2] (computed in its dtype)."""
    pairs = x.to(freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def apply_rope(xq: Tensor, xk: Tensor, freqs_cis: Tensor):
    return apply_rope1(xq, freqs_cis), apply_rope1(xk, freqs_cis)
