"""Synthetic FaceID checkpoints (h94/IP-Adapter-FaceID): the real key names and shapes (reference-spec §2.4, §2.5,
§4.6; faceid-kolors.md §1.1), random values. `hidden_scale` narrows the UNet widths D as in synthetic.py."""

import torch
from synthetic import CROSS_DIM, _rand, image_proj_state, ip_layers_state, perceiver_layers_state

from ipadapter_core.layers import LAYERS

# variant -> (family, projection kind, tokens, LoRA in the file)
FACEID_VARIANTS = {
    "sd15_faceid": ("sd15", "mlp", 4, True),
    "sd15_faceid_plus": ("sd15", "plus", 4, True),  # v1 and v2: same tensors
    "sd15_portrait": ("sd15", "mlp", 16, False),  # portrait and v11: same tensors
    "sdxl_faceid": ("sdxl", "mlp", 4, True),
    "sdxl_faceid_plusv2": ("sdxl", "plus", 4, True),
    "sdxl_portrait": ("sdxl", "mlp", 16, False),
    "sdxl_portrait_unnorm": ("sdxl", "unnorm", 16, False),
}
RANK = 128


def mlp_state(c, tokens, gen, dtype):
    return {"proj.0.weight": _rand(gen, 1024, 512, dtype=dtype, std=512 ** -0.5), "proj.0.bias": _rand(gen, 1024, dtype=dtype),
            "proj.2.weight": _rand(gen, tokens * c, 1024, dtype=dtype, std=1024 ** -0.5),
            "proj.2.bias": _rand(gen, tokens * c, dtype=dtype),
            "norm.weight": 1 + _rand(gen, c, dtype=dtype, std=0.1), "norm.bias": _rand(gen, c, dtype=dtype)}


def perceiver_state(c, gen, dtype, embed=1280):
    """FacePerceiverResampler at dim C, heads C/64, depth 4, reading 1280-wide CLIP hidden states."""
    sd = {"perceiver_resampler.proj_in.weight": _rand(gen, c, embed, dtype=dtype, std=embed ** -0.5),
          "perceiver_resampler.proj_in.bias": _rand(gen, c, dtype=dtype),
          "perceiver_resampler.proj_out.weight": _rand(gen, c, c, dtype=dtype, std=c ** -0.5),
          "perceiver_resampler.proj_out.bias": _rand(gen, c, dtype=dtype),
          "perceiver_resampler.norm_out.weight": 1 + _rand(gen, c, dtype=dtype, std=0.1),
          "perceiver_resampler.norm_out.bias": _rand(gen, c, dtype=dtype)}
    sd.update(perceiver_layers_state("perceiver_resampler.layers.", c, c, gen, dtype))
    return sd


def lora_state(family, gen, dtype, hidden_scale=1, rank=RANK):
    """N.to_{q,k,v,out}_lora.{down,up}: attn1 (even N) reads D, attn2 (odd N) reads C for k and v."""
    c = CROSS_DIM[family]
    sd = {}
    for site in LAYERS[family]:
        d = site.hidden_size // hidden_scale
        for n, kv_in in ((site.index - 1, d), (site.index, c)):
            for target, inputs in (("to_q", d), ("to_k", kv_in), ("to_v", kv_in), ("to_out", d)):
                sd[f"{n}.{target}_lora.down.weight"] = _rand(gen, rank, inputs, dtype=dtype, std=inputs ** -0.5)
                sd[f"{n}.{target}_lora.up.weight"] = _rand(gen, d, rank, dtype=dtype, std=0.01)
    return sd


def make_faceid_checkpoint(variant, seed=0, dtype=torch.float16, hidden_scale=1, rank=RANK):
    family, kind, tokens, lora = FACEID_VARIANTS[variant]
    c = CROSS_DIM[family]
    gen = torch.Generator().manual_seed(seed)
    if kind == "unnorm":
        proj = image_proj_state(family, "plus", 512, gen, dtype)  # a Resampler with proj_in 512 -> 1280
    else:
        proj = mlp_state(c, tokens, gen, dtype)
        if kind == "plus":
            proj.update(perceiver_state(c, gen, dtype))
    ip = ip_layers_state(family, gen, dtype, hidden_scale)
    if lora:
        ip.update(lora_state(family, gen, dtype, hidden_scale, rank))
    return {"image_proj": proj, "ip_adapter": ip}


def narrow_faceid_adapter(variant, name=None, seed=0, hidden_scale=5):
    """Our FaceIDAdapter with the full-size file's projection and spec, and its K/V and LoRA narrowed to a UNet built
    with 1/hidden_scale of the channels (as synthetic.reduced_adapter for the CLIP-based adapters)."""
    from ipadapter_core import adapter_from_state_dict

    adapter = adapter_from_state_dict(make_faceid_checkpoint(variant, seed=seed, dtype=torch.float32, rank=4),
                                      name or f"{variant}.bin")
    narrow = make_faceid_checkpoint(variant, seed=seed, dtype=torch.float32, hidden_scale=hidden_scale, rank=4)
    for key, value in narrow["ip_adapter"].items():
        index, proj, _ = key.split(".", 2)
        if proj in ("to_k_ip", "to_v_ip"):
            getattr(adapter.ip_adapter[index], proj).weight = torch.nn.Parameter(value, requires_grad=False)
    adapter.lora = {k: v for k, v in narrow["ip_adapter"].items() if "_lora." in k}
    return adapter
