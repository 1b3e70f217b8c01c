"""The stand-in host's MMDiT (SD3.5-Large layout) against diffusers' SD3Transformer2DModel on the same weights, and
its hook protocol (dit replace patches, optimized_attention_override, the SD3 sampling path) as ComfyUI v0.8.0
runs it. The same twin runs against the real ComfyUI in tests/integration/test_sd3_twin_real.py."""

import pytest
import standin_host  # noqa: F401  (installs the stand-in as `comfy`)
import torch
from sd3_twin import (
    forward,
    make_inputs,
    make_pair,
    model_patcher,
    rel_l2,
    run_comfy,
    run_diffusers,
    velocity,
)

import comfy.ldm.modules.attention
import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
import comfy.patcher_extension as pe

BLOCKS = 2
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def pair():
    return make_pair(seed=0, blocks=BLOCKS)


@pytest.fixture(scope="module")
def inputs(pair):
    return make_inputs(seed=1, batch=2, height=8, width=12, model=pair[0])


@torch.no_grad()
def base(pair, inputs):
    return run_comfy(pair[1], **inputs)


@pytest.mark.parametrize("shape", [(2, 8, 12, 7, 0.6), (1, 6, 6, 3, 0.05), (3, 4, 10, 11, 1.0), (1, 32, 32, 5, 0.3)])
@torch.no_grad()
def test_base_output_equals_diffusers(pair, shape):
    batch, h, w, txt_len, sigma = shape
    inp = make_inputs(seed=3, batch=batch, height=h, width=w, txt_len=txt_len, sigma=sigma, model=pair[0])
    ours, ref = run_comfy(pair[1], **inp), run_diffusers(pair[0], **inp)
    assert ours.shape == ref.shape == inp["x"].shape
    assert rel_l2(ours, ref) <= 1e-5
    assert ref.std() > 0.1  # not a degenerate model


@torch.no_grad()
def test_more_blocks_than_depth():
    """num_blocks != depth (3 joint blocks of width 2 x 64): the pre_only block is the last block, not depth - 1."""
    model, standin = make_pair(seed=4, blocks=3, heads=2)
    assert standin.depth == 2 and len(standin.joint_blocks) == 3 and standin.joint_blocks[2].context_block.pre_only
    inp = make_inputs(seed=2, model=model)
    assert rel_l2(run_comfy(standin, **inp), run_diffusers(model, **inp)) <= 1e-5


def test_module_names_match_comfyui(pair):
    m = pair[1]
    hidden, heads = m.hidden_size, m.num_heads
    assert (hidden, heads, m.depth) == (64 * BLOCKS, BLOCKS, BLOCKS)
    names = dict(m.named_parameters())
    assert names["x_embedder.proj.weight"].shape == (hidden, 4, 2, 2)
    assert m.pos_embed.shape == (1, 16 * 16, hidden) and "pos_embed" in m.state_dict()
    assert names["t_embedder.mlp.0.weight"].shape == (hidden, 256)
    assert names["y_embedder.mlp.0.weight"].shape == (hidden, 16)
    assert names["context_embedder.weight"].shape == (hidden, 16)
    assert names["final_layer.adaLN_modulation.1.weight"].shape == (2 * hidden, hidden)
    assert names["final_layer.linear.weight"].shape == (2 * 2 * 4, hidden)
    for i, block in enumerate(m.joint_blocks):
        last = i == BLOCKS - 1
        for name, stream in (("context_block", block.context_block), ("x_block", block.x_block)):
            assert isinstance(stream, mmdit.DismantledBlock)
            pre_only = last and name == "context_block"
            assert stream.pre_only == pre_only
            assert stream.attn.num_heads == heads
            assert names[f"joint_blocks.{i}.{name}.attn.qkv.weight"].shape == (3 * hidden, hidden)
            assert names[f"joint_blocks.{i}.{name}.attn.ln_q.weight"].shape == (64,)
            assert names[f"joint_blocks.{i}.{name}.attn.ln_k.weight"].shape == (64,)
            assert stream.attn.ln_q.eps == 1e-6
            mods = 2 if pre_only else 6
            assert names[f"joint_blocks.{i}.{name}.adaLN_modulation.1.weight"].shape == (mods * hidden, hidden)
            assert hasattr(stream.attn, "proj") != pre_only
            assert hasattr(stream, "mlp") != pre_only and hasattr(stream, "norm2") != pre_only
            assert stream.x_block_self_attn is False


