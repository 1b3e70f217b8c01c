"""What the Flux and SD3.5 IP-Adapters cost per step, against the unpatched model measured in the same run.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/dit_overhead.py [--double 1] [--single 2] [--blocks 2]
                                                                     [--latent 32] [--pairs 4] [--adapters ...]

A full FLUX.1 (11.9 B parameters) or SD3.5-Large (8.1 B) does not fit a 24 GB CPU machine, so the models are
ComfyUI's own Flux (width 3072, 24 heads of 128, 4096-wide text, RoPE 16+56+56) and MMDiT (width 2432, 38 heads of
64, SD3.5-Large's embedders) at full width with fewer blocks, random weights. The adapters are synthetic at full width
with the released token counts (XLabs v1 4, v2 16, InstantX Flux 128, InstantX SD3.5 64 with its 1280-wide, 4-layer
resampler) and as many blocks as the model. The InstantX Flux projection's inner width is cut (it runs once per
prompt, not per step). For each adapter it prints:
  * step overhead: patched vs unpatched steps (cond+uncond batch), interleaved in pairs; median and spread;
  * arithmetic limit: the image branch's FLOPs over the step's FLOPs (torch's FLOP counter on the unpatched step).
    Flux: 4 B L T W per patched block (QK and PV). SD3.5: a second attention over the L image tokens plus the T
    adapter tokens, 4 B L (L + T) W per block, plus its K/V projections and the resampler, once per step;
  * memory: resident memory the adapter adds after the steps, against its tensors plus the cached image K/V.
The ratios per block carry over to the full depth: every block of the released model gets the same patch.
"""

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests", "integration"), os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..")]

import psutil  # noqa: E402
import torch  # noqa: E402
from comfy_host import boot, pack_module  # noqa: E402
from synthetic_flux import instantx_state_dict, xlabs_state_dict  # noqa: E402
from synthetic_sd3 import sd3_state_dict  # noqa: E402

WIDTH, HEADS, CONTEXT = 3072, 24, 4096
SD3_WIDTH, SD3_DEPTH = 2432, 38
ADAPTERS = {"xlabs_v1": ("xlabs", 4), "xlabs_v2": ("xlabs", 16), "instantx": ("instantx", 128),
            "sd35_instantx": ("sd3", 64)}


def build_flux(double, single):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = dict(image_model="flux", in_channels=16, patch_size=2, out_channels=16, vec_in_dim=768,
                  context_in_dim=CONTEXT, hidden_size=WIDTH, mlp_ratio=4.0, num_heads=HEADS, depth=double,
                  depth_single_blocks=single, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True,
                  txt_ids_dims=[])
    model = comfy.supported_models.Flux(config).get_model({})
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.02))
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_sd3(blocks):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = dict(in_channels=16, patch_size=2, out_channels=16, depth=SD3_DEPTH, num_blocks=blocks, input_size=None,
                  adm_in_channels=2048, num_patches=192 ** 2, pos_embed_max_size=192, qk_norm="rms",
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": CONTEXT, "out_features": SD3_WIDTH}},
                  pos_embed_scaling_factor=None, x_block_self_attn_layers=[])
    model = comfy.supported_models.SD3(config).get_model({})
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.02) + (1.0 if "ln_" in name else 0.0))
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def step(patcher, inputs, sigma=0.7):
    x, context, y = inputs
    s = torch.tensor([sigma], device=x.device)
    options = dict(patcher.model_options["transformer_options"], cond_or_uncond=[1, 0], uuids=[None, None], sigmas=s)
    extra = {"guidance": torch.full((2,), 3.5)} if y.shape[-1] == 768 else {}
    return patcher.model.apply_model(x, s.repeat(2), c_crossattn=context, y=y, transformer_options=options, **extra)


def flops(patcher, inputs):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(patcher, inputs)
    return counter.get_total_flops()


def rss():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def adapter(name, double, single, folder):
    from safetensors.torch import save_file

    kind, tokens = ADAPTERS[name]
    if kind == "sd3":
        path = os.path.join(folder, f"{name}.bin")
        torch.save(sd3_state_dict(tokens, double, SD3_WIDTH, 64, dim=1280), path)
    elif kind == "xlabs":
        path = os.path.join(folder, f"{name}.safetensors")
        save_file(xlabs_state_dict(tokens, double, WIDTH, CONTEXT), path)
    else:
        path = os.path.join(folder, f"{name}.bin")
        torch.save(instantx_state_dict(tokens, double + single, WIDTH, CONTEXT, inner_dim=64), path)
    return pack_module("nodes.loader").load_cached(path)


