"""What IP-Adapter costs per UNet step, against the unpatched step measured in the same run.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/overhead.py [--models sd15 sdxl] [--pairs 6] [--latent 64]

For SD1.5 and SDXL UNets built from ComfyUI's own configs (full size, random weights) and synthetic base, plus and
full-face adapters (full size, random weights, saved as .safetensors), it prints:
  * step overhead: patched vs unpatched UNet steps, interleaved in pairs; median and spread of the pair ratios;
  * arithmetic limit: the extra FLOPs of the image attention over the step's FLOPs (torch's FLOP counter);
  * site overhead: the 16/70 attention sites timed alone, paired step by step: ours, ComfyUI's plain attention,
    and a minimal patch (plain attention plus one attention over already-cached image K/V);
  * memory: resident memory the adapter adds after sampling, against its tensors plus the cached K/V;
  * load: Load IP-Adapter's time against a plain safetensors read of the same file.
Runs on the GPU when ComfyUI finds one (timings synchronise the device), else on the CPU in fp32.
"""

import argparse
import ctypes
import gc
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests", "integration"), os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..")]

import psutil  # noqa: E402
import torch  # noqa: E402
from comfy_host import boot, pack_module, unet_config  # noqa: E402
from synthetic import flatten, make_checkpoint  # noqa: E402

VARIANTS = {"sd15": ["sd15_base", "sd15_plus", "sd15_full"], "sdxl": ["sdxl_vith", "sdxl_plus"]}
# SDXL has no full-face adapter


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_unet(layout):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    from synthetic_files import randomize

    cfg = unet_config(layout, channels=320)
    if layout == "sdxl":
        cfg["num_head_channels"] = 64  # the real SDXL's heads
    config = (comfy.supported_models.SD15 if layout == "sd15" else comfy.supported_models.SDXL)(cfg)
    model = config.get_model({})
    randomize(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def step_inputs(layout, latent):
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device)
    context = torch.randn(2, 77, 768 if layout == "sd15" else 2048, generator=g).to(device)
    y = torch.randn(2, 2816, generator=g).to(device) if layout == "sdxl" else None
    return x, context, y


def unet_step(patcher, x, context, y, sigma=3.0):
    """One cond+uncond UNet call as calc_cond_batch makes it (the models are loaded once, before, as sampling does)."""
    s = torch.tensor([sigma], device=x.device)
    options = dict(patcher.model_options["transformer_options"], cond_or_uncond=[1, 0], uuids=[None, None], sigmas=s)
    kwargs = {"y": y} if y is not None else {}
    return patcher.model.apply_model(x, s.repeat(2), c_crossattn=context, transformer_options=options, **kwargs)


def flops(patcher, x, context, y):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        unet_step(patcher, x, context, y)
    return counter.get_total_flops()


class SiteTimer:
    """Wraps every attn2 patch (or ComfyUI's plain attention) and adds up the wall time spent in the sites."""

    def __init__(self, patcher, plain):
        self.total = 0.0
        self.patcher = patcher.clone()
        replace = self.patcher.model_options["transformer_options"].setdefault("patches_replace", {}).setdefault("attn2", {})
        for key in list(replace) or plain:
            inner = replace.get(key) or plain[key]
            self.patcher.set_model_attn2_replace(self.timed(inner), *key)

    def timed(self, inner):
        def patch(q, k, v, extra_options):
            sync()
            start = time.perf_counter()
            out = inner(q, k, v, extra_options)
            sync()
            self.total += time.perf_counter() - start
            return out
        return patch


def plain_patches(loaded):
    patch = pack_module("nodes.patch")
    return {site.patch_key: (lambda q, k, v, o: patch.host_attention(q, k, v, o["n_heads"], o)) for site in loaded.adapter.layers}


def minimal_patches(loaded, prompt, weight=1.0):
    """ComfyUI's attention plus one attention over K/V computed beforehand: the least a patch can do."""
    patch = pack_module("nodes.patch")
    core = pack_module("ipadapter_core")
    cache = {}

    def make(site):
        layer = loaded.adapter.ip_adapter[str(site.index)]

        def minimal(q, k, v, o):
            if site.index not in cache:
                tokens = torch.cat([prompt.uncond, prompt.cond]).to(q.device, q.dtype)  # rows: uncond, cond
                cache[site.index] = core.project_image_tokens(tokens, layer.to_k_ip.weight.to(q.device, q.dtype),
                                                              layer.to_v_ip.weight.to(q.device, q.dtype))
            ip_k, ip_v = cache[site.index]
            return patch.host_attention(q, k, v, o["n_heads"], o) + weight * patch.host_attention(q, ip_k, ip_v, o["n_heads"], o)
        return minimal
    return {site.patch_key: make(site) for site in loaded.adapter.layers}