def test_not_sd35_large_layouts_are_refused():
    for flags in ({"x_block_self_attn_layers": [0]}, {"rmsnorm": True}, {"context_processor_layers": 2},
                  {"qk_norm": "ln"}):
        with pytest.raises(NotImplementedError):
            mmdit.MMDiT(depth=1, in_channels=4, num_patches=16, pos_embed_max_size=4, **flags)


@torch.no_grad()
def test_pre_attention_layouts(pair, inputs):
    block = pair[1].joint_blocks[0]
    x = torch.randn(2, 5, pair[1].hidden_size)
    c = torch.randn(2, pair[1].hidden_size)
    (q, k, v), intermediates = block.x_block.pre_attention(x, c)
    heads, d = pair[1].num_heads, 64
    assert q.shape == k.shape == (2, 5, heads * d) and v.shape == (2, 5, heads, d) and len(intermediates) == 5
    shift, scale = block.x_block.adaLN_modulation(c).chunk(6, dim=1)[:2]
    raw = block.x_block.attn.qkv(mmdit.modulate(block.x_block.norm1(x), shift, scale)).reshape(2, 5, 3, heads, d)
    assert torch.allclose(q, block.x_block.attn.ln_q(raw[:, :, 0]).reshape(2, 5, -1))
    assert torch.allclose(k, block.x_block.attn.ln_k(raw[:, :, 1]).reshape(2, 5, -1))
    assert torch.equal(v, raw[:, :, 2])
    qkv, none = pair[1].joint_blocks[-1].context_block.pre_attention(x, c)
    assert none is None and qkv[2].shape == (2, 5, heads, d)


