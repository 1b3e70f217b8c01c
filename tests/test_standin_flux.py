"""The stand-in host's Flux against diffusers' FluxTransformer2DModel on the same weights, and its hook protocol
(dit replace patches, optimized_attention_override, DIFFUSION_MODEL wrappers) as ComfyUI v0.8.0 runs it.
The same twin runs against the real ComfyUI in tests/integration/test_flux_twin_real.py."""

import math

import pytest
import standin_host  # noqa: F401  (installs the stand-in as `comfy`)
import torch
from flux_twin import forward, make_inputs, make_pair, model_patcher, rel_l2, run_comfy, run_diffusers, velocity

import comfy.ldm.modules.attention
import comfy.patcher_extension as pe

DOUBLE, SINGLE = 2, 2


@pytest.fixture(scope="module")
def pair():
    return make_pair(seed=0, double=DOUBLE, single=SINGLE)


@pytest.fixture(scope="module")
def inputs(pair):
    return make_inputs(seed=1, batch=2, height=8, width=12, model=pair[0])


@torch.no_grad()
def base(pair, inputs):
    return run_comfy(pair[1], **inputs)


@pytest.mark.parametrize("shape", [(2, 8, 12, 7, 0.6, 3.5), (1, 6, 6, 3, 0.05, 1.0), (3, 4, 10, 11, 1.0, 5.0)])
@torch.no_grad()
def test_base_output_equals_diffusers(pair, shape):
    batch, h, w, txt_len, sigma, guidance = shape
    inp = make_inputs(seed=3, batch=batch, height=h, width=w, txt_len=txt_len, sigma=sigma, guidance=guidance,
                      model=pair[0])
    ours, ref = run_comfy(pair[1], **inp), run_diffusers(pair[0], **inp)
    assert ours.shape == ref.shape == inp["x"].shape
    assert rel_l2(ours, ref) <= 1e-5
    assert ref.std() > 0.1  # not a degenerate model


@torch.no_grad()
def test_without_guidance_embedding():
    model, flux = make_pair(seed=5, double=1, single=1, guidance_embeds=False)
    inp = make_inputs(seed=2, model=model)
    inp["guidance"] = None
    assert rel_l2(run_comfy(flux, **inp), run_diffusers(model, **inp)) <= 1e-5


