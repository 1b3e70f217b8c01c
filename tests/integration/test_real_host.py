"""The pack inside the real ComfyUI: loading, patch keys, numerics against the core, isolation, sampling."""

import copy

import pytest
import torch
from comfy_host import boot, build_model, forward, pack_module
from synthetic import reduced_adapter

import ipadapter_core as core

# The attn2 sites ComfyUI's UNet calls, as observed with a probe (reference comfy-host.md §2)
SD15_SITES = [("input", i, 0) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0, 0)] + [("output", i, 0) for i in range(3, 12)]
SDXL_SITES = ([("input", i, t) for i in (4, 5) for t in range(2)] + [("input", i, t) for i in (7, 8) for t in range(10)]
              + [("middle", 0, t) for t in range(10)] + [("output", i, t) for i in (0, 1, 2) for t in range(10)]
              + [("output", i, t) for i in (3, 4, 5) for t in range(2)])
VARIANT = {"sd15": "sd15_plus", "sdxl": "sdxl_vith"}
CONTEXT = {"sd15": 768, "sdxl": 2048}


def make_inputs(layout, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 12, 20, generator=g)  # non-square latent: 96x160 pixels
    sigma = torch.tensor([3.0])
    context = torch.randn(batch, 77, CONTEXT[layout], generator=g)
    y = torch.randn(batch, 2816, generator=g) if layout == "sdxl" else None
    return x, sigma, context, y


def loaded_adapter(layout, seed=0):
    import comfy.model_management
    import comfy.model_patcher

    adapter = reduced_adapter(VARIANT[layout], seed=seed, hidden_scale=5)
    patcher = comfy.model_patcher.ModelPatcher(adapter, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    return pack_module("nodes.loader").LoadedAdapter(adapter, patcher, f"{VARIANT[layout]}.safetensors")


def image_prompt(loaded, seed=2, images=1):
    spec = loaded.spec
    g = torch.Generator().manual_seed(seed)
    shape = (images, spec.encoder.width) if spec.encoder.output == "image_embeds" else (images, 257, spec.encoder.width)
    return pack_module("nodes.encode").make_prompt(loaded, torch.randn(*shape, generator=g),
                                                   torch.randn(1, *shape[1:], generator=g), torch.ones(images))


def apply(model, loaded, prompt, weight=1.0, start=0.0, end=1.0, mask=None):
    return pack_module("nodes.apply").ApplyIPAdapter().apply(model, loaded, prompt, weight, start, end, mask)[0]


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def layout(request):
    return request.param


@pytest.fixture(scope="module")
def setup(layout):
    with torch.inference_mode():
        boot()
        model = build_model(layout)
        loaded = loaded_adapter(layout)
        return model, loaded, image_prompt(loaded)


def test_pack_loads_through_comfyui_loader_without_warnings():
    nodes, pack, warnings = boot()
    for name in ("LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter"):
        assert nodes.NODE_CLASS_MAPPINGS[name] is pack.NODE_CLASS_MAPPINGS[name]
    assert [r.getMessage() for r in warnings] == []
    import folder_paths

    assert any(p.endswith("ipadapter") for p in folder_paths.get_folder_paths("ipadapter"))


def test_every_layer_called_exactly_once_per_forward(layout, setup):
    model, loaded, prompt = setup
    patched = apply(model, loaded, prompt)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    expected = SD15_SITES if layout == "sd15" else SDXL_SITES
    calls = []
    for key, patch in list(replace.items()):
        def counting(q, k, v, extra_options, _patch=patch, _key=key):
            calls.append((_key, extra_options["block"] + (extra_options["block_index"],)))
            return _patch(q, k, v, extra_options)
        replace[key] = counting
    with torch.inference_mode():
        forward(patched, *make_inputs(layout)[:3], cond_or_uncond=(1, 0), y=make_inputs(layout)[3])
    seen = [site for _, site in calls]
    assert sorted(seen) == sorted(expected)  # every site once, no other site
    assert len(seen) == {"sd15": 16, "sdxl": 70}[layout]
    assert all(key == site or key == site[:2] for key, site in calls)  # each patch ran at its own site


def test_weight_zero_gives_the_unpatched_output_exactly(layout, setup):
    model, loaded, prompt = setup
    x, sigma, context, y = make_inputs(layout)
    with torch.inference_mode():
        plain = forward(model, x, sigma, context, (1, 0), y)
        zero = forward(apply(model, loaded, prompt, weight=0.0), x, sigma, context, (1, 0), y)
        full = forward(apply(model, loaded, prompt, weight=1.0), x, sigma, context, (1, 0), y)
    assert torch.equal(zero, plain)
    assert (full - plain).norm() / plain.norm() > 1e-3


def reference_patches(loaded, prompt, weight):
    """The core's own computation per layer (SDPA, K/V projected per call), installed as plain replace patches."""
    def make(site):
        layer = loaded.adapter.ip_adapter[str(site.index)]

        def patch(q, k, v, extra_options):
            cond, uncond = (t.reshape(1, -1, t.shape[-1]) for t in (prompt.cond, prompt.uncond))  # images concatenated
            tokens = torch.cat([cond if c == 0 else uncond for c in extra_options["cond_or_uncond"]
                                for _ in range(q.shape[0] // len(extra_options["cond_or_uncond"]))])
            ip_k, ip_v = core.project_image_tokens(tokens, layer.to_k_ip.weight, layer.to_v_ip.weight)
            return core.decoupled_attention(q, k, v, ip_k, ip_v, extra_options["n_heads"], weight)
        return patch
    return {site: make(site) for site in loaded.adapter.layers}


def test_patched_output_equals_the_core_computation(layout, setup):
    model, loaded, prompt = setup
    x, sigma, context, y = make_inputs(layout)
    reference = model.clone()
    for site, patch in reference_patches(loaded, prompt, 0.7).items():
        reference.set_model_attn2_replace(patch, *site.patch_key)
    with torch.inference_mode():
        expected = forward(reference, x, sigma, context, (1, 0), y)
        got = forward(apply(model, loaded, prompt, weight=0.7), x, sigma, context, (1, 0), y)
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-5


def test_incoming_model_is_unchanged(layout, setup):
    model, loaded, prompt = setup
    before = copy.deepcopy(model.model_options)
    weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items() if "attn2" in k}
    patched = apply(model, loaded, prompt)
    apply(patched, loaded, prompt, weight=0.5)
    assert model.model_options == before
    assert "patches_replace" not in model.model_options["transformer_options"]
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())


def test_clones_share_adapter_weights(layout, setup):
    model, loaded, prompt = setup
    patched = apply(model, loaded, prompt)
    clone = patched.clone().clone()
    a = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    b = clone.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(a[key].entry is b[key].entry for key in a)  # weights and caches shared, not copied
    assert loaded.patcher in clone.model_patches_models()


def test_ksampler_runs_with_the_patched_model():
    nodes, _, _ = boot()
    with torch.inference_mode():
        model = build_model("sd15")
        loaded = loaded_adapter("sd15")
        patched = apply(model, loaded, image_prompt(loaded))
        g = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 77, 768, generator=g), {}]]
        negative = [[torch.zeros(1, 77, 768), {}]]
        latent = {"samples": torch.zeros(1, 4, 16, 16)}
        (out,) = nodes.KSampler().sample(patched, 1, 3, 5.0, "euler", "normal", positive, negative, latent, denoise=1.0)
    assert out["samples"].shape == (1, 4, 16, 16) and torch.isfinite(out["samples"]).all()


