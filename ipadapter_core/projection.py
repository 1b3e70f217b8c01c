"""Image projection models: CLIP image features -> image tokens for the UNet's cross-attention.

Module and parameter names equal the checkpoint's `image_proj.*` keys, so a file loads with
`load_state_dict(strict=True)` and no remapping (reference-spec §2.1-2.3).

Shapes: B batch, E feature width, N encoder tokens (257 for ViT-H), T image tokens, C cross-attention width.
"""

import torch
from torch import nn


class ImageProjModel(nn.Module):
    """Base adapter: one pooled CLIP embedding -> T tokens (Ye et al. 2023, §3.2.1)."""

    def __init__(self, embed_dim: int, cross_attention_dim: int, num_tokens: int = 4):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(embed_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds):  # [B, E]
        image_tokens = self.proj(image_embeds).unflatten(-1, (self.num_tokens, -1))  # [B, T, C]
        return self.norm(image_tokens)


class MLPProjModel(nn.Module):
    """Full-face adapter: every one of the 257 CLIP hidden states becomes a token."""

    def __init__(self, embed_dim: int, cross_attention_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(embed_dim, embed_dim),
            nn.GELU(),
            nn.Linear(embed_dim, cross_attention_dim),
            nn.LayerNorm(cross_attention_dim),
        )

    def forward(self, hidden_states):  # [B, N, E] -> [B, N, C]
        return self.proj(hidden_states)


class PerceiverAttention(nn.Module):
    """Latents attend to [image features ; latents] (Flamingo's Perceiver resampler)."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.norm1 = nn.LayerNorm(dim)  # on the image features
        self.norm2 = nn.LayerNorm(dim)  # on the latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)  # rows [0, inner) are K, the rest V
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features, latents):  # [B, N, dim], [B, T, dim]
        features, latents = self.norm1(features), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((features, latents), dim=1)).chunk(2, dim=-1)  # [B, N+T, inner] each
        q, k, v = (t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2) for t in (q, k, v))  # [B, H, len, 64]
        # Scale q and k by d^(-1/4) each before the product and take the softmax in fp32, as the
        # reference does: it keeps fp16 logits in range and matches its numerics to the last bit.
        scale = self.dim_head ** -0.25
        weights = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        out = (weights @ v).transpose(1, 2).flatten(2)  # [B, T, inner]
        return self.to_out(out)


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class Resampler(nn.Module):
    """Plus adapters: T learned latents read the 257 CLIP hidden states through `depth` Perceiver layers."""

    def __init__(self, dim: int, depth: int, heads: int, num_tokens: int, embed_dim: int, output_dim: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_tokens, dim) / dim**0.5)
        self.proj_in = nn.Linear(embed_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads), feed_forward(dim)]) for _ in range(depth)
        )

    def forward(self, hidden_states):  # [B, N, E] -> [B, T, C]
        features = self.proj_in(hidden_states)  # [B, N, dim]
        latents = self.latents.expand(hidden_states.shape[0], -1, -1)  # [B, T, dim]
        for attn, ff in self.layers:
            latents = attn(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class IPLayer(nn.Module):
    """The image K/V projections added to one cross-attention layer: [D, C] each, no bias."""

    def __init__(self, cross_attention_dim: int, hidden_size: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)


def build_projection(spec, device=None) -> nn.Module:
    """An untrained projection model shaped for `spec` (an `AdapterSpec`)."""
    with torch.device(device or "cpu"):
        if spec.projection == "base":
            return ImageProjModel(spec.encoder.width, spec.cross_attention_dim, spec.num_tokens)
        if spec.projection == "full-face":
            return MLPProjModel(spec.encoder.width, spec.cross_attention_dim)
        if spec.projection == "plus":
            return Resampler(
                spec.resampler_dim, spec.resampler_depth, spec.resampler_heads,
                spec.num_tokens, spec.encoder.width, spec.cross_attention_dim,
            )
    raise ValueError(f"unknown projection kind {spec.projection!r}")


def run_projection(module: nn.Module, features: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Project features with the module's weights cast to `dtype` on the features' device.

    The module keeps the file's tensors (fp16, fp32 or a mix); the cast copies are temporary.
    """
    params = {k: v.to(features.device, dtype) for k, v in module.state_dict().items()}
    return torch.func.functional_call(module, params, (features.to(dtype),))