def test_module_names_match_comfyui(pair):
    flux = pair[1]
    names = dict(flux.named_parameters())
    hidden = flux.hidden_size
    assert names["double_blocks.0.img_attn.qkv.weight"].shape == (3 * hidden, hidden)
    assert names["double_blocks.0.img_attn.norm.query_norm.scale"].shape == (hidden // flux.num_heads,)
    assert names["single_blocks.0.linear1.weight"].shape == (3 * hidden + 4 * hidden, hidden)
    assert names["single_blocks.0.linear2.weight"].shape == (hidden, hidden + 4 * hidden)
    assert names["final_layer.adaLN_modulation.1.weight"].shape == (2 * hidden, hidden)
    assert names["img_in.weight"].shape == (hidden, 16)
    for block in flux.double_blocks:
        assert block.img_mod.lin.out_features == 6 * hidden
        assert block.img_attn.norm.key_norm.scale is not None


@torch.no_grad()
def test_dit_replace_patches_calling_original_block_change_nothing(pair, inputs):
    seen = []

    def patch(args, extra):
        to = args["transformer_options"]
        seen.append((to["block_type"], to["block_index"], to["total_blocks"], sorted(args)))
        out = extra["original_block"](args)
        assert out["img"] is args["img"]  # the block updates img in place
        return out

    replace = {("double_block", i): patch for i in range(DOUBLE)}
    replace.update({("single_block", i): patch for i in range(SINGLE)})
    out = run_comfy(pair[1], **inputs, transformer_options={"patches_replace": {"dit": replace}})
    assert torch.equal(out, base(pair, inputs))
    double_keys = sorted(["img", "txt", "vec", "pe", "attn_mask", "transformer_options"])
    single_keys = sorted(["img", "vec", "pe", "attn_mask", "transformer_options"])
    assert seen == ([("double", i, DOUBLE, double_keys) for i in range(DOUBLE)]
                    + [("single", i, SINGLE, single_keys) for i in range(SINGLE)])


@torch.no_grad()
def test_single_block_patch_sees_txt_then_img(pair, inputs):
    lengths = []

    def patch(args, extra):
        lengths.append(args["img"].shape[1])
        assert args["pe"].shape[2] == args["img"].shape[1]
        return extra["original_block"](args)

    run_comfy(pair[1], **inputs, transformer_options={"patches_replace": {"dit": {("single_block", 0): patch}}})
    h, w = inputs["x"].shape[-2:]
    assert lengths == [inputs["context"].shape[1] + (h // 2) * (w // 2)]


@torch.no_grad()
def test_attention_override_calling_func_changes_nothing(pair, inputs):
    calls = []

    def override(func, q, k, v, heads, **kwargs):
        to = kwargs["transformer_options"]
        calls.append((to["block_type"], to["block_index"], tuple(q.shape), heads, kwargs["skip_reshape"],
                      kwargs["_inside_attn_wrapper"]))
        # a nested call from inside the override runs the backend, not the override again
        nested = comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, **kwargs)
        out = func(q, k, v, heads, **kwargs)
        assert torch.equal(nested, out)
        return out

    out = run_comfy(pair[1], **inputs, transformer_options={"optimized_attention_override": override})
    assert torch.equal(out, base(pair, inputs))
    h, w = inputs["x"].shape[-2:]
    length = inputs["context"].shape[1] + (h // 2) * (w // 2)
    heads = pair[1].num_heads
    q_shape = (inputs["x"].shape[0], heads, length, pair[1].hidden_size // heads)
    assert calls == ([("double", i, q_shape, heads, True, True) for i in range(DOUBLE)]
                     + [("single", i, q_shape, heads, True, True) for i in range(SINGLE)])


def test_wrap_attn_keeps_the_plain_signature():
    q, k, v = (torch.randn(2, 5, 8) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.reshape(2, 5, 2, 4).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).reshape(2, 5, 8)
    attn = comfy.ldm.modules.attention.optimized_attention
    assert torch.allclose(attn(q, k, v, 2), ref, atol=1e-6)
    assert torch.allclose(attn(q, k, v, 2, transformer_options={}), ref, atol=1e-6)
    heads_first = attn(q, k, v, 2, skip_output_reshape=True)
    assert heads_first.shape == (2, 2, 5, 4)
    assert torch.allclose(attn(*(t.reshape(2, 5, 2, 4).transpose(1, 2) for t in (q, k, v)), 2, skip_reshape=True), ref,
                          atol=1e-6)
    assert torch.allclose(attn(q, k, v, 2, transformer_options={"optimized_attention_override": lambda f, *a, **kw: 2 * f(*a, **kw)}),
                          2 * ref, atol=1e-6)


@torch.no_grad()
def test_diffusion_model_wrapper_is_called(pair, inputs):
    calls = []

    def wrapper(executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs):
        calls.append(("outer", executor.class_obj is pair[1], tuple(x.shape), ref_latents, control))
        return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)

    def inner(executor, *args, **kwargs):
        calls.append(("inner",))
        return executor(*args, **kwargs) * 2

    options = {}
    pe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "a", wrapper, options)
    pe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "b", inner, options)
    assert pe.get_all_wrappers(pe.WrappersMP.DIFFUSION_MODEL, options) == [wrapper, inner]
    out = run_comfy(pair[1], **inputs, transformer_options=options)
    assert calls == [("outer", True, tuple(inputs["x"].shape), None, None), ("inner",)]
    assert torch.equal(out, 2 * base(pair, inputs))


@torch.no_grad()
def test_patcher_wrappers_reach_the_model_when_sampling(pair, inputs):
    patcher = model_patcher(pair[1])
    assert patcher.get_model_object("diffusion_model") is pair[1]
    sampling = patcher.get_model_object("model_sampling")
    assert sampling.timestep(torch.tensor([0.3])).item() == pytest.approx(0.3)
    assert sampling.percent_to_sigma(0.0) == 1.0 and sampling.percent_to_sigma(1.0) == 0.0
    assert sampling.percent_to_sigma(0.5) == pytest.approx(1 / (1 + math.exp(-1.15)))

    calls = []

    def wrapper(executor, *args, **kwargs):
        calls.append(args[-1]["cond_or_uncond"])
        return executor(*args, **kwargs)

    clone = patcher.clone()
    clone.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test", wrapper)
    assert clone.wrappers == {pe.WrappersMP.DIFFUSION_MODEL: {"test": [wrapper]}}
    assert patcher.wrappers == {} and "wrappers" not in clone.model_options["transformer_options"]
    assert clone.clone().wrappers == clone.wrappers

    x, sigma = inputs["x"], inputs["sigma"]
    denoised = forward(clone, x, sigma, inputs["context"], y=inputs["y"], guidance=inputs["guidance"], cond_or_uncond=(0, 1))
    assert calls == [[0, 1]]
    ref = run_diffusers(pair[0], **inputs)
    assert rel_l2(velocity(x, denoised, sigma), ref) <= 1e-5
    forward(patcher, x, sigma, inputs["context"], y=inputs["y"], guidance=inputs["guidance"])
    assert calls == [[0, 1]]  # the parent has no wrapper