@torch.no_grad()
def test_dit_replace_patches_calling_original_block_change_nothing(pair, inputs):
    seen = []

    def patch(args, extra):
        shapes = tuple(args["txt"].shape), tuple(args["img"].shape)
        seen.append((sorted(args), sorted(args["transformer_options"]), *shapes))
        out = extra["original_block"](args)
        seen.append((sorted(out), out["txt"] is None))
        return out

    options = {"patches_replace": {"dit": {("double_block", i): patch for i in range(BLOCKS)}}}
    out = run_comfy(pair[1], **inputs, transformer_options=options)
    assert torch.equal(out, base(pair, inputs))
    b, _, h, w = inputs["x"].shape
    txt, img = (b, inputs["context"].shape[1], pair[1].hidden_size), (b, (h // 2) * (w // 2), pair[1].hidden_size)
    keys = sorted(["img", "txt", "vec", "transformer_options"])
    assert seen == [(keys, ["patches_replace"], txt, img), (["img", "txt"], False),
                    (keys, ["patches_replace"], txt, img), (["img", "txt"], True)]  # no block_index in MMDiT


@torch.no_grad()
def test_replace_patch_rebuilt_from_the_public_submodules(pair, inputs):
    """What the pack's SD3 patch does: pre_attention of both streams, one joint attention, post_attention."""

    def patch(args, extra):
        block = pair[1].joint_blocks[args["transformer_options"]["i"]]
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
    out = run_comfy(pair[1], **inputs, transformer_options=options)
    assert options["i"] == BLOCKS
    assert rel_l2(out, base(pair, inputs)) <= 1e-6


@torch.no_grad()
def test_attention_override_calling_func_changes_nothing(pair, inputs):
    calls = []

    def override(func, q, k, v, heads, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), heads, sorted(kwargs)))
        nested = comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, **kwargs)
        out = func(q, k, v, heads, **kwargs)
        assert torch.equal(nested, out)
        return out

    out = run_comfy(pair[1], **inputs, transformer_options={"optimized_attention_override": override})
    assert torch.equal(out, base(pair, inputs))
    b, _, h, w = inputs["x"].shape
    length = inputs["context"].shape[1] + (h // 2) * (w // 2)
    heads = pair[1].num_heads
    flat, split = (b, length, heads * 64), (b, length, heads, 64)
    assert calls == [(flat, flat, split, heads, ["_inside_attn_wrapper", "transformer_options"])] * BLOCKS


@torch.no_grad()
def test_attention_override_sees_post_norm_q_k_context_first(pair, inputs):
    """The override's q rows [T:] are the x stream's ln_q(q): recomputed here from the block's submodules."""
    m = pair[1]
    got = []

    def override(func, q, k, v, heads, **kwargs):
        got.append((q, k, v))
        return func(q, k, v, heads, **kwargs)

    seen = {}

    def patch(args, extra):
        seen.update(img=args["img"].clone(), txt=args["txt"].clone(), vec=args["vec"])
        return extra["original_block"](args)

    run_comfy(m, **inputs, transformer_options={"optimized_attention_override": override,
                                                 "patches_replace": {"dit": {("double_block", 0): patch}}})
    (xq, xk, xv), _ = m.joint_blocks[0].x_block.pre_attention(seen["img"], seen["vec"])
    (cq, _, _), _ = m.joint_blocks[0].context_block.pre_attention(seen["txt"], seen["vec"])
    q, k, v = got[0]
    t = inputs["context"].shape[1]
    assert torch.equal(q[:, t:], xq) and torch.equal(k[:, t:], xk) and torch.equal(v[:, t:], xv)
    assert torch.equal(q[:, :t], cq)


@torch.no_grad()
def test_control_output_is_added_after_each_block(pair, inputs):
    b, _, h, w = inputs["x"].shape
    add = torch.randn(b, (h // 2) * (w // 2), pair[1].hidden_size)
    seen = {}

    def patch0(args, extra):
        out = extra["original_block"](args)
        seen["out0"] = out["img"].clone()
        return out

    def patch1(args, extra):
        seen["in1"] = args["img"].clone()
        return extra["original_block"](args)

    options = {"patches_replace": {"dit": {("double_block", 0): patch0, ("double_block", 1): patch1}}}
    run_comfy(pair[1], **inputs, transformer_options=options, control={"output": [add]})
    assert torch.allclose(seen["in1"], seen["out0"] + add)


@torch.no_grad()
def test_sampling_path_through_the_patcher(pair, inputs):
    patcher = model_patcher(pair[1])
    assert patcher.get_model_object("diffusion_model") is pair[1]
    sampling = patcher.get_model_object("model_sampling")
    assert (sampling.shift, sampling.multiplier) == (3.0, 1000)
    assert sampling.timestep(torch.tensor([0.3])).item() == pytest.approx(300.0)
    assert sampling.sigma(torch.tensor([500.0])).item() == pytest.approx(0.75)
    assert sampling.percent_to_sigma(0.0) == 1.0 and sampling.percent_to_sigma(1.0) == 0.0
    assert sampling.percent_to_sigma(0.5) == pytest.approx(0.75)
    assert sampling.sigma_max.item() == pytest.approx(1.0)

    timesteps, calls = [], []
    hook = pair[1].t_embedder.register_forward_pre_hook(lambda mod, args: timesteps.append(args[0].clone()))

    def wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        calls.append((t.tolist(), transformer_options["cond_or_uncond"], sorted(kwargs)))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    clone = patcher.clone()
    clone.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test", wrapper)
    x, sigma = inputs["x"], inputs["sigma"]
    try:
        denoised = forward(clone, x, sigma, inputs["context"], y=inputs["y"], cond_or_uncond=(0, 1))
    finally:
        hook.remove()
    assert calls == [([pytest.approx(0.6)] * 2, [0, 1], ["y"])]
    assert torch.allclose(timesteps[0], torch.full((2,), 600.0))  # the MMDiT sees sigma * 1000
    assert rel_l2(velocity(x, denoised, sigma), run_diffusers(pair[0], **inputs)) <= 1e-5
