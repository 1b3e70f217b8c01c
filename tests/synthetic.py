"""Synthetic IP-Adapter checkpoints: the real key names and shapes, random values.

Nothing is downloaded. `hidden_scale` shrinks the UNet widths D (320/640/1280) for the small-UNet
comparisons; full size (1) is what the released files hold.
"""

import torch

from ipadapter_core.layers import LAYERS

CROSS_DIM = {"sd15": 768, "sdxl": 2048}

# (projection, embedding width E) of each released CLIP-based variant; reference-spec §1.2
VARIANTS = {
    "sd15_base": ("sd15", "base", 1024),  # ip-adapter_sd15, _light, _light_v11
    "sd15_vitg": ("sd15", "base", 1280),  # ip-adapter_sd15_vit-G
    "sd15_plus": ("sd15", "plus", 1280),  # ip-adapter-plus_sd15, plus-face, composition
    "sd15_full": ("sd15", "full-face", 1280),  # ip-adapter-full-face_sd15
    "sdxl_bigg": ("sdxl", "base", 1280),  # ip-adapter_sdxl
    "sdxl_vith": ("sdxl", "base", 1024),  # ip-adapter_sdxl_vit-h
    "sdxl_plus": ("sdxl", "plus", 1280),  # ip-adapter-plus(-face)_sdxl_vit-h, composition sdxl
}


def _rand(gen, *shape, dtype, std=0.02):
    return (torch.randn(*shape, generator=gen) * std).to(dtype)


def image_proj_state(family, projection, embed_dim, gen, dtype=torch.float16):
    c = CROSS_DIM[family]
    sd = {}
    if projection == "base":
        sd["proj.weight"] = _rand(gen, 4 * c, embed_dim, dtype=dtype)
        sd["proj.bias"] = _rand(gen, 4 * c, dtype=dtype)
        sd["norm.weight"] = 1 + _rand(gen, c, dtype=dtype, std=0.1)
        sd["norm.bias"] = _rand(gen, c, dtype=dtype)
    elif projection == "full-face":
        sd["proj.0.weight"] = _rand(gen, embed_dim, embed_dim, dtype=dtype)
        sd["proj.0.bias"] = _rand(gen, embed_dim, dtype=dtype)
        sd["proj.2.weight"] = _rand(gen, c, embed_dim, dtype=dtype)
        sd["proj.2.bias"] = _rand(gen, c, dtype=dtype)
        sd["proj.3.weight"] = 1 + _rand(gen, c, dtype=dtype, std=0.1)
        sd["proj.3.bias"] = _rand(gen, c, dtype=dtype)
    elif projection == "plus":
        dim, heads = (768, 12) if family == "sd15" else (1280, 20)
        inner = heads * 64
        sd["latents"] = _rand(gen, 1, 16, dim, dtype=dtype, std=dim**-0.5)
        sd["proj_in.weight"] = _rand(gen, dim, embed_dim, dtype=dtype)
        sd["proj_in.bias"] = _rand(gen, dim, dtype=dtype)
        sd["proj_out.weight"] = _rand(gen, c, dim, dtype=dtype)
        sd["proj_out.bias"] = _rand(gen, c, dtype=dtype)
        sd["norm_out.weight"] = 1 + _rand(gen, c, dtype=dtype, std=0.1)
        sd["norm_out.bias"] = _rand(gen, c, dtype=dtype)
        sd.update(perceiver_layers_state("layers.", dim, inner, gen, dtype))
    return sd


def perceiver_layers_state(prefix, dim, inner, gen, dtype, depth=4):
    """The Resampler's `depth` (PerceiverAttention, FeedForward) layers under `prefix`: dim wide, inner = heads * 64."""
    sd = {}
    for n in range(depth):
        p = f"{prefix}{n}."
        for ln in ("0.norm1", "0.norm2", "1.0"):
            sd[p + ln + ".weight"] = 1 + _rand(gen, dim, dtype=dtype, std=0.1)
            sd[p + ln + ".bias"] = _rand(gen, dim, dtype=dtype)
        sd[p + "0.to_q.weight"] = _rand(gen, inner, dim, dtype=dtype, std=dim**-0.5)
        sd[p + "0.to_kv.weight"] = _rand(gen, 2 * inner, dim, dtype=dtype, std=dim**-0.5)
        sd[p + "0.to_out.weight"] = _rand(gen, dim, inner, dtype=dtype, std=inner**-0.5)
        sd[p + "1.1.weight"] = _rand(gen, 4 * dim, dim, dtype=dtype, std=dim**-0.5)
        sd[p + "1.3.weight"] = _rand(gen, dim, 4 * dim, dtype=dtype, std=(4 * dim) ** -0.5)
    return sd


def ip_layers_state(family, gen, dtype=torch.float16, hidden_scale=1):
    c = CROSS_DIM[family]
    sd = {}
    for site in LAYERS[family]:
        d = site.hidden_size // hidden_scale
        sd[f"{site.index}.to_k_ip.weight"] = _rand(gen, d, c, dtype=dtype, std=c**-0.5)
        sd[f"{site.index}.to_v_ip.weight"] = _rand(gen, d, c, dtype=dtype, std=c**-0.5)
    return sd


def make_checkpoint(variant, seed=0, dtype=torch.float16, proj_dtype=None, hidden_scale=1):
    """Nested {"image_proj", "ip_adapter"} dict for a variant of VARIANTS."""
    family, projection, embed_dim = VARIANTS[variant]
    gen = torch.Generator().manual_seed(seed)
    return {
        "image_proj": image_proj_state(family, projection, embed_dim, gen, proj_dtype or dtype),
        "ip_adapter": ip_layers_state(family, gen, dtype, hidden_scale),
    }


def flatten(nested, ip_prefix="ip_adapter."):
    """The flat .safetensors layout of a nested checkpoint."""
    flat = {f"image_proj.{k}": v for k, v in nested["image_proj"].items()}
    flat.update({f"{ip_prefix}{k}": v for k, v in nested["ip_adapter"].items()})
    return flat


def reduced_adapter(variant, seed=0, hidden_scale=5, dtype=torch.float32):
    """Our IPAdapter for a UNet built with 1/hidden_scale of the channels (64 instead of 320).

    The projection is full size and loaded by the real loader's strict load; only the K/V are narrower.
    describe() rightly rejects such a file, so the spec comes from the full-size layout.
    """
    from ipadapter_core import IPAdapter, describe

    nested = make_checkpoint(variant, seed=seed, dtype=dtype, hidden_scale=hidden_scale)
    family = VARIANTS[variant][0]
    c = CROSS_DIM[family]
    full_kv = {f"{s.index}.{p}.weight": torch.empty(s.hidden_size, c, device="meta")
               for s in LAYERS[family] for p in ("to_k_ip", "to_v_ip")}
    spec = describe({"image_proj": nested["image_proj"], "ip_adapter": full_kv}, variant)
    adapter = IPAdapter(spec, device="meta")
    adapter.image_proj.load_state_dict(nested["image_proj"], strict=True, assign=True)
    for key, value in nested["ip_adapter"].items():
        index, proj, _ = key.split(".")
        linear = torch.nn.Linear(value.shape[1], value.shape[0], bias=False, device="meta")
        linear.weight = torch.nn.Parameter(value, requires_grad=False)
        setattr(adapter.ip_adapter[index], proj, linear)
    return adapter.requires_grad_(False).eval()
