"""The InstantX SD3.5-Large IP-Adapter through the three nodes on the stand-in host's MMDiT, against diffusers'
SD3IPAdapterJointAttnProcessor2_0 + IPAdapterTimeImageProjection loaded from the original InstantX keys by
diffusers' own loader, on a tiny SD3Transformer2DModel (SD3.5-Large layout) with the same weights (tests/sd3_twin.py).
fp32, relative L2 of the velocity."""

import copy

import pytest
import torch
from sd3_twin import forward, make_inputs, make_pair, model_patcher, rel_l2, run_diffusers, velocity, with_ip_adapter
from standin_host import folder_paths, load_pack, pack_module
from synthetic_sd3 import sd3_state_dict

HIDDEN, HEAD_DIM = 128, 64  # the tiny twin: 2 heads of 64


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def nodes():
    m = load_pack().NODE_CLASS_MAPPINGS
    return {name: m[name]() for name in ("LoadIPAdapter", "ApplyIPAdapter", "ApplyIPAdapterAdvanced")}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, nodes):
    folder = tmp_path_factory.mktemp("ipadapter")
    sd = sd3_state_dict(tokens=4, blocks=2, hidden=HIDDEN, head_dim=HEAD_DIM, seed=7)
    torch.save(sd, str(folder / "sd35_ip.bin"))
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    return sd, nodes["LoadIPAdapter"].load("sd35_ip.bin")[0]


@pytest.fixture(scope="module")
def twin():
    return make_pair(seed=0, blocks=2)


def prompt_from(loaded, features, uncond=None):
    return pack_module("nodes.encode").make_prompt(loaded, features, uncond, torch.ones(features.shape[0]))


def run(nodes, twin, loaded, prompt, weight, cond_or_uncond=(0,), seed=1, **apply):
    patched = nodes["ApplyIPAdapter"].apply(model_patcher(twin[1]), loaded, prompt, weight, 0.0, 1.0, **apply)[0]
    inp = make_inputs(seed=seed, batch=len(cond_or_uncond))
    denoised = forward(patched, inp["x"], inp["sigma"], inp["context"], inp["y"], cond_or_uncond)
    return velocity(inp["x"], denoised, inp["sigma"]), inp


def reference(model, inp, **kwargs):
    return run_diffusers(model, inp["x"], inp["sigma"], inp["context"], inp["y"], kwargs or None)


def test_equals_diffusers_with_the_zero_negative_in_the_uncond_rows(nodes, twin, adapter):
    """ComfyUI's CFG batch (uncond, cond): the uncond row resamples zeros_like(features), as InstantX and diffusers'
    pipeline do, with the step's own timestep."""
    sd, loaded = adapter
    features = torch.randn(1, 20, 1152)
    out, inp = run(nodes, twin, loaded, prompt_from(loaded, features), 0.6, (1, 0))
    expected = reference(with_ip_adapter(twin[0], sd, 0.6), inp,
                         ip_adapter_image_embeds=torch.cat([torch.zeros_like(features), features]))
    assert rel_l2(expected, reference(twin[0], inp)) > 1e-2
    assert rel_l2(out, expected) <= 1e-5


def test_a_negative_image_replaces_the_zeros(nodes, twin, adapter):
    sd, loaded = adapter
    features, negative = torch.randn(1, 20, 1152), torch.randn(1, 20, 1152)
    out, inp = run(nodes, twin, loaded, prompt_from(loaded, features, negative), 0.5, (1, 0), seed=2)
    expected = reference(with_ip_adapter(twin[0], sd, 0.5), inp, ip_adapter_image_embeds=torch.cat([negative, features]))
    assert rel_l2(out, expected) <= 1e-5


def test_weight_zero_is_exact_and_nothing_is_mutated(nodes, twin, adapter):
    _, loaded = adapter
    model = model_patcher(twin[1])
    before = copy.deepcopy(model.model_options)
    prompt = prompt_from(loaded, torch.randn(1, 20, 1152))
    zero = nodes["ApplyIPAdapter"].apply(model, loaded, prompt, 0.0, 0.0, 1.0)[0]
    inp = make_inputs(seed=3, batch=1)
    args = (inp["x"], inp["sigma"], inp["context"], inp["y"])
    assert torch.equal(forward(zero, *args), forward(model, *args))
    patched = nodes["ApplyIPAdapter"].apply(model, loaded, prompt, 1.0, 0.0, 1.0)[0]
    assert model.model_options == before
    patches = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(patches) == [("double_block", 0), ("double_block", 1)]
    clone = patched.clone()
    for key, patch in clone.model_options["transformer_options"]["patches_replace"]["dit"].items():
        assert patch is not patches[key] and patch.entry is patches[key].entry and patch.block is patches[key].block


def test_the_resampler_runs_once_per_step(nodes, twin, adapter, monkeypatch):
    _, loaded = adapter
    calls = []
    resampler = loaded.adapter.image_proj
    original = resampler.forward
    monkeypatch.setattr(resampler, "forward", lambda *a: calls.append(1) or original(*a))
    patched = nodes["ApplyIPAdapter"].apply(model_patcher(twin[1]), loaded, prompt_from(loaded, torch.randn(1, 20, 1152)),
                                            0.5, 0.0, 1.0)[0]
    inp = make_inputs(seed=4, batch=2)
    for step in range(3):
        forward(patched, inp["x"], torch.tensor([0.9 - 0.2 * step]), inp["context"], inp["y"], (1, 0))
    assert len(calls) == 3  # once per step for both blocks and both CFG halves


