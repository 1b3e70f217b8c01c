"""The FLUX.1 twin with the real ComfyUI v0.8.0 Flux: base outputs equal diffusers' on the same weights, and the
hooks the stand-in host mirrors (dit replace patches, optimized_attention_override, DIFFUSION_MODEL wrappers)
behave as tests/test_standin_flux.py expects of the stand-in."""

import pytest
import torch

pytest.importorskip("diffusers")

from flux_host import (  # noqa: E402
    comfy_state_dict,
    forward,
    make_inputs,
    make_pair,
    rel_l2,
    run_comfy,
    run_diffusers,
    velocity,
)
from flux_twin import diffusers_to_comfy  # noqa: E402

DOUBLE, SINGLE = 2, 2
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pair():
    return make_pair(seed=0, double=DOUBLE, single=SINGLE)


@pytest.fixture(scope="module")
def inputs(pair):
    return make_inputs(seed=1, batch=2, height=8, width=12, model=pair[0])


def flux_of(pair):
    return pair[1].get_model_object("diffusion_model")


@pytest.mark.parametrize("shape", [(2, 8, 12, 7, 0.6, 3.5), (1, 6, 6, 3, 0.05, 1.0), (3, 4, 10, 11, 1.0, 5.0)])
def test_base_output_equals_diffusers(pair, shape):
    batch, h, w, txt_len, sigma, guidance = shape
    inp = make_inputs(seed=3, batch=batch, height=h, width=w, txt_len=txt_len, sigma=sigma, guidance=guidance,
                      model=pair[0])
    with torch.inference_mode():
        ours, ref = run_comfy(flux_of(pair), **inp), run_diffusers(pair[0], **inp)
    assert ours.shape == ref.shape == inp["x"].shape
    err = rel_l2(ours, ref)
    print(f"real ComfyUI Flux vs diffusers, shape {shape}: relative L2 {err:.3g}")
    assert err <= TOLERANCE


def test_apply_model_through_the_patcher_equals_diffusers(pair, inputs):
    with torch.inference_mode():
        denoised = forward(pair[1], inputs["x"], inputs["sigma"], inputs["context"], y=inputs["y"],
                           guidance=inputs["guidance"], cond_or_uncond=(0, 1))
        ref = run_diffusers(pair[0], **inputs)
    assert rel_l2(velocity(inputs["x"], denoised, inputs["sigma"]), ref) <= TOLERANCE
    sampling = pair[1].get_model_object("model_sampling")
    assert sampling.percent_to_sigma(0.0) == 1.0 and sampling.shift == pytest.approx(1.15)


def test_our_key_conversion_equals_comfyuis(pair):
    """The stand-in twin's diffusers->ComfyUI conversion gives ComfyUI's names, shapes and values."""
    ours = diffusers_to_comfy(pair[0].state_dict(), DOUBLE, SINGLE)
    theirs = comfy_state_dict(pair[0])
    real = flux_of(pair).state_dict()
    assert set(ours) == set(theirs) == set(real)
    for key in real:
        assert ours[key].shape == real[key].shape, key
        assert torch.equal(ours[key], theirs[key]), key


def sets_block_info():
    """ComfyUI sets block_type / block_index / total_blocks in Flux's transformer_options since v0.3.76 (#10841)."""
    import comfyui_version

    return tuple(int(p) for p in comfyui_version.__version__.split(".")[:3]) >= (0, 3, 76)


def labels(kind, index, total):
    return (kind, index, total) if sets_block_info() else (None, None, None)


def test_dit_replace_patches_calling_original_block_change_nothing(pair, inputs):
    seen = []

    def patch(args, extra):
        to = args["transformer_options"]
        seen.append((to.get("block_type"), to.get("block_index"), to.get("total_blocks"), sorted(args)))
        out = extra["original_block"](args)
        if sets_block_info():  # v0.8.0's block updates img in place (v0.3.64's does not)
            assert out["img"] is args["img"]
        return out

    replace = {("double_block", i): patch for i in range(DOUBLE)}
    replace.update({("single_block", i): patch for i in range(SINGLE)})
    with torch.inference_mode():
        base = run_comfy(flux_of(pair), **inputs)
        out = run_comfy(flux_of(pair), **inputs, transformer_options={"patches_replace": {"dit": replace}})
    assert torch.equal(out, base)
    double_keys = sorted(["img", "txt", "vec", "pe", "attn_mask", "transformer_options"])
    single_keys = sorted(["img", "vec", "pe", "attn_mask", "transformer_options"])
    assert seen == ([(*labels("double", i, DOUBLE), double_keys) for i in range(DOUBLE)]
                    + [(*labels("single", i, SINGLE), single_keys) for i in range(SINGLE)])


def test_attention_override_calling_func_changes_nothing(pair, inputs):
    import comfy.ldm.modules.attention

    calls = []

    def override(func, q, k, v, heads, **kwargs):
        to = kwargs["transformer_options"]
        calls.append((to.get("block_type"), to.get("block_index"), tuple(q.shape), heads, kwargs["skip_reshape"],
                      kwargs["_inside_attn_wrapper"]))
        nested = comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, **kwargs)
        out = func(q, k, v, heads, **kwargs)
        assert torch.equal(nested, out)
        return out

    with torch.inference_mode():
        base = run_comfy(flux_of(pair), **inputs)
        out = run_comfy(flux_of(pair), **inputs, transformer_options={"optimized_attention_override": override})
    assert torch.equal(out, base)
    h, w = inputs["x"].shape[-2:]
    length = inputs["context"].shape[1] + (h // 2) * (w // 2)
    flux = flux_of(pair)
    q_shape = (inputs["x"].shape[0], flux.num_heads, length, flux.hidden_size // flux.num_heads)
    assert calls == ([(*labels("double", i, 0)[:2], q_shape, flux.num_heads, True, True) for i in range(DOUBLE)]
                     + [(*labels("single", i, 0)[:2], q_shape, flux.num_heads, True, True) for i in range(SINGLE)])


def test_patcher_diffusion_model_wrapper_is_called_when_sampling(pair, inputs):
    import comfy.patcher_extension as pe

    calls = []

    def wrapper(executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs):
        calls.append((executor.class_obj is flux_of(pair), transformer_options["cond_or_uncond"]))
        return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs) * 2

    clone = pair[1].clone()
    clone.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test", wrapper)
    assert clone.wrappers == {pe.WrappersMP.DIFFUSION_MODEL: {"test": [wrapper]}}
    assert "wrappers" not in clone.model_options["transformer_options"]
    assert pair[1].wrappers.get(pe.WrappersMP.DIFFUSION_MODEL, {}) == {}
    x, sigma = inputs["x"], inputs["sigma"]
    with torch.inference_mode():
        denoised = forward(clone, x, sigma, inputs["context"], y=inputs["y"], guidance=inputs["guidance"])
        ref = run_diffusers(pair[0], **inputs)
    assert calls == [(True, [0])]
    assert rel_l2(velocity(x, denoised, sigma), 2 * ref) <= TOLERANCE
