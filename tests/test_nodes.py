"""The three nodes against the stand-in host: definitions, loading, encoding, patching, chaining, errors."""

import copy
import os

import pytest
import torch
from safetensors.torch import save_file
from standin_host import ClipVisionModel, folder_paths, forward, load_pack, loaded_adapter, model_patcher, pack_module
from synthetic import flatten, make_checkpoint

import ipadapter_core as core

CONTEXT = {"sd15": 768, "sdxl": 2048}
VARIANT = {"sd15": "sd15_plus", "sdxl": "sdxl_vith"}
SD15_SITES = [("input", i, 0) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0, 0)] + [("output", i, 0) for i in range(3, 12)]
SDXL_SITES = ([("input", i, t) for i in (4, 5) for t in range(2)] + [("input", i, t) for i in (7, 8) for t in range(10)]
              + [("middle", 0, t) for t in range(10)] + [("output", i, t) for i in (0, 1, 2) for t in range(10)]
              + [("output", i, t) for i in (3, 4, 5) for t in range(2)])


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        yield


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def nodes(pack):
    m = pack.NODE_CLASS_MAPPINGS
    return m["LoadIPAdapter"](), m["EncodeImagePrompt"](), m["ApplyIPAdapter"]()


@pytest.fixture(scope="module")
def vit_h():
    return ClipVisionModel("vit-h", seed=1)


@pytest.fixture(scope="module")
def models():
    return {layout: model_patcher(layout) for layout in ("sd15", "sdxl")}


@pytest.fixture(scope="module")
def adapters():
    return {layout: loaded_adapter(VARIANT[layout]) for layout in ("sd15", "sdxl")}


def images(n=1, h=160, w=224, seed=0, channels=3):
    return torch.rand(n, h, w, channels, generator=torch.Generator().manual_seed(seed))


def inputs(layout, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 12, 20, generator=g), torch.tensor([3.0]), torch.randn(2, 77, CONTEXT[layout], generator=g)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# --- definitions -----------------------------------------------------------------------------------------


