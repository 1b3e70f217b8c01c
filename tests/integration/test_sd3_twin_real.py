"""The SD3.5-Large twin with the real ComfyUI v0.8.0 MMDiT: base outputs equal diffusers' on the same weights, and
the hooks the stand-in host mirrors (dit replace patches, optimized_attention_override, the q/k/v layouts, the SD3
timestep path) behave as tests/test_standin_sd3.py expects of the stand-in."""

import pytest
import torch

pytest.importorskip("diffusers")

from sd3_host import (  # noqa: E402
    comfy_state_dict,
    forward,
    make_diffusers,
    make_inputs,
    make_pair,
    rel_l2,
    run_comfy,
    run_diffusers,
    unet_config,
    velocity,
)
from sd3_twin import diffusers_to_comfy  # noqa: E402

import sd3_twin  # noqa: E402

BLOCKS = 2
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pair():
    return make_pair(seed=0, blocks=BLOCKS)


@pytest.fixture(scope="module")
def inputs(pair):
    return make_inputs(seed=1, batch=2, height=8, width=12, model=pair[0])


def mmdit_of(pair):
    return pair[1].get_model_object("diffusion_model")


def test_the_model_comfyui_builds(pair):
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.model_base

    assert type(pair[1].model) is comfy.model_base.SD3
    m = mmdit_of(pair)
    assert type(m) is mmdit.OpenAISignatureMMDITWrapper
    assert (m.hidden_size, m.num_heads, len(m.joint_blocks)) == (64 * BLOCKS, BLOCKS, BLOCKS)
    assert m.joint_blocks[-1].context_block.pre_only and not m.joint_blocks[0].context_block.pre_only
    assert not any(b.x_block.x_block_self_attn for b in m.joint_blocks)


@pytest.mark.parametrize("shape", [(2, 8, 12, 7, 0.6), (1, 6, 6, 3, 0.05), (3, 4, 10, 11, 1.0), (1, 32, 32, 5, 0.3)])
def test_base_output_equals_diffusers(pair, shape):
    batch, h, w, txt_len, sigma = shape
    inp = make_inputs(seed=3, batch=batch, height=h, width=w, txt_len=txt_len, sigma=sigma, model=pair[0])
    with torch.inference_mode():
        ours, ref = run_comfy(mmdit_of(pair), **inp), run_diffusers(pair[0], **inp)
    assert ours.shape == ref.shape == inp["x"].shape
    err = rel_l2(ours, ref)
    print(f"real ComfyUI MMDiT vs diffusers, shape {shape}: relative L2 {err:.3g}")
    assert err <= TOLERANCE


def test_apply_model_through_the_patcher_equals_diffusers(pair, inputs):
    """model_base.SD3 hands the MMDiT timestep = model_sampling.timestep(sigma) = sigma * 1000."""
    m = mmdit_of(pair)
    timesteps = []
    hook = m.t_embedder.register_forward_pre_hook(lambda mod, args: timesteps.append(args[0].clone()))
    try:
        with torch.inference_mode():
            denoised = forward(pair[1], inputs["x"], inputs["sigma"], inputs["context"], y=inputs["y"],
                               cond_or_uncond=(0, 1))
            ref = run_diffusers(pair[0], **inputs)
    finally:
        hook.remove()
    err = rel_l2(velocity(inputs["x"], denoised, inputs["sigma"]), ref)
    print(f"real apply_model (denoised -> velocity) vs diffusers: relative L2 {err:.3g}")
    assert err <= TOLERANCE
    assert torch.allclose(timesteps[0], torch.full((2,), 600.0))
    sampling = pair[1].get_model_object("model_sampling")
    assert type(sampling).__mro__[1].__name__ == "ModelSamplingDiscreteFlow"
    assert (sampling.shift, sampling.multiplier) == (3.0, 1000)
    assert sampling.timestep(torch.tensor([0.3])).item() == pytest.approx(300.0)
    assert sampling.percent_to_sigma(0.0) == 1.0 and sampling.percent_to_sigma(0.5) == pytest.approx(0.75)


def test_our_key_conversion_and_config_equal_comfyuis(pair):
    """The stand-in twin's diffusers->ComfyUI conversion gives ComfyUI's names, shapes and values, and ComfyUI's
    detection gives the twin's unet_config."""
    import comfy.model_detection

    ours = diffusers_to_comfy(pair[0].state_dict(), BLOCKS)
    theirs = comfy_state_dict(pair[0])
    real = mmdit_of(pair).state_dict()
    assert set(ours) == set(theirs) == set(real)
    for key in real:
        assert ours[key].shape == real[key].shape, key
        assert torch.equal(ours[key], theirs[key]), key
    detected = comfy.model_detection.detect_unet_config(theirs, "")
    assert detected == sd3_twin.unet_config(pair[0])
    assert unet_config(pair[0])["dtype"] == torch.float32


