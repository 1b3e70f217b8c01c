"""Synthetic Flux IP-Adapter checkpoints: the released files' keys and layouts, random values, any depth and width.

XLabs files are flat safetensors (`ip_adapter_proj_model.*`, `double_blocks.{i}.processor.*`); InstantX files are a
nested {"image_proj", "ip_adapter"} torch.save (dit-families.md §1.1, §2.1). The encoder widths are the real ones
(CLIP ViT-L 768, SigLIP 1152) so detection sees what it sees in the released files; depth, model width W and token
width C are the test's choice (released: 19 double (+ 38 single), W 3072, C 4096).
"""

import torch


def _randn(generator, *shape, scale=None):
    scale = scale if scale is not None else shape[-1] ** -0.5
    return torch.randn(*shape, generator=generator) * scale


def xlabs_state_dict(tokens=4, doubles=2, hidden=32, cross_dim=24, embed_dim=768, seed=0):
    """Flat XLabs flux-ip-adapter keys: v1 = 4 tokens, v2 = 16."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "ip_adapter_proj_model.proj.weight": _randn(g, tokens * cross_dim, embed_dim),
        "ip_adapter_proj_model.proj.bias": _randn(g, tokens * cross_dim, scale=0.02),
        "ip_adapter_proj_model.norm.weight": 1 + _randn(g, cross_dim, scale=0.1),
        "ip_adapter_proj_model.norm.bias": _randn(g, cross_dim, scale=0.02),
    }
    for i in range(doubles):
        for kv in ("k", "v"):
            prefix = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            sd[f"{prefix}.weight"] = _randn(g, hidden, cross_dim)
            sd[f"{prefix}.bias"] = _randn(g, hidden, scale=0.02)
    return sd


def instantx_state_dict(tokens=8, layers=4, hidden=32, cross_dim=24, inner_dim=48, embed_dim=1152, seed=0):
    """Nested InstantX FLUX.1-dev-IP-Adapter dict (released: 128 tokens, 57 layers, inner 2304)."""
    g = torch.Generator().manual_seed(seed)
    image_proj = {
        "proj.0.weight": _randn(g, inner_dim, embed_dim), "proj.0.bias": _randn(g, inner_dim, scale=0.02),
        "proj.2.weight": _randn(g, tokens * cross_dim, inner_dim),
        "proj.2.bias": _randn(g, tokens * cross_dim, scale=0.02),
        "norm.weight": 1 + _randn(g, cross_dim, scale=0.1), "norm.bias": _randn(g, cross_dim, scale=0.02),
    }
    ip_adapter = {f"{j}.to_{kv}_ip.weight": _randn(g, hidden, cross_dim) for j in range(layers) for kv in ("k", "v")}
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}