def test_node_definitions_are_complete(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == {"LoadIPAdapter", "LoadIPAdapterAndEncoder", "EncodeImagePrompt",
                                             "CombineImagePrompts", "ApplyIPAdapter", "ApplyIPAdapterAdvanced",
                                             "ApplyIPAdapterStyleComposition", "SaveImagePrompt", "LoadImagePrompt",
                                                 "LoadFaceAnalyzer", "EmbedFaces"}
    assert pack.WEB_DIRECTORY == "./web"
    categories = set()
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, (kind, *options) in spec.get(section, {}).items():
                assert options and options[0].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        assert len(cls.DESCRIPTION) > 40 and callable(getattr(cls, cls.FUNCTION))
        assert all(OUTPUT and tip for OUTPUT, tip in zip(cls.RETURN_TYPES, cls.OUTPUT_TOOLTIPS))
        assert name in pack.NODE_DISPLAY_NAME_MAPPINGS
        categories.add(cls.CATEGORY)
    assert categories == {"IP-Adapter DCA"}
    # our socket types are our own, not the IPADAPTER / EMBEDS of other packs
    assert pack.NODE_CLASS_MAPPINGS["LoadIPAdapter"].RETURN_TYPES == ("IPA_DCA_ADAPTER",)
    assert pack.NODE_CLASS_MAPPINGS["EncodeImagePrompt"].RETURN_TYPES == ("IPA_DCA_IMAGE_PROMPT",)


# --- LoadIPAdapter -----------------------------------------------------------------------------------------


def test_model_folder_keeps_paths_given_before(pack):
    loader = pack_module("nodes.loader")
    saved = folder_paths.folder_names_and_paths.get("ipadapter")
    try:
        folder_paths.folder_names_and_paths["ipadapter"] = (["/mnt/shared/ipadapter"], {".pth"})
        loader.register_adapter_folder()
        paths, extensions = folder_paths.folder_names_and_paths["ipadapter"]
        assert paths == ["/mnt/shared/ipadapter", os.path.join(folder_paths.models_dir, "ipadapter")]
        assert extensions == {".pth", ".safetensors", ".bin"}
    finally:
        folder_paths.folder_names_and_paths["ipadapter"] = saved


def test_loader_lists_loads_once_and_reloads_on_change(pack, nodes, tmp_path):
    folder = os.path.join(folder_paths.models_dir, "ipadapter")
    os.makedirs(folder, exist_ok=True)
    save_file(flatten(make_checkpoint("sd15_base")), os.path.join(folder, "ip-adapter_sd15.safetensors"))
    torch.save(make_checkpoint("sd15_full"), os.path.join(folder, "ip-adapter-full-face_sd15.bin"))
    open(os.path.join(folder, "notes.txt"), "w").close()
    listed = pack.NODE_CLASS_MAPPINGS["LoadIPAdapter"].INPUT_TYPES()["required"]["ipadapter_file"][0]
    assert "ip-adapter_sd15.safetensors" in listed and "ip-adapter-full-face_sd15.bin" in listed
    assert "notes.txt" not in listed

    load = nodes[0].load
    (first,) = load("ip-adapter_sd15.safetensors")
    (again,) = load("ip-adapter_sd15.safetensors")
    assert again is first and first.spec.projection == "base" and first.file_name == "ip-adapter_sd15.safetensors"
    path = os.path.join(folder, "ip-adapter_sd15.safetensors")
    os.utime(path, (os.path.getatime(path), os.path.getmtime(path) + 10))
    (changed,) = load("ip-adapter_sd15.safetensors")
    assert changed is not first
    assert load("ip-adapter-full-face_sd15.bin")[0].spec.num_tokens == 257
    with pytest.raises(FileNotFoundError, match="ipadapter.*missing.safetensors"):
        load("missing.safetensors")


# --- EncodeImagePrompt -------------------------------------------------------------------------------------


def test_encode_plus_matches_the_encoder_and_projection(nodes, vit_h, adapters):
    loaded = adapters["sd15"]
    image = images(2)
    (prompt,) = nodes[1].encode(loaded, vit_h, image, "center crop")
    hidden = vit_h.encode_image(image, crop=True)["penultimate_hidden_states"]
    expected = core.image_tokens(loaded.adapter, hidden)  # [2, 16, 768]
    assert prompt.cond.shape == (2, 16, 768)  # two images: their tokens are concatenated in the attention
    assert torch.equal(prompt.cond, expected)
    # uncond: the encoder on all-zero normalised pixels (reference-spec 5.3), one copy per image
    zero = vit_h.model(pixel_values=torch.zeros(1, 3, 224, 224), intermediate_output=-2)[1]
    expected_uncond = core.image_tokens(loaded.adapter, zero)
    assert torch.equal(prompt.uncond, expected_uncond.expand(2, -1, -1))


def test_encode_base_uncond_is_projection_of_zeros(nodes):
    loaded = loaded_adapter("sd15_base")
    (prompt,) = nodes[1].encode(loaded, ClipVisionModel("vit-h"), images(1), "center crop")
    assert prompt.cond.shape == (1, 4, 768)
    assert torch.equal(prompt.uncond, core.image_tokens(loaded.adapter, torch.zeros(1, 1024)))


def test_negative_image_replaces_the_neutral_uncond(nodes, vit_h, adapters):
    loaded = adapters["sd15"]
    negative = images(1, seed=9)
    (prompt,) = nodes[1].encode(loaded, vit_h, images(3), "squash", negative_image=negative)
    neg = core.image_tokens(loaded.adapter, vit_h.encode_image(negative, crop=False)["penultimate_hidden_states"])
    assert torch.equal(prompt.uncond, neg.expand(3, -1, -1))


def test_crop_modes(nodes, vit_h, adapters):
    loaded, image = adapters["sd15"], images(1, h=100, w=300)
    encode = nodes[1].encode
    squash = encode(loaded, vit_h, image, "squash")[0].cond
    crop = encode(loaded, vit_h, image, "center crop")[0].cond
    pad = encode(loaded, vit_h, image, "pad")[0].cond
    padded = torch.tensor([0.48145466, 0.4578275, 0.40821073]).expand(1, 300, 300, 3).clone()
    padded[:, 100:200] = image
    expected_pad = core.image_tokens(loaded.adapter, vit_h.encode_image(padded)["penultimate_hidden_states"])
    assert torch.equal(pad, expected_pad)
    assert rel(squash, crop) > 1e-3 and rel(pad, crop) > 1e-3


def test_gray_and_alpha_images_are_accepted(nodes, vit_h, adapters):
    rgb = images(1)
    gray = rgb[..., :1]
    rgba = torch.cat([rgb, torch.ones_like(gray)], dim=-1)
    encode = nodes[1].encode
    assert torch.equal(encode(adapters["sd15"], vit_h, rgba, "center crop")[0].cond,
                       encode(adapters["sd15"], vit_h, rgb, "center crop")[0].cond)
    assert torch.equal(encode(adapters["sd15"], vit_h, gray, "center crop")[0].cond,
                       encode(adapters["sd15"], vit_h, gray.expand(-1, -1, -1, 3), "center crop")[0].cond)


def test_wrong_encoder_names_the_file_to_load(nodes, adapters):
    with pytest.raises(core.ImagePromptError) as err:
        nodes[1].encode(adapters["sd15"], ClipVisionModel("vit-bigg"), images(1), "center crop")
    text = str(err.value)
    assert "penultimate_hidden_states of shape [1, 257, 1664]" in text
    assert "expects [batch, 257, 1280]" in text and "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in text


def test_empty_image_batch_is_an_error(nodes, vit_h, adapters):
    NodeInputError = pack_module("nodes.common").NodeInputError
    with pytest.raises(NodeInputError, match="'image' is an empty batch"):
        nodes[1].encode(adapters["sd15"], vit_h, torch.zeros(0, 64, 64, 3), "center crop")


def test_progress_bar_moves_per_chunk(nodes, vit_h, adapters):
    import comfy.utils

    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        nodes[1].encode(adapters["sd15"], vit_h, images(20, h=64, w=64), "center crop")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert seen == [(16, 20), (20, 20)]


# --- ApplyIPAdapter ----------------------------------------------------------------------------------------


def prompt_for(loaded, seed=2, n=1, weights=None):
    make_prompt = pack_module("nodes.encode").make_prompt
    g = torch.Generator().manual_seed(seed)
    w = loaded.spec.encoder.width
    shape = (n, w) if loaded.spec.encoder.output == "image_embeds" else (n, 257, w)
    return make_prompt(loaded, torch.randn(*shape, generator=g), torch.randn(1, *shape[1:], generator=g),
                       torch.ones(n) if weights is None else torch.tensor(weights))


@pytest.fixture(scope="module")
def prompts(adapters):
    return {layout: prompt_for(adapters[layout]) for layout in adapters}


def reference_layer(loaded, prompt, weight, extra=None, mask=None):
    """Per-layer reference with the core only: SDPA, K/V projected per call, mask grid from activations_shape."""
    def make(site):
        layer = loaded.adapter.ip_adapter[str(site.index)]

        def patch(q, k, v, options):
            chunks = options["cond_or_uncond"]
            cond, uncond = (t.reshape(1, -1, t.shape[-1]) for t in (prompt.cond, prompt.uncond))
            tokens = torch.cat([cond if c == 0 else uncond for c in chunks for _ in range(q.shape[0] // len(chunks))])
            ip_k, ip_v = core.project_image_tokens(tokens, layer.to_k_ip.weight, layer.to_v_ip.weight)
            base = extra(q, k, v, options) if extra else core.sdpa_attention(q, k, v, options["n_heads"])
            image = core.image_attention(q, ip_k, ip_v, options["n_heads"]) * weight
            if mask is not None:
                h, w = options["activations_shape"][2:]
                image = image * torch.nn.functional.interpolate(mask[None], size=(h, w), mode="bilinear").flatten(1)[..., None]
            return base + image
        return patch
    return {site: make(site) for site in loaded.adapter.layers}


def with_patches(model, patches):
    out = model.clone()
    for site, patch in patches.items():
        out.set_model_attn2_replace(patch, *site.patch_key)
    return out


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_each_layer_patched_exactly_once_per_forward(layout, nodes, models, adapters, prompts):
    (patched,) = nodes[2].apply(models[layout], adapters[layout], prompts[layout], 1.0, 0.0, 1.0)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    calls = []
    for key, patch in list(replace.items()):
        replace[key] = lambda q, k, v, o, _p=patch, _key=key: calls.append((_key, o["block"] + (o["block_index"],))) or _p(q, k, v, o)
    forward(patched, *inputs(layout), cond_or_uncond=(1, 0))
    expected = SD15_SITES if layout == "sd15" else SDXL_SITES
    assert sorted(site for _, site in calls) == sorted(expected)
    assert all(key in (site, site[:2]) for key, site in calls)


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_output_equals_core_reference_and_weight_zero_is_exact(layout, nodes, models, adapters, prompts):
    model, loaded, prompt = models[layout], adapters[layout], prompts[layout]
    x, sigma, context = inputs(layout)
    plain = forward(model, x, sigma, context, (1, 0))
    expected = forward(with_patches(model, reference_layer(loaded, prompt, 0.8)), x, sigma, context, (1, 0))
    got = forward(nodes[2].apply(model, loaded, prompt, 0.8, 0.0, 1.0)[0], x, sigma, context, (1, 0))
    assert rel(got, expected) <= 1e-5 and rel(got, plain) > 1e-3
    zero = forward(nodes[2].apply(model, loaded, prompt, 0.0, 0.0, 1.0)[0], x, sigma, context, (1, 0))
    assert torch.equal(zero, plain)


def test_incoming_model_is_never_changed(nodes, models, adapters, prompts):
    model = models["sd15"]
    before = copy.deepcopy(model.model_options)
    patched = nodes[2].apply(model, adapters["sd15"], prompts["sd15"], 1.0, 0.0, 1.0)[0]
    nodes[2].apply(patched, adapters["sd15"], prompts["sd15"], 0.3, 0.2, 0.9)
    assert model.model_options == before and patched is not model


def test_timestep_range(nodes, models, adapters, prompts):
    model = models["sd15"]
    sampling = model.get_model_object("model_sampling")
    patched = nodes[2].apply(model, adapters["sd15"], prompts["sd15"], 1.0, 0.5, 0.8)[0]
    x, _, context = inputs("sd15")
    start, end = sampling.percent_to_sigma(0.5), sampling.percent_to_sigma(0.8)
    for sigma, active in ((start * 1.5, False), ((start + end) / 2, True), (end * 0.5, False)):
        s = torch.tensor([sigma])
        same = torch.equal(forward(patched, x, s, context), forward(model, x, s, context))
        assert same != active, sigma


def test_timestep_gate_reads_sigmas_once_per_step(nodes, models, adapters, prompts):
    class CountingTensor(torch.Tensor):
        floats = 0

        def __float__(self):
            CountingTensor.floats += 1
            return super().__float__()

    patched = nodes[2].apply(models["sd15"], adapters["sd15"], prompts["sd15"], 1.0, 0.1, 0.9)[0]
    x, _, context = inputs("sd15")
    sigma = torch.tensor([3.0]).as_subclass(CountingTensor)
    forward(patched, x, sigma, context, (1, 0))
    assert CountingTensor.floats == 1  # one host read for 16 layers


def test_image_kv_computed_once_per_run_not_per_step(nodes, models, adapters, prompts, monkeypatch):
    patch_module = pack_module("nodes.patch")
    calls = []
    original = patch_module.project_image_tokens
    monkeypatch.setattr(patch_module, "project_image_tokens", lambda *a: calls.append(1) or original(*a))
    patched = nodes[2].apply(models["sd15"], adapters["sd15"], prompts["sd15"], 1.0, 0.0, 1.0)[0]
    x, sigma, context = inputs("sd15")
    for step in range(3):
        forward(patched, x, sigma * (step + 1), context, (1, 0))
        forward(patched, x, sigma * (step + 1), context, (0,))
    assert len(calls) == 16  # once per layer, shared by every step and both CFG halves


def test_clones_share_patches_and_weights(nodes, models, adapters, prompts):
    patched = nodes[2].apply(models["sdxl"], adapters["sdxl"], prompts["sdxl"], 1.0, 0.0, 1.0)[0]
    clones = [patched.clone() for _ in range(5)]
    original = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    for c in clones:
        replaced = c.model_options["transformer_options"]["patches_replace"]["attn2"]
        assert all(replaced[k].entry is original[k].entry for k in original)  # weights and caches shared
        assert adapters["sdxl"].patcher in c.model_patches_models()
    w = adapters["sdxl"].adapter.ip_adapter["1"].to_k_ip.weight
    assert original[("input", 4, 0)].entry.loaded.adapter.ip_adapter["1"].to_k_ip.weight is w


def test_two_adapters_in_a_row_both_apply(nodes, models, adapters, prompts):
    model, loaded = models["sd15"], adapters["sd15"]
    other = loaded_adapter("sd15_base", seed=5)
    other_prompt = prompt_for(other, seed=7)
    x, sigma, context = inputs("sd15")
    first = nodes[2].apply(model, loaded, prompts["sd15"], 0.6, 0.0, 1.0)[0]
    both = nodes[2].apply(first, other, other_prompt, 0.9, 0.0, 1.0)[0]
    ref_a = reference_layer(loaded, prompts["sd15"], 0.6)
    ref_b = reference_layer(other, other_prompt, 0.9)
    combined = {site: (lambda q, k, v, o, a=ref_a[site], b=ref_b[site]: a(q, k, v, o) + b(q, k, v, o)
                       - core.sdpa_attention(q, k, v, o["n_heads"])) for site in ref_a}
    expected = forward(with_patches(model, combined), x, sigma, context, (1, 0))
    assert rel(forward(both, x, sigma, context, (1, 0)), expected) <= 1e-5
    # one adapter, two prompts
    twice = nodes[2].apply(first, loaded, prompt_for(loaded, seed=8), 0.5, 0.0, 1.0)[0]
    assert rel(forward(twice, x, sigma, context), forward(first, x, sigma, context)) > 1e-4


def test_another_packs_patch_is_wrapped_not_replaced(nodes, models, adapters, prompts):
    model, loaded, prompt = models["sd15"], adapters["sd15"], prompts["sd15"]
    calls = []

    def foreign(q, k, v, options):  # e.g. another IP-Adapter pack, at the 2-tuple key SD1.5 packs use
        calls.append(options["block"])
        return core.sdpa_attention(q, k, v, options["n_heads"]) * 0.5

    theirs = model.clone()
    theirs.set_model_attn2_replace(foreign, "input", 1)
    theirs.set_model_attn2_replace(foreign, "output", 7, 0)  # a 3-tuple key takes precedence in ComfyUI
    ours = nodes[2].apply(theirs, loaded, prompt, 0.8, 0.0, 1.0)[0]
    x, sigma, context = inputs("sd15")
    got = forward(ours, x, sigma, context, (1, 0))
    assert sorted(calls) == [("input", 1), ("output", 7)]
    ref = reference_layer(loaded, prompt, 0.8)
    for site in loaded.adapter.layers:
        if site.patch_key in (("input", 1), ("output", 7)):
            ref[site] = reference_layer(loaded, prompt, 0.8, extra=foreign)[site]
    reference = with_patches(model, {s: p for s, p in ref.items() if s.patch_key != ("output", 7)})
    reference.set_model_attn2_replace(ref[next(s for s in ref if s.patch_key == ("output", 7))], "output", 7, 0)
    assert rel(got, forward(reference, x, sigma, context, (1, 0))) <= 1e-5


def test_mask_on_a_non_square_latent(nodes, models, adapters, prompts):
    model, loaded, prompt = models["sd15"], adapters["sd15"], prompts["sd15"]
    mask = torch.zeros(1, 96, 160)  # the latent is 12x20 (96x160 pixels)
    mask[:, :, :80] = 1.0
    mask[:, :48, 80:] = 0.5
    x, sigma, context = inputs("sd15")
    got = forward(nodes[2].apply(model, loaded, prompt, 1.0, 0.0, 1.0, attn_mask=mask)[0], x, sigma, context, (1, 0))
    expected = forward(with_patches(model, reference_layer(loaded, prompt, 1.0, mask=mask)), x, sigma, context, (1, 0))
    assert rel(got, expected) <= 1e-5
    ones = forward(nodes[2].apply(model, loaded, prompt, 1.0, 0.0, 1.0, attn_mask=torch.ones(64, 64))[0], x, sigma, context)
    unmasked = forward(nodes[2].apply(model, loaded, prompt, 1.0, 0.0, 1.0)[0], x, sigma, context)
    assert rel(ones, unmasked) <= 1e-6  # bilinear resizing of ones is 1 up to rounding


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight=float("nan")), "'weight' must be a number from -1 to 5, got nan"),
    (dict(weight=float("inf")), "'weight' must be a number from -1 to 5, got inf"),
    (dict(start_percent=0.8, end_percent=0.2), r"'start_percent' \(0.8\) is after 'end_percent' \(0.2\)"),
    (dict(end_percent=1.5), "'end_percent' must be from 0 to 1, got 1.5"),
    (dict(attn_mask=torch.zeros(1, 64, 64)), r"'attn_mask' is empty \(all zeros\)"),
    (dict(attn_mask=torch.ones(2, 64, 64)), "'attn_mask' holds 2 masks, but the image prompt has 1 reference"),
    (dict(attn_mask=torch.full((64, 64), float("nan"))), "'attn_mask' contains NaN"),
])
def test_bad_apply_inputs(kwargs, message, nodes, models, adapters, prompts):
    NodeInputError = pack_module("nodes.common").NodeInputError
    model = models["sd15"]
    before = copy.deepcopy(model.model_options)
    args = dict(model=model, ipadapter=adapters["sd15"], image_prompt=prompts["sd15"], weight=1.0,
                start_percent=0.0, end_percent=1.0)
    args.update(kwargs)
    with pytest.raises(NodeInputError, match=f"Apply IP-Adapter: {message}"):
        nodes[2].apply(**args)
    assert model.model_options == before