def test_layer_weights_name_blocks(nodes, twin, adapter):
    sd, loaded = adapter
    features = torch.randn(1, 20, 1152)
    patched = nodes["ApplyIPAdapterAdvanced"].apply(model_patcher(twin[1]), loaded, prompt_from(loaded, features), 0.6,
                                                    0.0, 1.0, layer_weights="all = 0, block 1 = 1")[0]
    assert list(patched.model_options["transformer_options"]["patches_replace"]["dit"]) == [("double_block", 1)]
    inp = make_inputs(seed=5, batch=1)
    out = velocity(inp["x"], forward(patched, inp["x"], inp["sigma"], inp["context"], inp["y"]), inp["sigma"])
    model = with_ip_adapter(twin[0], sd, 0.6)
    model.attn_processors["transformer_blocks.0.attn.processor"].scale = 0.0
    assert rel_l2(out, reference(model, inp, ip_adapter_image_embeds=features)) <= 1e-5


def test_models_it_does_not_fit_are_refused(nodes, adapter):
    from standin_host import model_patcher as sd_model

    _, loaded = adapter
    prompt = prompt_from(loaded, torch.randn(1, 20, 1152))
    with pytest.raises(ValueError, match=r"is an SD3.5-Large InstantX IP-Adapter .*, but the model is an SD1.5/SDXL "
                                         r"UNet, not SD3.5-Large"):
        nodes["ApplyIPAdapter"].apply(sd_model("sd15"), loaded, prompt, 0.5, 0.0, 1.0)
    deeper = make_pair(seed=1, blocks=3)[1]
    with pytest.raises(ValueError, match=r"the model does not fit it: it has 2 blocks, the model 3.* It needs "
                                         r"SD3.5-Large \(38 blocks, 2432 wide, heads of 64\)"):
        nodes["ApplyIPAdapter"].apply(model_patcher(deeper), loaded, prompt, 0.5, 0.0, 1.0)


def test_sd35_medium_is_refused_naming_the_model_it_needs(nodes, adapter):
    _, loaded = adapter
    medium = make_pair(seed=1, blocks=2)[1]
    medium.joint_blocks[0].x_block.x_block_self_attn = True  # SD3.5-Medium's second image attention
    with pytest.raises(ValueError, match=r"a second image self-attention per block \(SD3.5-Medium\)\. It needs SD3.5-Large"):
        nodes["ApplyIPAdapter"].apply(model_patcher(medium), loaded, prompt_from(loaded, torch.randn(1, 20, 1152)),
                                      0.5, 0.0, 1.0)


def test_an_fp16_file_runs_in_an_fp32_model(nodes, twin, adapter, tmp_path):
    sd, _ = adapter
    half = {part: {k: v.half() for k, v in tensors.items()} for part, tensors in sd.items()}
    torch.save(half, str(tmp_path / "sd35_ip_fp16.bin"))
    folder_paths.add_model_folder_path("ipadapter", str(tmp_path))
    loaded = nodes["LoadIPAdapter"].load("sd35_ip_fp16.bin")[0]
    assert loaded.adapter.ip_adapter["0"].to_k_ip.weight.dtype == torch.float16  # kept as in the file
    features = torch.randn(1, 20, 1152)
    out, inp = run(nodes, twin, loaded, prompt_from(loaded, features), 0.6, (0,), seed=6)
    expected = reference(with_ip_adapter(twin[0], sd, 0.6), inp, ip_adapter_image_embeds=features)
    assert rel_l2(out, expected) <= 5e-3  # the fp16 rounding of the adapter's weights


def test_encode_takes_siglip_penultimate_hidden_states(tmp_path, adapter):
    from standin_host import ClipVisionModel

    _, loaded = adapter
    encode = load_pack().NODE_CLASS_MAPPINGS["EncodeImagePrompt"]()
    siglip = ClipVisionModel("siglip-384", seed=2)
    image = torch.rand(1, 300, 200, 3)
    prompt = encode.encode(loaded, siglip, image, crop="squash")[0]
    assert torch.allclose(prompt.features, siglip.encode_image(image, crop=False)["penultimate_hidden_states"])
    assert prompt.uncond_features is None and prompt.cond is None  # zeros and tokens are made while sampling
    with pytest.raises(ValueError, match=r"expects \[batch, 729, 1152\]. Load the CLIP vision model "
                                         r"siglip-so400m-patch14-384.safetensors"):
        encode.encode(loaded, ClipVisionModel("vit-h"), image)


def test_a_patch_already_at_a_block_and_an_attention_override_are_kept(nodes, twin, adapter):
    _, loaded = adapter
    prompt = prompt_from(loaded, torch.randn(1, 20, 1152))
    calls = {"patch": 0, "override": 0}

    def other_patch(args, extra):
        calls["patch"] += 1
        out = extra["original_block"](args)  # the last block: scale channels unevenly (the final LayerNorm would undo
        return dict(out, img=out["img"] * torch.linspace(0.8, 1.2, out["img"].shape[-1]))  # a uniform scale)

    def other_override(func, *args, **kwargs):
        calls["override"] += 1
        return func(*args, **kwargs)

    model = model_patcher(twin[1])
    model.set_model_patch_replace(other_patch, "dit", "double_block", 1)
    model.model_options["transformer_options"]["optimized_attention_override"] = other_override
    patched = nodes["ApplyIPAdapter"].apply(model, loaded, prompt, 0.5, 0.0, 1.0)[0]
    inp = make_inputs(seed=8, batch=1)
    args = (inp["x"], inp["sigma"], inp["context"], inp["y"])
    with_both = forward(patched, *args)
    assert calls == {"patch": 1, "override": 2}
    alone = nodes["ApplyIPAdapter"].apply(model_patcher(twin[1]), loaded, prompt, 0.5, 0.0, 1.0)[0]
    assert rel_l2(with_both, forward(alone, *args)) > 1e-4
    assert rel_l2(with_both, forward(model, *args)) > 1e-3
