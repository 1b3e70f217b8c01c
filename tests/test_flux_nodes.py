"""Flux IP-Adapters through the three nodes on the stand-in host's Flux, against the references of
tests/flux_references.py on a tiny diffusers FluxTransformer2DModel with the same weights (tests/flux_twin.py).
All in fp32, compared as relative L2 of the model output (velocity).
"""

import copy

import pytest
import torch
from flux_references import MaskedXLabsProcessor, with_instantx_oracle, with_xlabs_processors, xlabs_to_diffusers
from flux_twin import forward, make_inputs, make_pair, model_patcher, rel_l2, run_diffusers, velocity
from safetensors.torch import save_file
from standin_host import ClipVisionModel, folder_paths, load_pack, pack_module
from synthetic_flux import instantx_state_dict, xlabs_state_dict


HIDDEN, CONTEXT = 32, 24  # the tiny twin: 2 heads x 16, joint attention width 24 (the adapters' token width C)


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def nodes(pack):
    m = pack.NODE_CLASS_MAPPINGS
    return {name: m[name]() for name in ("LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter", "ApplyIPAdapterAdvanced",
                                         "ApplyIPAdapterStyleComposition")}


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ipadapter")
    files = {"xlabs_v1": xlabs_state_dict(tokens=4, doubles=2, hidden=HIDDEN, cross_dim=CONTEXT, seed=3),
             "xlabs_v2": xlabs_state_dict(tokens=16, doubles=2, hidden=HIDDEN, cross_dim=CONTEXT, seed=4)}
    for name, sd in files.items():
        save_file(sd, str(folder / f"{name}.safetensors"))
    files["instantx"] = instantx_state_dict(tokens=8, layers=4, hidden=HIDDEN, cross_dim=CONTEXT, seed=5)
    torch.save(files["instantx"], str(folder / "instantx.bin"))
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    return files


@pytest.fixture(scope="module")
def twin():
    diffusers_model, flux = make_pair(seed=0, double=2, single=2)
    return diffusers_model, flux


def load(nodes, name):
    return nodes["LoadIPAdapter"].load({"xlabs_v1": "xlabs_v1.safetensors", "xlabs_v2": "xlabs_v2.safetensors",
                                        "instantx": "instantx.bin"}[name])[0]


def prompt_from(loaded, features, uncond):
    make_prompt = pack_module("nodes.encode").make_prompt
    return make_prompt(loaded, features, uncond, torch.ones(features.shape[0]))