def image_prompt(loaded):
    spec = loaded.spec
    g = torch.Generator().manual_seed(1)
    shape = (1, spec.encoder.width) if spec.encoder.output == "image_embeds" else (1, 257, spec.encoder.width)
    return pack_module("nodes.encode").make_prompt(loaded, torch.randn(*shape, generator=g), torch.zeros(*shape),
                                                   torch.ones(1))


def rss():
    """Resident memory after handing freed heap back to the OS, so transient activations do not count."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the figure then includes the allocator's slack
        pass
    return psutil.Process().memory_info().rss


def spread(values):
    return f"{statistics.median(values):+.2f}% (min {min(values):+.2f}, max {max(values):+.2f})"


def bench_variant(layout, variant, unet, inputs, pairs, folder):
    import comfy.model_management
    from safetensors.torch import load_file, save_file

    loader = pack_module("nodes.loader")
    path = os.path.join(folder, f"{variant}.safetensors")
    save_file(flatten(make_checkpoint(variant)), path)

    start = time.perf_counter()
    plain_read = load_file(path)
    plain_s = time.perf_counter() - start
    del plain_read
    loader._cache.clear()
    x, context, y = inputs
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([unet])
        unet_step(unet, x, context, y)  # the unpatched step's own memory is not the adapter's
    before = rss()
    start = time.perf_counter()
    loaded = loader.load_cached(path)
    load_s = time.perf_counter() - start

    prompt = image_prompt(loaded)
    patched = pack_module("nodes.apply").ApplyIPAdapter().apply(unet, loaded, prompt, 1.0, 0.0, 1.0)[0]
    minimal = unet.clone()
    for key, p in minimal_patches(loaded, prompt).items():
        minimal.set_model_attn2_replace(p, *key)

    with torch.inference_mode():
        comfy.model_management.load_models_gpu([patched])  # the UNet and the adapter weights, once, as sampling does
        unet_step(patched, x, context, y)  # fills the K/V cache
        added = rss() - before
        extra = flops(patched, x, context, y) / flops(unet, x, context, y) - 1
        kv_bytes = sum(k.nbytes + v.nbytes for k, v in next(iter(
            patched.model_options["transformer_options"]["patches_replace"]["attn2"].values())).entry._kv.values())
        tensor_bytes = sum(t.nbytes for t in loaded.adapter.state_dict().values())

        step_ratios, site_vs_plain, site_vs_minimal = [], [], []
        timers = {name: SiteTimer(p, plain_patches(loaded)) for name, p in
                  (("plain", unet), ("ours", patched), ("minimal", minimal))}
        for _ in range(pairs):
            times = {}
            for name, p in (("plain", unet), ("ours", patched)):
                sync()
                start = time.perf_counter()
                unet_step(p, x, context, y)
                sync()
                times[name] = time.perf_counter() - start
            step_ratios.append(100 * (times["ours"] / times["plain"] - 1))
            site = {}
            for name, timer in timers.items():
                timer.total = 0.0
                unet_step(timer.patcher, x, context, y)
                site[name] = timer.total
            site_vs_plain.append(100 * (site["ours"] - site["plain"]) / times["plain"])
            site_vs_minimal.append(100 * (site["ours"] - site["minimal"]) / times["plain"])

    print(f"{layout} {variant} ({loaded.spec.num_tokens} tokens)")
    print(f"  step overhead, measured:        {spread(step_ratios)}")
    print(f"  arithmetic limit (FLOPs):       {100 * extra:+.2f}%")
    print(f"  attention sites, ours - plain:  {spread(site_vs_plain)} of a step")
    print(f"  attention sites, ours - minimal:{spread(site_vs_minimal)} of a step")
    print(f"  resident memory added:          {added / 2**20:.0f} MiB (tensors {tensor_bytes / 2**20:.0f} MiB "
          f"+ cached K/V {kv_bytes / 2**20:.1f} MiB)")
    print(f"  load: {load_s * 1000:.0f} ms vs plain safetensors read {plain_s * 1000:.0f} ms")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--pairs", type=int, default=6, help="interleaved unpatched/patched step pairs per variant")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    parser.add_argument("--variants", nargs="*", help="only these adapters, e.g. sd15_plus")
    args = parser.parse_args()
    boot()
    import comfy.model_management

    print(f"device {comfy.model_management.get_torch_device()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"latent {args.latent}x{args.latent}, batch 2 (cond+uncond)")
    with tempfile.TemporaryDirectory() as folder:
        for layout in args.models:
            with torch.inference_mode():
                unet = build_unet(layout)
                inputs = step_inputs(layout, args.latent)
            for variant in VARIANTS[layout]:
                if not args.variants or variant in args.variants:
                    bench_variant(layout, variant, unet, inputs, args.pairs, folder)
            del unet
            comfy.model_management.unload_all_models()


if __name__ == "__main__":
    main()
