"""What the Flux IP-Adapters cost per step, against the unpatched Flux measured in the same run.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/flux_overhead.py [--double 1] [--single 2] [--latent 32] [--pairs 4]

A full FLUX.1 (11.9 B parameters) does not fit a 24 GB CPU machine, so the model is ComfyUI's own Flux at full width
(3072, 24 heads of 128, 4096-wide text, RoPE 16+56+56) with fewer blocks, random weights; the adapters are synthetic
at full width with the released token counts (XLabs v1 4, v2 16, InstantX 128) and as many blocks as the model. The
InstantX projection's inner width is cut (it runs once per prompt, not per step). For each adapter it prints:
  * step overhead: patched vs unpatched steps (cond+uncond batch), interleaved in pairs; median and spread;
  * arithmetic limit: the image attention's FLOPs (4 B L T W per patched block: QK and PV) over the step's FLOPs
    (torch's FLOP counter on the unpatched step);
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

WIDTH, HEADS, CONTEXT = 3072, 24, 4096
ADAPTERS = {"xlabs_v1": ("xlabs", 4), "xlabs_v2": ("xlabs", 16), "instantx": ("instantx", 128)}


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


def step(patcher, inputs, sigma=0.7):
    x, context, y = inputs
    s = torch.tensor([sigma], device=x.device)
    options = dict(patcher.model_options["transformer_options"], cond_or_uncond=[1, 0], uuids=[None, None], sigmas=s)
    return patcher.model.apply_model(x, s.repeat(2), c_crossattn=context, y=y, guidance=torch.full((2,), 3.5),
                                     transformer_options=options)


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
    if kind == "xlabs":
        path = os.path.join(folder, f"{name}.safetensors")
        save_file(xlabs_state_dict(tokens, double, WIDTH, CONTEXT), path)
    else:
        path = os.path.join(folder, f"{name}.bin")
        torch.save(instantx_state_dict(tokens, double + single, WIDTH, CONTEXT, inner_dim=64), path)
    return pack_module("nodes.loader").load_cached(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--double", type=int, default=1)
    parser.add_argument("--single", type=int, default=2)
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    parser.add_argument("--text", type=int, default=128, help="text tokens")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--adapters", nargs="+", default=list(ADAPTERS))
    args = parser.parse_args()
    boot()
    import tempfile

    import comfy.model_management

    torch.manual_seed(0)
    with torch.inference_mode():
        flux = build_flux(args.double, args.single)
        comfy.model_management.load_models_gpu([flux])
        device = comfy.model_management.get_torch_device()
        inputs = (torch.randn(2, 16, args.latent, args.latent, device=device),
                  torch.randn(2, args.text, CONTEXT, device=device), torch.randn(2, 768, device=device))
        print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, Flux at width {WIDTH} with "
              f"{args.double} double + {args.single} single blocks, latent {args.latent}x{args.latent} "
              f"({(args.latent // 2) ** 2} image tokens), {args.text} text tokens, batch 2 (cond+uncond)")
        step(flux, inputs)  # warm-up
        base_flops = flops(flux, inputs)
        folder = tempfile.mkdtemp(prefix="flux-bench-")
        apply = pack_module("nodes.apply").ApplyIPAdapter()
        make_prompt = pack_module("nodes.encode").make_prompt
        for name in args.adapters:
            before = rss()
            loaded = adapter(name, args.double, args.single, folder)
            width = loaded.spec.encoder.width
            features = torch.randn(1, width)
            prompt = make_prompt(loaded, features, features if loaded.spec.uncond != "none" else None, torch.ones(1))
            patched = apply.apply(flux, loaded, prompt, 1.0, 0.0, 1.0)[0]
            comfy.model_management.load_models_gpu([patched])
            step(patched, inputs)  # K/V cached, first-call costs out of the timing
            ratios = []
            for _ in range(args.pairs):
                t0 = time.perf_counter()
                step(flux, inputs)
                t1 = time.perf_counter()
                step(patched, inputs)
                t2 = time.perf_counter()
                ratios.append(100 * ((t2 - t1) / (t1 - t0) - 1))
            image_tokens, text = (args.latent // 2) ** 2, args.text
            rows = [image_tokens] * args.double + ([image_tokens + text] * args.single if loaded.spec.projection == "instantx" else [])
            extra = 100 * sum(4 * 2 * L * loaded.spec.num_tokens * WIDTH for L in rows) / base_flops
            tensors = sum(t.numel() * t.element_size() for t in loaded.adapter.state_dict().values())
            entry = next(iter(patched.model_options["transformer_options"]["patches_replace"]["dit"].values())).entry
            cached = sum(t.numel() * t.element_size() for kv in entry._kv.values() for t in kv)
            added = rss() - before
            print(f"{name} ({loaded.spec.num_tokens} tokens, {loaded.spec.num_layers} block layers)")
            print(f"  step overhead, measured:  {statistics.median(ratios):+.2f}% (min {min(ratios):+.2f}, "
                  f"max {max(ratios):+.2f})")
            print(f"  arithmetic limit (FLOPs): {extra:+.4f}%")
            print(f"  resident memory added:    {added / 2**20:.0f} MiB (tensors {tensors / 2**20:.0f} MiB + cached K/V "
                  f"{cached / 2**20:.1f} MiB)")
            del patched, entry
            comfy.model_management.unload_all_models()
            comfy.model_management.load_models_gpu([flux])


if __name__ == "__main__":
    main()