def ours(nodes, twin, loaded, prompt, weight, cond_or_uncond=(0,), seed=1, **apply):
    _, flux = twin
    patched = nodes["ApplyIPAdapter"].apply(model_patcher(flux), loaded, prompt, weight, 0.0, 1.0, **apply)[0]
    inp = make_inputs(seed=seed, batch=len(cond_or_uncond))
    denoised = forward(patched, inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"][0], cond_or_uncond)
    return velocity(inp["x"], denoised, inp["sigma"]), inp


def reference(diffusers_model, inp, **joint_attention_kwargs):
    return run_diffusers(diffusers_model, inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"],
                         joint_attention_kwargs or None)


@pytest.mark.parametrize("variant,tokens", [("xlabs_v1", 4), ("xlabs_v2", 16)])
def test_xlabs_equals_diffusers(nodes, twin, adapter_files, variant, tokens):
    """Batch rows (uncond, cond) as ComfyUI's CFG makes them: each row gets its own tokens, as diffusers' true CFG
    runs the negative image's tokens in its negative pass."""
    loaded = load(nodes, variant)
    cond, uncond = torch.randn(1, 768), torch.randn(1, 768)
    out, inp = ours(nodes, twin, loaded, prompt_from(loaded, cond, uncond), 0.8, cond_or_uncond=(1, 0))
    expected_model = with_xlabs_processors(twin[0], adapter_files[variant], tokens, 0.8)
    embeds = torch.stack([uncond, cond])  # [B, 1 image, 768]: row 0 uncond, row 1 cond
    expected = reference(expected_model, inp, ip_adapter_image_embeds=[embeds])
    base = reference(twin[0], inp)
    assert rel_l2(expected, base) > 1e-2  # the adapter changes the output
    assert rel_l2(out, expected) <= 1e-5


def test_instantx_equals_the_spec_processor(nodes, twin, adapter_files):
    loaded = load(nodes, "instantx")
    features = torch.randn(2, 1152)  # two reference images: their tokens are concatenated
    prompt = prompt_from(loaded, features, None)
    out, inp = ours(nodes, twin, loaded, prompt, 0.7, cond_or_uncond=(0, 0))
    tokens = prompt.cond.flatten(0, 1)[None].expand(2, -1, -1)  # [B, 2*8, C]
    expected = reference(with_instantx_oracle(twin[0], adapter_files["instantx"], 0.7), inp, image_emb=tokens)
    assert rel_l2(expected, reference(twin[0], inp)) > 1e-2
    assert rel_l2(out, expected) <= 1e-5


def test_instantx_uncond_rows_get_no_image_prompt_without_a_negative(nodes, twin, adapter_files):
    """FLUX.1-dev runs without CFG and InstantX defines no negative: with cfg > 1 the uncond rows are the plain model."""
    loaded = load(nodes, "instantx")
    out, inp = ours(nodes, twin, loaded, prompt_from(loaded, torch.randn(1, 1152), None), 0.7, cond_or_uncond=(1, 0))
    base = reference(twin[0], inp)
    assert rel_l2(out[:1], base[:1]) <= 1e-5
    assert rel_l2(out[1:], base[1:]) > 1e-2


@pytest.mark.parametrize("variant", ["xlabs_v1", "instantx"])
def test_weight_zero_is_the_unpatched_model_exactly(nodes, twin, adapter_files, variant):
    loaded = load(nodes, variant)
    prompt = prompt_from(loaded, torch.randn(1, loaded.spec.encoder.width), None)
    _, flux = twin
    model = model_patcher(flux)
    patched = nodes["ApplyIPAdapter"].apply(model, loaded, prompt, 0.0, 0.0, 1.0)[0]
    inp = make_inputs(seed=2, batch=1)
    args = (inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"][0])
    assert torch.equal(forward(patched, *args), forward(model, *args))
    assert "dit" not in patched.model_options["transformer_options"].get("patches_replace", {})


# --- control: masks, timestep range, per-block weights, several images -------------------------------------------


def test_mask_on_the_image_token_grid_equals_a_masked_reference(nodes, twin, adapter_files):
    """The latent is 8x12 (4x6 tokens): the mask is resized to that grid, whatever its own size."""
    loaded = load(nodes, "xlabs_v1")
    cond = torch.randn(1, 768)
    mask = torch.zeros(1, 64, 96)
    mask[:, :32, 48:] = 1.0  # top-right quarter
    out, inp = ours(nodes, twin, loaded, prompt_from(loaded, cond, cond), 0.9, attn_mask=mask)
    model = with_xlabs_processors(twin[0], adapter_files["xlabs_v1"], 4, 0.9)
    token_mask = torch.zeros(1, 4, 6)
    token_mask[:, :2, 3:] = 1.0
    model.set_attn_processor({name: MaskedXLabsProcessor(p, token_mask.reshape(1, 24, 1)) if name.startswith("transformer")
                              else p for name, p in model.attn_processors.items()})
    expected = reference(model, inp, ip_adapter_image_embeds=[cond[None]])
    unmasked = reference(with_xlabs_processors(twin[0], adapter_files["xlabs_v1"], 4, 0.9), inp,
                         ip_adapter_image_embeds=[cond[None]])
    assert rel_l2(expected, unmasked) > 1e-2
    assert rel_l2(out, expected) <= 1e-5


@pytest.mark.parametrize("sigma,active", [(0.95, False), (0.6, True), (0.2, False)])
def test_start_and_end_percent_follow_the_flow_sampling(nodes, twin, adapter_files, sigma, active):
    loaded = load(nodes, "xlabs_v1")
    prompt = prompt_from(loaded, torch.randn(1, 768), torch.randn(1, 768))
    model = model_patcher(twin[1])
    patched = nodes["ApplyIPAdapter"].apply(model, loaded, prompt, 1.0, 0.3, 0.7)[0]
    inp = make_inputs(seed=3, batch=1, sigma=sigma)
    args = (inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"][0])
    sampling = model.get_model_object("model_sampling")
    assert (sampling.percent_to_sigma(0.7) <= sigma <= sampling.percent_to_sigma(0.3)) == active
    assert torch.equal(forward(patched, *args), forward(model, *args)) != active


def test_layer_weights_pick_blocks(nodes, twin, adapter_files):
    """'all = 0, double 1 = 1' patches double block 1 only, and equals the reference with block 0's scale at 0."""
    loaded = load(nodes, "xlabs_v1")
    cond = torch.randn(1, 768)
    _, flux = twin
    patched = nodes["ApplyIPAdapterAdvanced"].apply(model_patcher(flux), loaded, prompt_from(loaded, cond, cond), 0.8,
                                                    0.0, 1.0, layer_weights="all = 0, double 1 = 1")[0]
    assert list(patched.model_options["transformer_options"]["patches_replace"]["dit"]) == [("double_block", 1)]
    inp = make_inputs(seed=1, batch=1)
    out = velocity(inp["x"], forward(patched, inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"][0]),
                   inp["sigma"])
    model = with_xlabs_processors(twin[0], adapter_files["xlabs_v1"], 4, 0.8)
    model.attn_processors["transformer_blocks.0.attn.processor"].scale = [0.0]
    expected = reference(model, inp, ip_adapter_image_embeds=[cond[None]])
    assert rel_l2(out, expected) <= 1e-5


def test_two_apply_nodes_both_act_and_equal_two_adapters_in_diffusers(nodes, twin, adapter_files):
    """XLabs v1 then v2 in a row: diffusers' processor with two adapters sums their image attentions."""
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    v1, v2 = load(nodes, "xlabs_v1"), load(nodes, "xlabs_v2")
    e1, e2 = torch.randn(1, 768), torch.randn(1, 768)
    _, flux = twin
    first = nodes["ApplyIPAdapter"].apply(model_patcher(flux), v1, prompt_from(v1, e1, e1), 0.6, 0.0, 1.0)[0]
    both = nodes["ApplyIPAdapter"].apply(first, v2, prompt_from(v2, e2, e2), 0.9, 0.0, 1.0)[0]
    inp = make_inputs(seed=4, batch=1)
    out = velocity(inp["x"], forward(both, inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"][0]),
                   inp["sigma"])
    model = copy.deepcopy(twin[0])
    c1, c2 = (xlabs_to_diffusers(adapter_files[k]) for k in ("xlabs_v1", "xlabs_v2"))
    procs = {}
    for i, name in enumerate(n for n in model.attn_processors if n.startswith("transformer_blocks")):
        proc = FluxIPAdapterAttnProcessor(HIDDEN, CONTEXT, num_tokens=[4, 16], scale=[0.6, 0.9])
        proc.load_state_dict({f"to_{kv}_ip.{a}.{p}": c["ip_adapter"][f"{i}.to_{kv}_ip.{p}"]
                              for a, c in enumerate((c1, c2)) for kv in ("k", "v") for p in ("weight", "bias")})
        procs[name] = proc
    model.set_attn_processor({**model.attn_processors, **procs})
    projections = []
    for tokens, c in ((4, c1), (16, c2)):
        projection = ImageProjection(image_embed_dim=768, cross_attention_dim=CONTEXT, num_image_text_embeds=tokens)
        projection.load_state_dict({k.replace("proj", "image_embeds"): v for k, v in c["image_proj"].items()})
        projections.append(projection)
    model.encoder_hid_proj = MultiIPAdapterImageProjection(projections)
    expected = reference(model, inp, ip_adapter_image_embeds=[e1[None], e2[None]])
    assert rel_l2(out, expected) <= 1e-5


# --- hooks: nothing replaced, nothing mutated, other patches kept ------------------------------------------------


def test_incoming_model_is_untouched_and_clones_share_the_weights(nodes, twin, adapter_files):
    loaded = load(nodes, "instantx")
    model = model_patcher(twin[1])
    before = copy.deepcopy(model.model_options)
    weights = {k: v.clone() for k, v in twin[1].state_dict().items()}
    patched = nodes["ApplyIPAdapter"].apply(model, loaded, prompt_from(loaded, torch.randn(1, 1152), None), 0.7, 0, 1)[0]
    assert model.model_options == before
    assert all(torch.equal(v, weights[k]) for k, v in twin[1].state_dict().items())
    patches = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(patches) == [("double_block", 0), ("double_block", 1), ("single_block", 0), ("single_block", 1)]
    clone = patched.clone()
    for key, patch in clone.model_options["transformer_options"]["patches_replace"]["dit"].items():
        assert patch is not patches[key] and patch.entry is patches[key].entry  # the shell is copied, the weights not
    assert patches[("double_block", 0)].models() == [loaded.patcher]


def test_a_patch_already_at_a_block_and_an_attention_override_are_kept(nodes, twin, adapter_files):
    """Another pack's dit patch is wrapped (called, its effect kept) and an override already in transformer_options
    is chained (called for the base attention) rather than lost."""
    loaded = load(nodes, "instantx")
    prompt = prompt_from(loaded, torch.randn(1, 1152), None)
    calls = {"patch": 0, "override": 0}

    def other_patch(args, extra):
        calls["patch"] += 1
        out = extra["original_block"](args)
        return dict(out, img=out["img"] * 1.01)

    def other_override(func, *args, **kwargs):
        calls["override"] += 1
        return func(*args, **kwargs)

    model = model_patcher(twin[1])
    model.set_model_patch_replace(other_patch, "dit", "double_block", 1)
    model.model_options["transformer_options"]["optimized_attention_override"] = other_override
    patched = nodes["ApplyIPAdapter"].apply(model, loaded, prompt, 0.7, 0.0, 1.0)[0]
    inp = make_inputs(seed=5, batch=1)
    args = (inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"][0])
    with_both = forward(patched, *args)
    assert calls == {"patch": 1, "override": 4}  # one double block wrapped; the override runs in all 4 blocks
    without_other = nodes["ApplyIPAdapter"].apply(model_patcher(twin[1]), loaded, prompt, 0.7, 0.0, 1.0)[0]
    assert rel_l2(with_both, forward(without_other, *args)) > 1e-4  # the other patch still acts
    assert rel_l2(with_both, forward(model, *args)) > 1e-3  # and so does ours


# --- what is refused ---------------------------------------------------------------------------------------------


def test_flux_adapter_on_an_sd_model_and_the_reverse(nodes, adapter_files):
    from standin_host import loaded_adapter
    from standin_host import model_patcher as sd_model

    loaded = load(nodes, "xlabs_v1")
    prompt = prompt_from(loaded, torch.randn(1, 768), torch.randn(1, 768))
    with pytest.raises(ValueError, match=r"Apply IP-Adapter: 'xlabs_v1.safetensors' is a Flux.1 XLabs IP-Adapter "
                                         r"\(4 tokens, needs ViT-L/14\), but the model is an SD1.5/SDXL UNet"):
        nodes["ApplyIPAdapter"].apply(sd_model("sd15"), loaded, prompt, 1.0, 0.0, 1.0)
    sd = loaded_adapter("sd15_base")
    sd_prompt = pack_module("nodes.encode").make_prompt(sd, torch.randn(1, 1024), torch.zeros(1, 1024), torch.ones(1))
    with pytest.raises(ValueError, match=r"the model is a Flux, not an SD1.5 or SDXL UNet, and this is an SD1.5/SDXL "
                                         r"IP-Adapter. For Flux.1 load a Flux IP-Adapter"):
        nodes["ApplyIPAdapter"].apply(model_patcher(make_pair(double=2, single=2)[1]), sd, sd_prompt, 1.0, 0.0, 1.0)


@pytest.mark.parametrize("kind", ["Flux.2", "Chroma"])
def test_flux2_and_chroma_are_refused_by_name(nodes, adapter_files, kind):
    import dataclasses

    flux = make_pair(double=2, single=2)[1]
    if kind == "Flux.2":
        flux.params = dataclasses.replace(flux.params, global_modulation=True)
    else:
        flux.__class__ = type("Chroma", (type(flux),), {})
    loaded = load(nodes, "xlabs_v1")
    with pytest.raises(ValueError, match=rf"the model is {kind} .*, which Flux.1 IP-Adapters were not trained for: "
                                         r"'xlabs_v1.safetensors' needs a Flux.1 model"):
        nodes["ApplyIPAdapter"].apply(model_patcher(flux), loaded, prompt_from(loaded, torch.randn(1, 768), None),
                                      1.0, 0.0, 1.0)


def test_another_dit_is_refused(nodes, adapter_files):
    class MMDiT(torch.nn.Module):
        pass

    model = model_patcher(make_pair(double=2, single=2)[1])
    model.model.diffusion_model = MMDiT()
    loaded = load(nodes, "instantx")
    with pytest.raises(ValueError, match=r"but the model is a MMDiT, not Flux.1"):
        nodes["ApplyIPAdapter"].apply(model, loaded, prompt_from(loaded, torch.randn(1, 1152), None), 1.0, 0.0, 1.0)


def test_adapter_deeper_than_the_model_is_refused_naming_the_released_counts(nodes, adapter_files):
    loaded = load(nodes, "xlabs_v1")  # 2 double blocks
    model = model_patcher(make_pair(double=3, single=1)[1])
    with pytest.raises(ValueError, match=r"the model does not fit it: it has 2 block layers, the model has 3 double "
                                         r"blocks. The released adapter is for FLUX.1 \(19 double blocks, 3072 wide\)"):
        nodes["ApplyIPAdapter"].apply(model, loaded, prompt_from(loaded, torch.randn(1, 768), None), 1.0, 0.0, 1.0)


def test_wrong_encoder_names_the_file_to_load(nodes, adapter_files):
    loaded = load(nodes, "xlabs_v1")
    with pytest.raises(ValueError, match=r"Encode Image Prompt: the connected CLIP vision model gives image_embeds of "
                                         r"shape \[1, 1024\], but the Flux.1 XLabs IP-Adapter .* expects \[batch, 768\]. "
                                         r"Load the CLIP vision model clip-vit-large-patch14.safetensors"):
        nodes["EncodeImagePrompt"].encode(loaded, ClipVisionModel("vit-h"), torch.rand(1, 64, 64, 3))


def test_xlabs_negative_is_a_black_image_through_clip(nodes, adapter_files):
    loaded = load(nodes, "xlabs_v1")
    clip = ClipVisionModel("vit-l", seed=2)
    prompt = nodes["EncodeImagePrompt"].encode(loaded, clip, torch.rand(1, 64, 64, 3))[0]
    black = clip.encode_image(torch.zeros(1, 224, 224, 3))["image_embeds"]
    assert torch.allclose(prompt.uncond_features, black)
    assert prompt.uncond is not None and not torch.allclose(prompt.uncond, prompt.cond)


@pytest.mark.parametrize("inputs,message", [
    (dict(weight_type="style transfer"), r"weight_type 'style transfer' is defined on SD1.5/SDXL UNet layers"),
    (dict(kv_scaling="K+V"), r"kv_scaling 'K\+V' is for SD1.5/SDXL"),
    (dict(per_frame=True), r"per_frame and frame_weights are for SD1.5/SDXL batches"),
    (dict(layer_weights="double 9 = 1"), r"layer_weights entry 1 'double 9 = 1': this adapter patches double 0 to 1"),
])
def test_advanced_inputs_that_do_not_apply_to_flux(nodes, twin, adapter_files, inputs, message):
    loaded = load(nodes, "xlabs_v1")
    model = model_patcher(twin[1])
    before = copy.deepcopy(model.model_options)
    with pytest.raises(ValueError, match=rf"Apply IP-Adapter \(advanced\): {message}"):
        nodes["ApplyIPAdapterAdvanced"].apply(model, loaded, prompt_from(loaded, torch.randn(1, 768), None), 1.0,
                                              0.0, 1.0, **inputs)
    assert model.model_options == before


def test_style_and_composition_node_refuses_flux(nodes, twin, adapter_files):
    loaded = load(nodes, "xlabs_v1")
    prompt = prompt_from(loaded, torch.randn(1, 768), None)
    with pytest.raises(ValueError, match=r"InstantStyle's style and composition blocks are SD1.5/SDXL UNet layers"):
        nodes["ApplyIPAdapterStyleComposition"].apply(model_patcher(twin[1]), loaded, prompt, prompt, 1.0, 1.0, 0.0, 1.0)


def test_instantx_negative_image_gives_the_uncond_rows_its_tokens(nodes, twin, adapter_files):
    loaded = load(nodes, "instantx")
    cond, negative = torch.randn(1, 1152), torch.randn(1, 1152)
    prompt = prompt_from(loaded, cond, negative)
    out, inp = ours(nodes, twin, loaded, prompt, 0.7, cond_or_uncond=(1, 0))
    tokens = torch.cat([prompt.uncond, prompt.cond])  # rows: uncond, cond
    expected = reference(with_instantx_oracle(twin[0], adapter_files["instantx"], 0.7), inp, image_emb=tokens)
    assert rel_l2(out, expected) <= 1e-5


def test_kv_once_per_prompt_and_sigmas_read_once_per_step(nodes, twin, adapter_files, monkeypatch):
    flux_glue = pack_module("nodes.flux")
    calls = []
    original = flux_glue.image_kv
    monkeypatch.setattr(flux_glue, "image_kv", lambda *a: calls.append(1) or original(*a))

    class CountingTensor(torch.Tensor):
        floats = 0

        def __float__(self):
            CountingTensor.floats += 1
            return super().__float__()

    loaded = load(nodes, "instantx")
    patched = nodes["ApplyIPAdapter"].apply(model_patcher(twin[1]), loaded, prompt_from(loaded, torch.randn(1, 1152), None),
                                            0.7, 0.0, 0.9)[0]
    inp = make_inputs(seed=6, batch=2)
    for step in range(3):
        sigma = torch.tensor([0.8 - 0.2 * step]).as_subclass(CountingTensor)
        forward(patched, inp["x"], sigma, inp["context"], inp["y"], inp["guidance"][0], (1, 0))
    assert len(calls) == 4  # once per block (2 double + 2 single), shared by every step and both CFG halves
    assert CountingTensor.floats == 3  # one host read per step, for all four blocks