def test_sdxl_adapter_on_sd15_model(nodes, models, adapters, prompts):
    NodeInputError = pack_module("nodes.common").NodeInputError
    with pytest.raises(NodeInputError) as err:
        nodes[2].apply(models["sd15"], adapters["sdxl"], prompts["sdxl"], 1.0, 0.0, 1.0)
    text = str(err.value)
    assert "'sdxl_vith.safetensors' is an SDXL IP-Adapter" in text
    assert "no cross-attention at input block 4" in text and "use an SD1.5 IP-Adapter with it" in text
    assert "patches_replace" not in models["sd15"].model_options["transformer_options"]


def test_prompt_from_another_adapter(nodes, models, adapters):
    NodeInputError = pack_module("nodes.common").NodeInputError
    other = loaded_adapter("sd15_plus", seed=3)
    with pytest.raises(NodeInputError, match="encoded for 'sd15_plus.safetensors' but is applied with 'sd15_plus"):
        nodes[2].apply(models["sd15"], adapters["sd15"], prompt_for(other), 1.0, 0.0, 1.0)


def test_standin_sampling_matches_the_real_host():
    # percent_to_sigma values observed on the real ComfyUI for SD1.5 (comfy-host.md §4)
    sampling = model_patcher("sd15").get_model_object("model_sampling")
    for percent, sigma in ((0.25, 4.086), (0.5, 1.616), (0.75, 0.695)):
        assert abs(sampling.percent_to_sigma(percent) - sigma) < 2e-3
    assert sampling.percent_to_sigma(0.0) == 999999999.9 and sampling.percent_to_sigma(1.0) == 0.0