def test_lora_before_or_after_the_adapter():
    """A LoRA on an attn2 projection is honoured by our patch (it receives the LoRA'd q/k/v), in either order."""
    with torch.inference_mode():
        model = build_model("sd15")
        loaded = loaded_adapter("sd15")
        prompt = image_prompt(loaded)
        g = torch.Generator().manual_seed(3)
        key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
        delta = torch.randn(model.model.get_parameter(key).shape, generator=g) * 0.2
        lora_first = model.clone()
        lora_first.add_patches({key: ("diff", (delta,))}, 1.0)
        ip_then_lora = apply(model, loaded, prompt).clone()
        ip_then_lora.add_patches({key: ("diff", (delta,))}, 1.0)
        x, sigma, context, _ = make_inputs("sd15")
        a = forward(apply(lora_first, loaded, prompt), x, sigma, context, (1, 0))
        b = forward(ip_then_lora, x, sigma, context, (1, 0))
        no_lora = forward(apply(model, loaded, prompt), x, sigma, context, (1, 0))
        reference = lora_first.clone()
        for site, patch in reference_patches(loaded, prompt, 1.0).items():
            reference.set_model_attn2_replace(patch, *site.patch_key)
        expected = forward(reference, x, sigma, context, (1, 0))
    assert ((a - b).norm() / b.norm()).item() <= 1e-6
    assert ((a - expected).norm() / expected.norm()).item() <= 1e-5
    assert ((a - no_lora).norm() / no_lora.norm()).item() > 1e-4


