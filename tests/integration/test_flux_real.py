"""Flux IP-Adapters through the pack's nodes in the REAL ComfyUI v0.8.0 Flux (built small with the diffusers twin's
weights, tests/integration/flux_host.py), against the same references as CI (tests/flux_references.py), fp32,
relative L2 of the velocity <= 1e-4; under torch.inference_mode(), as ComfyUI's executor runs."""

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from comfy_host import boot, pack_module  # noqa: E402
from flux_host import forward, make_inputs, make_pair, rel_l2, run_diffusers, velocity  # noqa: E402
from flux_references import MaskedXLabsProcessor, with_instantx_oracle, with_xlabs_processors  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from synthetic_flux import instantx_state_dict, xlabs_state_dict  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def pair():
    with torch.inference_mode():
        return make_pair(seed=0, double=2, single=2)


@pytest.fixture(scope="module")
def nodes():
    _, pack, _ = boot()
    return {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, nodes):
    import folder_paths

    folder = tmp_path_factory.mktemp("ipadapter")
    sds = {"xlabs_v1": xlabs_state_dict(tokens=4, seed=3), "xlabs_v2": xlabs_state_dict(tokens=16, seed=4)}
    for name, sd in sds.items():
        save_file(sd, str(folder / f"{name}.safetensors"))
    sds["instantx"] = instantx_state_dict(tokens=8, layers=4, seed=5)
    torch.save(sds["instantx"], str(folder / "instantx.bin"))
    folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)
    names = {"xlabs_v1": "xlabs_v1.safetensors", "xlabs_v2": "xlabs_v2.safetensors", "instantx": "instantx.bin"}
    loaded = {k: nodes["LoadIPAdapter"].load(v)[0] for k, v in names.items()}
    return sds, loaded


def prompt_from(loaded, features, uncond):
    return pack_module("nodes.encode").make_prompt(loaded, features, uncond, torch.ones(features.shape[0]))


def run(nodes, patcher, loaded, prompt, weight, cond_or_uncond=(0,), seed=1, **apply):
    patched = nodes["ApplyIPAdapter"].apply(patcher, loaded, prompt, weight, 0.0, 1.0, **apply)[0]
    inp = make_inputs(seed=seed, batch=len(cond_or_uncond))
    denoised = forward(patched, inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"][0], cond_or_uncond)
    return velocity(inp["x"], denoised, inp["sigma"]), inp


def reference(model, inp, **kwargs):
    return run_diffusers(model, inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"], kwargs or None)


@pytest.mark.parametrize("variant,tokens", [("xlabs_v1", 4), ("xlabs_v2", 16)])
def test_xlabs_in_comfyui_flux_equals_diffusers(nodes, pair, files, variant, tokens):
    sds, loaded = files
    cond, uncond = torch.randn(1, 768), torch.randn(1, 768)
    out, inp = run(nodes, pair[1], loaded[variant], prompt_from(loaded[variant], cond, uncond), 0.8, (1, 0))
    expected = reference(with_xlabs_processors(pair[0], sds[variant], tokens, 0.8), inp,
                         ip_adapter_image_embeds=[torch.stack([uncond, cond])])
    assert rel_l2(expected, reference(pair[0], inp)) > 1e-2
    assert rel_l2(out, expected) <= TOLERANCE


def test_instantx_in_comfyui_flux_equals_the_spec(nodes, pair, files):
    sds, loaded = files
    prompt = prompt_from(loaded["instantx"], torch.randn(2, 1152), None)
    out, inp = run(nodes, pair[1], loaded["instantx"], prompt, 0.7, (0, 0))
    tokens = prompt.cond.flatten(0, 1)[None].expand(2, -1, -1)
    expected = reference(with_instantx_oracle(pair[0], sds["instantx"], 0.7), inp, image_emb=tokens)
    assert rel_l2(expected, reference(pair[0], inp)) > 1e-2
    assert rel_l2(out, expected) <= TOLERANCE


def test_mask_in_comfyui_flux(nodes, pair, files):
    """The DIFFUSION_MODEL wrapper reads the real latent's size: the mask lands on the 4x6 token grid."""
    sds, loaded = files
    cond = torch.randn(1, 768)
    mask = torch.zeros(1, 64, 96)
    mask[:, :32, 48:] = 1.0
    out, inp = run(nodes, pair[1], loaded["xlabs_v1"], prompt_from(loaded["xlabs_v1"], cond, cond), 0.9, attn_mask=mask)
    model = with_xlabs_processors(pair[0], sds["xlabs_v1"], 4, 0.9)
    token_mask = torch.zeros(1, 4, 6)
    token_mask[:, :2, 3:] = 1.0
    model.set_attn_processor({n: MaskedXLabsProcessor(p, token_mask.reshape(1, 24, 1)) if n.startswith("transformer")
                              else p for n, p in model.attn_processors.items()})
    assert rel_l2(out, reference(model, inp, ip_adapter_image_embeds=[cond[None]])) <= TOLERANCE


@pytest.mark.parametrize("variant", ["xlabs_v1", "instantx"])
def test_weight_zero_is_exact_and_the_model_is_untouched(nodes, pair, files, variant):
    _, loaded = files
    patcher = pair[1]
    before = copy.deepcopy(patcher.model_options)
    prompt = prompt_from(loaded[variant], torch.randn(1, loaded[variant].spec.encoder.width), None)
    zero = nodes["ApplyIPAdapter"].apply(patcher, loaded[variant], prompt, 0.0, 0.0, 1.0)[0]
    inp = make_inputs(seed=2, batch=1)
    args = (inp["x"], inp["sigma"], inp["context"], inp["y"], inp["guidance"][0])
    assert torch.equal(forward(zero, *args), forward(patcher, *args))
    nodes["ApplyIPAdapter"].apply(patcher, loaded[variant], prompt, 1.0, 0.0, 1.0)
    assert patcher.model_options == before


def test_a_flux_adapter_on_an_sd_model_is_refused(nodes, files):
    from comfy_host import build_model

    _, loaded = files
    with pytest.raises(ValueError, match=r"but the model is an SD1.5/SDXL UNet"):
        nodes["ApplyIPAdapter"].apply(build_model("sd15"), loaded["xlabs_v1"],
                                      prompt_from(loaded["xlabs_v1"], torch.randn(1, 768), None), 1.0, 0.0, 1.0)