def test_more_blocks_than_depth_with_our_conversion():
    """num_blocks != depth: our conversion swaps the last block's pre_only adaLN; ComfyUI's keys it on depth - 1
    (dit-families.md §8), so its result differs from diffusers."""
    model = make_diffusers(seed=4, blocks=3, heads=2)
    inp = make_inputs(seed=2, model=model)
    from sd3_host import build_sd3

    ours = build_sd3(model, converter="ours").get_model_object("diffusion_model")
    assert ours.depth == 2 and len(ours.joint_blocks) == 3
    with torch.inference_mode():
        ref = run_diffusers(model, **inp)
        err = rel_l2(run_comfy(ours, **inp), ref)
        theirs = build_sd3(model, converter="comfy").get_model_object("diffusion_model")
        err_comfy = rel_l2(run_comfy(theirs, **inp), ref)
    print(f"3 blocks at depth 2: ours {err:.3g}, ComfyUI's converter {err_comfy:.3g}")
    assert err <= TOLERANCE
    assert err_comfy > 10 * TOLERANCE


def test_dit_replace_patches_calling_original_block_change_nothing(pair, inputs):
    seen = []

    def patch(args, extra):
        shapes = tuple(args["txt"].shape), tuple(args["img"].shape)
        seen.append((sorted(args), sorted(args["transformer_options"]), *shapes))
        out = extra["original_block"](args)
        seen.append((sorted(out), out["txt"] is None))
        return out

    options = {"patches_replace": {"dit": {("double_block", i): patch for i in range(BLOCKS)}}}
    with torch.inference_mode():
        base = run_comfy(mmdit_of(pair), **inputs)
        out = run_comfy(mmdit_of(pair), **inputs, transformer_options=options)
    assert torch.equal(out, base)
    b, _, h, w = inputs["x"].shape
    hidden = mmdit_of(pair).hidden_size
    txt, img = (b, inputs["context"].shape[1], hidden), (b, (h // 2) * (w // 2), hidden)
    keys = sorted(["img", "txt", "vec", "transformer_options"])
    assert seen == [(keys, ["patches_replace"], txt, img), (["img", "txt"], False),
                    (keys, ["patches_replace"], txt, img), (["img", "txt"], True)]  # no block_index in MMDiT


def test_replace_patch_rebuilt_from_the_public_submodules(pair, inputs):
    m = mmdit_of(pair)

    def patch(args, extra):
        block = m.joint_blocks[args["transformer_options"]["i"]]
        (cq, ck, cv), c_mid = block.context_block.pre_attention(args["txt"], args["vec"])
        (xq, xk, xv), x_mid = block.x_block.pre_attention(args["img"], args["vec"])
        heads = block.x_block.attn.num_heads
        q, k, v = (torch.cat(p, dim=1).reshape(p[0].shape[0], -1, heads, 64).transpose(1, 2)
                   for p in ((cq, xq), (ck, xk), (cv, xv)))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        t = cq.shape[1]
        txt = None if block.context_block.pre_only else block.context_block.post_attention(o[:, :t], *c_mid)
        args["transformer_options"]["i"] += 1
        return {"txt": txt, "img": block.x_block.post_attention(o[:, t:], *x_mid)}

    options = {"i": 0, "patches_replace": {"dit": {("double_block", i): patch for i in range(BLOCKS)}}}
    with torch.inference_mode():
        base = run_comfy(m, **inputs)
        out = run_comfy(m, **inputs, transformer_options=options)
    assert options["i"] == BLOCKS
    assert rel_l2(out, base) <= 1e-6


def test_attention_override_calling_func_changes_nothing(pair, inputs):
    import comfy.ldm.modules.attention

    calls = []

    def override(func, q, k, v, heads, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), heads, sorted(kwargs)))
        nested = comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, **kwargs)
        out = func(q, k, v, heads, **kwargs)
        assert torch.equal(nested, out)
        return out

    with torch.inference_mode():
        base = run_comfy(mmdit_of(pair), **inputs)
        out = run_comfy(mmdit_of(pair), **inputs, transformer_options={"optimized_attention_override": override})
    assert torch.equal(out, base)
    b, _, h, w = inputs["x"].shape
    length = inputs["context"].shape[1] + (h // 2) * (w // 2)
    heads = mmdit_of(pair).num_heads
    flat, split = (b, length, heads * 64), (b, length, heads, 64)
    print(f"override receives q {flat}, k {flat}, v {split}, heads={heads}, kwargs {calls[0][-1]}")
    assert calls == [(flat, flat, split, heads, ["_inside_attn_wrapper", "transformer_options"])] * BLOCKS


def test_attention_override_sees_post_norm_q_k_context_first(pair, inputs):
    m = mmdit_of(pair)
    got, seen = [], {}

    def override(func, q, k, v, heads, **kwargs):
        got.append((q.clone(), k.clone(), v.clone()))
        return func(q, k, v, heads, **kwargs)

    def patch(args, extra):
        seen.update(img=args["img"].clone(), txt=args["txt"].clone(), vec=args["vec"])
        return extra["original_block"](args)

    with torch.inference_mode():
        run_comfy(m, **inputs, transformer_options={"optimized_attention_override": override,
                                                     "patches_replace": {"dit": {("double_block", 0): patch}}})
        (xq, xk, xv), _ = m.joint_blocks[0].x_block.pre_attention(seen["img"], seen["vec"])
        (cq, _, _), _ = m.joint_blocks[0].context_block.pre_attention(seen["txt"], seen["vec"])
    q, k, v = got[0]
    t = inputs["context"].shape[1]
    assert torch.equal(q[:, t:], xq) and torch.equal(k[:, t:], xk) and torch.equal(v[:, t:], xv)
    assert torch.equal(q[:, :t], cq)