def test_no_host_sync_in_the_attention_path(nodes, models, adapters, prompts, monkeypatch):
    """Beyond the one sigma read per step, no layer reads a tensor back to the host."""
    patched = nodes[2].apply(models["sdxl"], adapters["sdxl"], prompts["sdxl"], 1.0, 0.0, 1.0)[0]
    x, sigma, context = inputs("sdxl")
    forward(patched, x, sigma, context, (1, 0))  # fills the caches
    reads = []
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: reads.append(_n) or _o(self, *a, **k))
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    for step in range(2):
        options = dict(cond_or_uncond=[1, 0], sigmas=torch.tensor([2.0 + step]), n_heads=8, attn_precision=None,
                       original_shape=[2, 4, 12, 20])
        q = torch.randn(2, 60, 256)  # the middle block is 4 x 64 channels wide
        k = v = torch.randn(2, 77, 256)
        for key in [k_ for k_ in replace if k_[0] == "middle"]:
            replace[key](q, k, v, options)
    assert reads == ["__float__", "__float__"]  # one per step, for ten layers


def test_kv_follow_the_model_dtype(nodes, adapters, prompts):
    model = model_patcher("sd15")
    model.model.to(torch.bfloat16)
    patched = nodes[2].apply(model, adapters["sd15"], prompts["sd15"], 1.0, 0.0, 1.0)[0]
    x, sigma, context = inputs("sd15")
    out = forward(patched, x.bfloat16(), sigma, context.bfloat16(), (1, 0))
    entry = patched.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1)].entry
    assert out.dtype == torch.bfloat16
    assert {key[2] for key in entry._kv} == {torch.bfloat16} and len(entry._kv) == 16
    assert adapters["sd15"].adapter.ip_adapter["1"].to_k_ip.weight.dtype == torch.float32  # the file's dtype, untouched


