"""The InstantX SD3.5-Large IP-Adapter through the pack's nodes in the REAL ComfyUI v0.8.0 MMDiT (built small with the
diffusers twin's weights, tests/integration/sd3_host.py), against diffusers' own SD3 IP-Adapter on the same weights,
fp32, relative L2 of the velocity <= 1e-4, under torch.inference_mode()."""

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from comfy_host import boot, pack_module  # noqa: E402
from sd3_host import make_pair  # noqa: E402
from sd3_twin import forward, make_inputs, rel_l2, run_diffusers, velocity, with_ip_adapter  # noqa: E402
from synthetic_sd3 import sd3_state_dict  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def pair():
    with torch.inference_mode():
        return make_pair(seed=0, blocks=2)


@pytest.fixture(scope="module")
def nodes():
    _, pack, _ = boot()
    return {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, nodes):
    import folder_paths

    folder = tmp_path_factory.mktemp("ipadapter")
    sd = sd3_state_dict(tokens=4, blocks=2, hidden=128, head_dim=64, seed=7)
    torch.save(sd, str(folder / "sd35_ip.bin"))
    folder_paths.add_model_folder_path("ipadapter", str(folder), is_default=True)
    return sd, nodes["LoadIPAdapter"].load("sd35_ip.bin")[0]


def prompt_from(loaded, features, uncond=None):
    return pack_module("nodes.encode").make_prompt(loaded, features, uncond, torch.ones(features.shape[0]))


@pytest.mark.parametrize("negative", [False, True])
def test_sd35_in_comfyui_mmdit_equals_diffusers(nodes, pair, adapter, negative):
    sd, loaded = adapter
    features = torch.randn(1, 20, 1152)
    uncond = torch.randn(1, 20, 1152) if negative else None
    patched = nodes["ApplyIPAdapter"].apply(pair[1], loaded, prompt_from(loaded, features, uncond), 0.6, 0.0, 1.0)[0]
    inp = make_inputs(seed=1, batch=2, model=pair[0])
    out = velocity(inp["x"], forward(patched, inp["x"], inp["sigma"], inp["context"], inp["y"], (1, 0)), inp["sigma"])
    embeds = torch.cat([uncond if negative else torch.zeros_like(features), features])
    expected = run_diffusers(with_ip_adapter(pair[0], sd, 0.6), inp["x"], inp["sigma"], inp["context"], inp["y"],
                             {"ip_adapter_image_embeds": embeds})
    base = run_diffusers(pair[0], inp["x"], inp["sigma"], inp["context"], inp["y"])
    assert rel_l2(expected, base) > 1e-2
    assert rel_l2(out, expected) <= TOLERANCE


def test_weight_zero_is_exact_and_the_model_is_untouched(nodes, pair, adapter):
    _, loaded = adapter
    patcher = pair[1]
    before = copy.deepcopy(patcher.model_options)
    prompt = prompt_from(loaded, torch.randn(1, 20, 1152))
    zero = nodes["ApplyIPAdapter"].apply(patcher, loaded, prompt, 0.0, 0.0, 1.0)[0]
    inp = make_inputs(seed=2, batch=1, model=pair[0])
    args = (inp["x"], inp["sigma"], inp["context"], inp["y"])
    assert torch.equal(forward(zero, *args), forward(patcher, *args))
    nodes["ApplyIPAdapter"].apply(patcher, loaded, prompt, 1.0, 0.0, 1.0)
    assert patcher.model_options == before


def test_an_sd35_adapter_on_a_flux_model_is_refused(nodes, adapter):
    from flux_host import make_pair as flux_pair

    _, loaded = adapter
    with pytest.raises(ValueError, match=r"but the model is a Flux, not SD3.5-Large"):
        nodes["ApplyIPAdapter"].apply(flux_pair(seed=0)[1], loaded, prompt_from(loaded, torch.randn(1, 20, 1152)),
                                      0.5, 0.0, 1.0)