def test_controlnet_with_the_patched_model_in_ksampler():
    """A ControlNet on the conditioning and our patch on the model: both act, sampling succeeds."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management
    from comfy_host import unet_config
    from synthetic_files import randomize

    nodes, _, _ = boot()
    with torch.inference_mode():
        model = build_model("sd15")
        loaded = loaded_adapter("sd15")
        patched = apply(model, loaded, image_prompt(loaded))
        cfg = {k: v for k, v in unet_config("sd15").items() if k not in ("out_channels", "transformer_depth_output", "dtype",
                                                                         "use_temporal_attention", "use_temporal_resblock")}
        net = randomize(comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float32, **cfg), 7)
        control = comfy.controlnet.ControlNet(net, load_device=comfy.model_management.get_torch_device())
        g = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 77, 768, generator=g), {}]]
        negative = [[torch.zeros(1, 77, 768), {}]]
        hint = torch.rand(1, 128, 128, 3, generator=g)
        cpos, cneg = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, hint, 1.0, 0.0, 1.0)
        latent = {"samples": torch.zeros(1, 4, 16, 16)}

        def sample(m, p, n):
            return nodes.KSampler().sample(m, 1, 2, 5.0, "euler", "normal", p, n, latent, denoise=1.0)[0]["samples"]

        both, ip_only, cn_only = sample(patched, cpos, cneg), sample(patched, positive, negative), sample(model, cpos, cneg)
    assert torch.isfinite(both).all()
    assert (both - ip_only).abs().max() > 1e-4 and (both - cn_only).abs().max() > 1e-4


def test_no_leaks_over_many_applies_and_runs():
    """1,000 applies leave the model's options as they were; 200 apply-and-sample runs keep memory flat."""
    import ctypes
    import gc

    import psutil

    def rss():
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return psutil.Process().memory_info().rss

    boot()
    Entry = pack_module("nodes.patch").ImagePromptEntry
    with torch.inference_mode():
        model = build_model("sd15")
        loaded = loaded_adapter("sd15")
        prompt = image_prompt(loaded)
        before = copy.deepcopy(model.model_options)
        gc.collect()
        alive = len([o for o in gc.get_objects() if isinstance(o, Entry)])
        for i in range(1000):
            apply(model, loaded, prompt, weight=0.5 + (i % 4) * 0.1)
        gc.collect()
        assert model.model_options == before
        assert len([o for o in gc.get_objects() if isinstance(o, Entry)]) == alive
        x, sigma, context, _ = make_inputs("sd15")
        for _ in range(20):
            forward(apply(model, loaded, prompt), x, sigma, context, (1, 0))
        start = rss()
        for _ in range(180):
            forward(apply(model, loaded, prompt), x, sigma, context, (1, 0))
        grown = rss() - start
    assert grown < 16 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 180 runs"


def test_masks_per_image_on_a_non_square_latent_and_a_per_frame_batch():
    """Per-image masks at 96x160 px and one reference per frame, against per-layer references built from the core."""
    import torch.nn.functional as F

    boot()
    make_prompt = pack_module("nodes.encode").make_prompt
    advanced = pack_module("nodes.apply").ApplyIPAdapterAdvanced()
    with torch.inference_mode():
        model = build_model("sd15")
        loaded = loaded_adapter("sd15")
        g = torch.Generator().manual_seed(8)
        prompt = make_prompt(loaded, torch.randn(3, 257, 1280, generator=g), torch.randn(1, 257, 1280, generator=g),
                             torch.ones(3))
        x, sigma, context = torch.randn(6, 4, 12, 20, generator=g), torch.tensor([3.0]), torch.randn(6, 77, 768, generator=g)

        def reference(mode, mask=None, frame_weights=(1.0, 1.0, 1.0)):
            ref = model.clone()
            for site in loaded.adapter.layers:
                layer = loaded.adapter.ip_adapter[str(site.index)]

                def patch(q, k, v, o, layer=layer):
                    out = core.sdpa_attention(q, k, v, o["n_heads"])
                    rows = []
                    for row in range(q.shape[0]):
                        chunk, frame = divmod(row, 3)
                        tokens = prompt.uncond if o["cond_or_uncond"][chunk] else prompt.cond
                        if mode == "frame":
                            ik, iv = core.project_image_tokens(tokens[frame], layer.to_k_ip.weight, layer.to_v_ip.weight)
                            rows.append(core.sdpa_attention(q[row:row + 1], ik[None], iv[None], o["n_heads"])
                                        * frame_weights[frame])
                        else:
                            h, w = o["activations_shape"][2:]
                            acc = 0
                            for i in range(3):
                                ik, iv = core.project_image_tokens(tokens[i], layer.to_k_ip.weight, layer.to_v_ip.weight)
                                m = F.interpolate(mask[i:i + 1, None], size=(h, w), mode="bilinear").flatten(1)[..., None]
                                acc = acc + core.sdpa_attention(q[row:row + 1], ik[None], iv[None], o["n_heads"]) * m
                            rows.append(acc)
                    return out + torch.cat(rows)
                ref.set_model_attn2_replace(patch, *site.patch_key)
            return forward(ref, x, sigma, context, (1, 0))

        per_frame = advanced.apply(model, loaded, prompt, 1.0, 0.0, 1.0, per_frame=True, frame_weights="1, 0.5, 0.25")[0]
        got = forward(per_frame, x, sigma, context, (1, 0))
        expected = reference("frame", frame_weights=(1.0, 0.5, 0.25))
        assert ((got - expected).norm() / expected.norm()).item() <= 1e-5

        mask = torch.zeros(3, 96, 160)
        mask[0, :, :60], mask[1, :, 60:110], mask[2, :, 110:] = 1.0, 0.7, 1.0
        masked = advanced.apply(model, loaded, prompt, 1.0, 0.0, 1.0, attn_mask=mask)[0]
        got = forward(masked, x, sigma, context, (1, 0))
        expected = reference("masks", mask=mask)
        assert ((got - expected).norm() / expected.norm()).item() <= 1e-5