def test_a_pack_that_adds_to_existing_patches_after_ours(nodes, models, adapters, prompts):
    """Like ComfyUI_IPAdapter_plus: at a key that already holds a patch it calls patch.add(callback, **kwargs)."""
    model, loaded, prompt = models["sd15"], adapters["sd15"], prompts["sd15"]
    ours = nodes[2].apply(model, loaded, prompt, 0.8, 0.0, 1.0)[0]
    calls = []

    def other_pack(out, q, k, v, extra_options, weight, sigma_start, sigma_end):
        calls.append(extra_options["block"])
        return out * weight

    theirs = ours.clone()
    for key in theirs.model_options["transformer_options"]["patches_replace"]["attn2"]:
        theirs.model_options["transformer_options"]["patches_replace"]["attn2"][key].add(
            other_pack, weight=0.1, sigma_start=10.0, sigma_end=1.0)
    x, sigma, context = inputs("sd15")
    got = forward(theirs, x, sigma, context, (1, 0))
    assert len(calls) == 16
    assert not any(p.added for p in ours.model_options["transformer_options"]["patches_replace"]["attn2"].values())
    ref = reference_layer(loaded, prompt, 0.8)
    expected = forward(with_patches(model, {s: (lambda q, k, v, o, r=p: r(q, k, v, o) * 1.1) for s, p in ref.items()}),
                       x, sigma, context, (1, 0))
    assert rel(got, expected) <= 1e-5
    calls.clear()
    forward(theirs, x, torch.tensor([20.0]), context, (1, 0))  # outside the other pack's sigma range
    assert calls == []


def test_the_pack_logs_and_never_prints():
    import ast

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in ("nodes", "ipadapter_core"):
        for name in os.listdir(os.path.join(repo, folder)):
            if name.endswith(".py"):
                tree = ast.parse(open(os.path.join(repo, folder, name)).read())
                calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
                assert calls == [], f"{folder}/{name} prints"
    assert pack_module("nodes.common").logger.name == "ipadapter_dca"