def extra_flops(spec, args):
    """The image branch's multiply-adds x 2 for one cond+uncond step (see the docstring)."""
    b, image, text, t = 2, (args.latent // 2) ** 2, args.text, spec.num_tokens
    if spec.family == "sd3":
        d, r = SD3_WIDTH, spec.resampler_dim
        per_block = 4 * b * image * (image + t) * d + 2 * b * t * d * (2 * d) + 2 * b * r * 2 * d
        resampler = 2 * b * (729 * 1152 * r + spec.resampler_depth * (t * r * r * 4 + (729 + t) * r * r * 2 + t * r * r * 8))
        return args.blocks * per_block + resampler
    rows = [image] * args.double + ([image + text] * args.single if spec.projection == "instantx" else [])
    return sum(4 * b * L * t * WIDTH for L in rows)


def bench_family(family, names, args, folder):
    import comfy.model_management

    torch.manual_seed(0)
    model = build_flux(args.double, args.single) if family == "flux" else build_sd3(args.blocks)
    comfy.model_management.load_models_gpu([model])
    device = comfy.model_management.get_torch_device()
    channels, pooled = 16, 768 if family == "flux" else 2048
    inputs = (torch.randn(2, channels, args.latent, args.latent, device=device),
              torch.randn(2, args.text, CONTEXT, device=device), torch.randn(2, pooled, device=device))
    depth = f"{args.double} double + {args.single} single blocks" if family == "flux" else f"{args.blocks} joint blocks"
    width = WIDTH if family == "flux" else SD3_WIDTH
    print(f"{family}: width {width} with {depth}, latent {args.latent}x{args.latent} ({(args.latent // 2) ** 2} image "
          f"tokens), {args.text} text tokens, batch 2 (cond+uncond)")
    step(model, inputs)  # warm-up
    base_flops = flops(model, inputs)
    apply = pack_module("nodes.apply").ApplyIPAdapter()
    make_prompt = pack_module("nodes.encode").make_prompt
    for name in names:
        before = rss()
        layers = args.blocks if family == "sd3" else args.double
        loaded = adapter(name, layers, args.single, folder)
        spec = loaded.spec
        shape = (1, 729, 1152) if family == "sd3" else (1, spec.encoder.width)
        features = torch.randn(*shape)
        uncond = features if spec.uncond == "black image" else None
        prompt = make_prompt(loaded, features, uncond, torch.ones(1))
        patched = apply.apply(model, loaded, prompt, 1.0, 0.0, 1.0)[0]
        comfy.model_management.load_models_gpu([patched])
        step(patched, inputs)  # caches filled, first-call costs out of the timing
        ratios = []
        for _ in range(args.pairs):
            t0 = time.perf_counter()
            step(model, inputs)
            t1 = time.perf_counter()
            step(patched, inputs)
            t2 = time.perf_counter()
            ratios.append(100 * ((t2 - t1) / (t1 - t0) - 1))
        tensors = sum(t.numel() * t.element_size() for t in loaded.adapter.state_dict().values())
        entry = next(iter(patched.model_options["transformer_options"]["patches_replace"]["dit"].values())).entry
        cached = sum(t.numel() * t.element_size() for kv in getattr(entry, "_kv", {}).values() for t in kv)
        added = rss() - before
        print(f"{name} ({spec.num_tokens} tokens, {spec.num_layers} block layers)")
        print(f"  step overhead, measured:  {statistics.median(ratios):+.2f}% (min {min(ratios):+.2f}, "
              f"max {max(ratios):+.2f})")
        print(f"  arithmetic limit (FLOPs): {100 * extra_flops(spec, args) / base_flops:+.3f}%")
        print(f"  resident memory added:    {added / 2**20:.0f} MiB (tensors {tensors / 2**20:.0f} MiB + cached K/V "
              f"{cached / 2**20:.1f} MiB)")
        del patched, entry
        comfy.model_management.unload_all_models()
        comfy.model_management.load_models_gpu([model])
    del model
    comfy.model_management.unload_all_models()
    gc.collect()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--double", type=int, default=1, help="Flux double blocks")
    parser.add_argument("--single", type=int, default=2, help="Flux single blocks")
    parser.add_argument("--blocks", type=int, default=2, help="SD3.5 joint blocks")
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    parser.add_argument("--text", type=int, default=128, help="text tokens")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--adapters", nargs="+", default=list(ADAPTERS))
    args = parser.parse_args()
    boot()
    import tempfile

    import comfy.model_management

    folder = tempfile.mkdtemp(prefix="dit-bench-")
    print(f"device {comfy.model_management.get_torch_device()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    with torch.inference_mode():
        for family in ("flux", "sd3"):
            names = [n for n in args.adapters if (ADAPTERS[n][0] == "sd3") == (family == "sd3")]
            if names:
                bench_family(family, names, args, folder)


if __name__ == "__main__":
    main()
