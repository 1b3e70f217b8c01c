"""Fine control: schedules, layer weights, masks, several images, per-frame prompts, K/V scaling, prompt files,
content subtraction, tiles. Expected numbers are computed here by hand, not by the code under test."""

import math
import os
import shutil

import pytest
import torch
from standin_host import ClipVisionModel, folder_paths, forward, load_pack, loaded_adapter, model_patcher, pack_module

import ipadapter_core as core
from ipadapter_core.combine import combine_features
from ipadapter_core.masks import token_grid
from ipadapter_core.schedules import LayerWeightsError, apply_layer_weights, schedule

CONTEXT = {"sd15": 768, "sdxl": 2048}
# the SpatialTransformers of each family in execution order, written out by block (reference peers.md §1.4)
ORDER = {"sd15": [("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0),
                  ("output", 3), ("output", 4), ("output", 5), ("output", 6), ("output", 7), ("output", 8),
                  ("output", 9), ("output", 10), ("output", 11)],
         "sdxl": [("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0), ("output", 0), ("output", 1),
                  ("output", 2), ("output", 3), ("output", 4), ("output", 5)]}
# multipliers per transformer, as peers.md §1.5 tabulates them (3 decimals)
TABLES = {
    ("ease in", "sd15"): [1.000, .941, .881, .822, .762, .703, .644, .584, .525, .466, .406, .347, .287, .228, .169, .109],
    ("ease in", "sdxl"): [1.000, .914, .827, .741, .655, .568, .482, .395, .309, .223, .136],
    ("ease out", "sdxl"): [.050, .136, .223, .309, .395, .482, .568, .655, .741, .827, .914],
    ("ease in-out", "sd15"): [.050, .169, .287, .406, .525, .644, .762, .881, 1.000, .881, .762, .644, .525, .406, .287, .169],
    ("ease in-out", "sdxl"): [.050, .223, .395, .568, .741, .914, .914, .741, .568, .395, .223],
    ("reverse in-out", "sdxl"): [1.000, .827, .655, .482, .309, .136, .136, .309, .482, .655, .827],
}
STYLE = {"sd15": {("input", 1), ("input", 2), ("input", 4), ("input", 5), ("output", 5), ("output", 6), ("output", 7),
                  ("output", 8), ("output", 9), ("output", 10), ("output", 11)},
         "sdxl": {("output", 1)}}
COMPOSITION = {"sd15": {("input", 7): 0.25, ("input", 8): 1.0}, "sdxl": {("input", 8): 1.0}}


def by_block(weights, family):
    """Per-layer weights -> {(block, id): set of values over its transformer blocks}."""
    out = {}
    for site, w in zip(core.LAYERS[family], weights.weights):
        out.setdefault((site.block_name, site.block_id), set()).add(round(w, 6))
    return out


@pytest.mark.parametrize("weight_type, family", list(TABLES))
def test_curve_schedules_match_the_tables(weight_type, family):
    blocks = by_block(schedule(weight_type, family, 2.0), family)
    for block, expected in zip(ORDER[family], TABLES[(weight_type, family)]):
        (value,) = blocks[block]  # every transformer block inside one SpatialTransformer shares the weight
        assert abs(value - 2.0 * expected) < 2e-3, (block, value)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_block_schedules(family):
    w, wc, b = 0.8, 0.6, 1.5
    style, comp = STYLE[family], COMPOSITION[family]
    expected = {
        "weak input": lambda blk: w * (0.2 if blk[0] == "input" else 1),
        "weak output": lambda blk: w * (0.2 if blk[0] == "output" else 1),
        "weak middle": lambda blk: w * (0.2 if blk[0] == "middle" else 1),
        "strong middle": lambda blk: w * (1 if blk[0] == "middle" else 0.2),
        "style transfer": lambda blk: w if blk in style else 0,
        "composition": lambda blk: w * comp.get(blk, 0),
        "strong style transfer": lambda blk: 0 if blk in comp else w,
        "style and composition": lambda blk: wc * comp[blk] if blk in comp else (w if blk in style else 0),
        "style transfer precise": lambda blk: b * comp[blk] if blk in comp else (w if blk in style else 0),
        "composition precise": lambda blk: w * comp[blk] if blk in comp else (
            b if blk in style else 0.1 * b),
    }
    for weight_type, rule in expected.items():
        weights = schedule(weight_type, family, w, composition_weight=wc, boost=b)
        blocks = by_block(weights, family)
        for block in ORDER[family]:
            assert blocks[block] == {round(rule(block), 6)}, (weight_type, block)
        swapped = {(s.block_name, s.block_id) for s in core.LAYERS[family] if s.index in weights.swapped}
        if weight_type == "style transfer precise":
            assert swapped == set(comp)  # the layout layers push away from the image's layout
        elif weight_type == "composition precise":
            assert swapped == set(ORDER[family]) - set(comp)
        else:
            assert swapped == set()


def test_layer_weights_text():
    base = schedule("linear", "sdxl", 0.5)
    custom = apply_layer_weights("all = 0, output 1 = 2\ninput 8.3 = 1; middle.9: 4", "sdxl", base, 0.5)
    for site, w in zip(core.LAYERS["sdxl"], custom.weights):
        key = (site.block_name, site.block_id, site.transformer_index)
        expected = {("input", 8, 3): 0.5, ("middle", 0, 9): 2.0}.get(key, 1.0 if key[:2] == ("output", 1) else 0.0)
        assert w == expected, key
    assert len(custom.weights) == 70


@pytest.mark.parametrize("text, family, message", [
    ("outpt 1 = 1", "sdxl", "entry 1 'outpt 1 = 1': expected 'BLOCK = VALUE'"),
    ("all = 0, input 3 = 1", "sd15", "entry 2 'input 3 = 1': SD1.5 has no cross-attention in input block 3; it has input 1, input 2, input 4"),
    ("input 4.5 = 1", "sdxl", "entry 1 'input 4.5 = 1': input block 4 of SDXL has 2 transformer block(s), numbered 0 to 1"),
    ("output 1 = strong", "sdxl", "entry 1 'output 1 = strong': 'strong' is not a number"),
    ("output 1 = nan", "sdxl", "entry 1 'output 1 = nan': the value must be a finite number"),
])
def test_layer_weights_errors_name_the_entry(text, family, message):
    with pytest.raises(LayerWeightsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_layer_weights(text, family, schedule("linear", family, 1.0), 1.0)


@pytest.mark.parametrize("pixels, family", [((512, 768), "sd15"), ((768, 512), "sd15"), ((1024, 576), "sdxl"),
                                            ((520, 776), "sd15")])
def test_mask_grid_is_the_real_token_grid(pixels, family):
    """The grid of every layer equals the activations the UNet really has, where a square-root guess fails."""
    height, width = pixels[0] // 8, pixels[1] // 8
    model = model_patcher(family)
    seen = {}
    for site in core.LAYERS[family]:
        def record(q, k, v, o, _site=site):
            seen[_site.index] = (q.shape[1], tuple(o["activations_shape"][2:]))
            return core.sdpa_attention(q, k, v, o["n_heads"])
        model.set_model_attn2_replace(record, *site.patch_key)
    with torch.inference_mode():
        forward(model, torch.randn(1, 4, height, width), torch.tensor([1.0]), torch.randn(1, 77, CONTEXT[family]))
    guesses_fail = False
    for site in core.LAYERS[family]:
        tokens, activations = seen[site.index]
        grid = token_grid(height, width, site.downsample)
        assert grid == activations and grid[0] * grid[1] == tokens
        side = round(math.sqrt(tokens))
        guesses_fail |= (side, side) != grid  # a square-root guess gets the shape (or the count) wrong
    assert guesses_fail


def test_combine_modes_by_hand():
    e = torch.tensor([[1.0, 2.0, 2.0], [3.0, 0.0, 4.0], [0.0, 6.0, 8.0]])  # norms 3, 5, 10
    w = torch.tensor([1.0, 0.5, 0.5])
    assert torch.allclose(combine_features(e, "concat", w), e)
    assert torch.allclose(combine_features(e, "add", w), torch.tensor([[2.5, 5.0, 8.0]]))
    assert torch.allclose(combine_features(e, "average", w), torch.tensor([[2.5, 5.0, 8.0]]) / 2)
    assert torch.allclose(combine_features(e, "subtract", w), torch.tensor([[1 - 0.75, 2 - 1.5, 2 - 3.0]]))
    unit = torch.tensor([[1 / 3, 2 / 3, 2 / 3], [0.6, 0.0, 0.8], [0.0, 0.6, 0.8]])
    norm_average = (unit[0] + 0.5 * unit[1] + 0.5 * unit[2]) / 2 * 6.0  # mean norm (3 + 5 + 10) / 3
    assert torch.allclose(combine_features(e, "norm average", w), norm_average[None])


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def nodes():
    m = load_pack().NODE_CLASS_MAPPINGS
    return {name: cls() for name, cls in m.items()}


def test_encode_combine_modes_project_the_merged_features(nodes):
    loaded, vit_h = loaded_adapter("sd15_base"), ClipVisionModel("vit-h")
    images = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    embeds = vit_h.encode_image(images)["image_embeds"]
    for mode in ("average", "norm average", "add", "subtract"):
        (prompt,) = nodes["EncodeImagePrompt"].encode(loaded, vit_h, images, "center crop", mode, "1, 0.5, 0.5")
        expected = core.image_tokens(loaded.adapter, combine_features(embeds, mode, torch.tensor([1.0, 0.5, 0.5])))
        assert prompt.count == 1 and torch.allclose(prompt.cond, expected, atol=1e-6), mode
    (concat,) = nodes["EncodeImagePrompt"].encode(loaded, vit_h, images, "center crop", "concat", "1, 0.5, 0.5")
    assert concat.count == 3 and concat.image_weights.tolist() == [1.0, 0.5, 0.5]


def test_image_weights_errors(nodes):
    NodeInputError = pack_module("nodes.common").NodeInputError
    loaded, vit_h = loaded_adapter("sd15_base"), ClipVisionModel("vit-h")
    with pytest.raises(NodeInputError, match=r"'image_weights' has 2 values for 3 images; give one value, or one per image"):
        nodes["EncodeImagePrompt"].encode(loaded, vit_h, torch.rand(3, 64, 64, 3), "center crop", "concat", "1, 2")
    with pytest.raises(NodeInputError, match=r"'image_weights' entry 2 \('x'\) is not a number"):
        nodes["EncodeImagePrompt"].encode(loaded, vit_h, torch.rand(2, 64, 64, 3), "center crop", "concat", "1, x")
    with pytest.raises(NodeInputError, match="combine 'subtract' needs at least two images"):
        nodes["EncodeImagePrompt"].encode(loaded, vit_h, torch.rand(1, 64, 64, 3), "center crop", "subtract")


def test_tiles_encode_overlapping_squares(nodes):
    loaded, vit_h = loaded_adapter("sd15_plus"), ClipVisionModel("vit-h")
    image = torch.rand(1, 100, 250, 3, generator=torch.Generator().manual_seed(2))  # 2.5:1 -> 3 tiles
    (prompt,) = nodes["EncodeImagePrompt"].encode(loaded, vit_h, image, "tiles")
    tiles = torch.cat([image[:, :, 0:100], image[:, :, 75:175], image[:, :, 150:250]])
    expected = core.image_tokens(loaded.adapter, vit_h.encode_image(tiles)["penultimate_hidden_states"])
    assert prompt.count == 3 and torch.equal(prompt.cond, expected)


def content(width, seed=3):
    return [[torch.zeros(1, 77, 2048), {"pooled_output": torch.randn(1, width, generator=torch.Generator().manual_seed(seed))}]]


def test_content_subtraction(nodes):
    loaded, bigg = loaded_adapter("sdxl_bigg"), ClipVisionModel("vit-bigg")
    image = torch.rand(1, 64, 64, 3)
    text = content(1280)
    (prompt,) = nodes["EncodeImagePrompt"].encode(loaded, bigg, image, "center crop", "concat", "", content_text=text,
                                                  content_scale=0.7)
    embeds = bigg.encode_image(image)["image_embeds"] - 0.7 * text[0][1]["pooled_output"]
    assert torch.allclose(prompt.cond, core.image_tokens(loaded.adapter, embeds), atol=1e-6)
    NodeInputError = pack_module("nodes.common").NodeInputError
    with pytest.raises(NodeInputError, match="'content_text' is a 768-wide text embedding.*1280-wide image embeddings"):
        nodes["EncodeImagePrompt"].encode(loaded, bigg, image, "center crop", "concat", "", content_text=content(768))
    with pytest.raises(NodeInputError, match="'content_text' works with adapters that read CLIP's global image embedding"):
        nodes["EncodeImagePrompt"].encode(loaded_adapter("sd15_plus"), ClipVisionModel("vit-h"), image, "center crop",
                                          "concat", "", content_text=content(1024))


def test_prompt_files_round_trip_and_refuse_other_encoders(nodes):
    loaded, vit_h = loaded_adapter("sd15_plus"), ClipVisionModel("vit-h")
    (prompt,) = nodes["EncodeImagePrompt"].encode(loaded, vit_h, torch.rand(2, 64, 64, 3), "center crop", "concat", "1, 0.4")
    result = nodes["SaveImagePrompt"].save(prompt, "roundtrip")
    name = result["ui"]["text"][0]
    os.makedirs(folder_paths.get_input_directory(), exist_ok=True)
    shutil.copy(os.path.join(folder_paths.get_output_directory(), name), folder_paths.get_input_directory())
    assert name in load_pack().NODE_CLASS_MAPPINGS["LoadImagePrompt"].INPUT_TYPES()["required"]["prompt_file"][0]
    (loaded_prompt,) = nodes["LoadImagePrompt"].load(loaded, name)
    assert torch.equal(loaded_prompt.cond, prompt.cond) and torch.equal(loaded_prompt.uncond, prompt.uncond)
    assert loaded_prompt.image_weights.tolist() == pytest.approx([1.0, 0.4])
    # the same features also serve another adapter reading ViT-H hidden states (here the SDXL plus one)
    assert nodes["LoadImagePrompt"].load(loaded_adapter("sdxl_plus"), name)[0].cond.shape == (2, 16, 2048)
    NodeInputError = pack_module("nodes.common").NodeInputError
    with pytest.raises(NodeInputError, match="holds ViT-H/14 penultimate_hidden_states \\(1280 wide\\), saved with "
                                             "'sd15_plus.safetensors' \\(sd15\\), but 'sdxl_bigg.safetensors' reads "
                                             "ViT-bigG/14 image_embeds"):
        nodes["LoadImagePrompt"].load(loaded_adapter("sdxl_bigg"), name)


# --- the image branch, layer by layer ------------------------------------------------------------------------


def options(chunks=(1, 0), sigma=2.0, shape=(2, 4, 12, 20), heads=8):
    return dict(cond_or_uncond=list(chunks), sigmas=torch.tensor([sigma]), n_heads=heads, attn_precision=None,
                original_shape=list(shape))


def entry_for(loaded, prompt, weight=1.0, **kwargs):
    Entry = pack_module("nodes.patch").ImagePromptEntry
    return Entry(loaded, prompt, {s.index: weight for s in loaded.adapter.layers}, 1e9, 0.0, **kwargs)


def prompt_of(loaded, n, weights=None, seed=5):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 257, 1280) if loaded.spec.projection != "base" else (n, loaded.spec.encoder.width)
    return pack_module("nodes.encode").make_prompt(loaded, torch.randn(*shape, generator=g),
                                                   torch.randn(1, *shape[1:], generator=g),
                                                   torch.ones(n) if weights is None else torch.tensor(weights))


def kv_by_hand(loaded, site, tokens):
    layer = loaded.adapter.ip_adapter[str(site.index)]
    return tokens @ layer.to_k_ip.weight.T, tokens @ layer.to_v_ip.weight.T


@pytest.mark.parametrize("mode", ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"])
def test_kv_scaling_modes_by_hand(mode):
    loaded = loaded_adapter("sd15_plus")
    prompt = prompt_of(loaded, 1)
    site = next(s for s in loaded.adapter.layers if s.hidden_size == 640)
    q = torch.randn(2, 60, 128)  # 640 / 5 channels, 8 heads
    out = entry_for(loaded, prompt, 1.5, kv_scaling=mode).image_branch(site, q, options())
    rows = []
    for c in (1, 0):  # uncond chunk first, then cond
        k, v = kv_by_hand(loaded, site, (prompt.uncond if c else prompt.cond)[0])
        w = 1.5 * (640 / 1280 if "penalty" in mode else 1)
        if mode == "V only":
            rows.append(core.sdpa_attention(q[:1], k[None], v[None], 8) * 1.5)
        elif mode.startswith("K+mean"):
            m = v.mean(0, keepdim=True)
            rows.append(core.sdpa_attention(q[:1], k[None] * w, (v - m + m * w)[None], 8))
        else:
            rows.append(core.sdpa_attention(q[:1], k[None] * w, v[None] * w, 8))
        q = q.roll(-1, 0)
    assert torch.allclose(out, torch.cat(rows), atol=1e-5)


def test_concat_with_image_weights_is_one_softmax_with_scaled_values():
    loaded = loaded_adapter("sd15_plus")
    prompt = prompt_of(loaded, 2, [1.0, 0.25])
    site = loaded.adapter.layers[0]
    q = torch.randn(2, 40, 64)
    out = entry_for(loaded, prompt).image_branch(site, q, options((0,)))
    k0, v0 = kv_by_hand(loaded, site, prompt.cond[0])
    k1, v1 = kv_by_hand(loaded, site, prompt.cond[1])
    expected = core.sdpa_attention(q, torch.cat([k0, k1])[None].expand(2, -1, -1),
                                   torch.cat([v0, 0.25 * v1])[None].expand(2, -1, -1), 8)
    assert torch.allclose(out, expected, atol=1e-5)


def test_masks_per_reference_image_are_separate_attentions():
    loaded = loaded_adapter("sd15_plus")
    prompt = prompt_of(loaded, 2)
    mask = torch.zeros(2, 96, 160)
    mask[0, :, :80], mask[1, :, 80:] = 1.0, 0.5  # left half image 1, right half image 2 at half strength
    site = loaded.adapter.layers[0]  # full latent resolution 12x20
    q = torch.randn(2, 240, 64)
    out = entry_for(loaded, prompt, 0.9, mask=mask).image_branch(site, q, options((0,)))
    expected = 0
    for i in range(2):
        k, v = kv_by_hand(loaded, site, prompt.cond[i])
        grid_mask = torch.nn.functional.interpolate(mask[i:i + 1, None], size=(12, 20), mode="bilinear").flatten(1)[..., None]
        expected = expected + core.sdpa_attention(q, k[None].expand(2, -1, -1), v[None].expand(2, -1, -1), 8) * grid_mask
    assert torch.allclose(out, expected * 0.9, atol=1e-5)


def test_per_frame_prompts_and_weights():
    loaded = loaded_adapter("sd15_base")
    prompt = prompt_of(loaded, 3)
    site = loaded.adapter.layers[0]
    q = torch.randn(6, 40, 64)  # uncond frames 0-2, cond frames 0-2
    entry = entry_for(loaded, prompt, 2.0, per_frame=True, frame_weights=torch.tensor([1.0, 0.5, 0.0]))
    out = entry.image_branch(site, q, options((1, 0)))
    for row in range(6):
        chunk, frame = divmod(row, 3)
        tokens = (prompt.uncond if chunk == 0 else prompt.cond)[frame]
        k, v = kv_by_hand(loaded, site, tokens)
        expected = core.sdpa_attention(q[row:row + 1], k[None], v[None], 8) * 2.0 * [1.0, 0.5, 0.0][frame]
        assert torch.allclose(out[row:row + 1], expected, atol=1e-5), row
    NodeInputError = pack_module("nodes.common").NodeInputError
    with pytest.raises(NodeInputError, match="per_frame is on with 3 reference images, but the latent batch has 4 frames"):
        entry.image_branch(site, torch.randn(8, 40, 64), options((1, 0)))


class Window:
    """What ComfyUI's context windows put in transformer_options["context_window"] (IndexListContextWindow)."""

    def __init__(self, index_list, total_frames, dim=0):
        self.index_list, self.total_frames, self.dim = index_list, total_frames, dim
        self.context_length = len(index_list)


@pytest.mark.parametrize("how,frames", [("comfyui", [6, 7, 0, 1]), ("comfyui 0.3", [4, 5, 6, 7]),
                                        ("animatediff", [2, 3, 4, 5])])
def test_per_frame_follows_the_frames_a_context_window_holds(how, frames):
    """8 references, 8 frames, a window of 4 (wrapping, as looped schedules do): each row gets its own frame's image,
    weight and mask, exactly as in the call over the whole batch. ComfyUI 0.3 windows carry no total_frames: the
    indices tell it."""
    loaded = loaded_adapter("sd15_base")
    prompt = prompt_of(loaded, 8)
    mask = torch.rand(8, 96, 160) + 0.1
    entry = entry_for(loaded, prompt, 1.5, per_frame=True, frame_weights=torch.linspace(1.0, 0.3, 8), mask=mask)
    site = loaded.adapter.layers[0]
    q_full = torch.randn(16, 240, 64)  # uncond frames 0-7, cond frames 0-7
    full = entry.image_branch(site, q_full, options((1, 0), shape=(16, 4, 12, 20)))
    rows = frames + [8 + f for f in frames]
    window_options = options((1, 0), shape=(8, 4, 12, 20))
    if how == "animatediff":
        window_options["ad_params"] = {"sub_idxs": frames, "full_length": 8, "context_length": 4}
    else:
        window_options["context_window"] = Window(frames, 8 if how == "comfyui" else 0)
    out = entry.image_branch(site, q_full[rows], window_options)
    assert torch.allclose(out, full[rows], atol=1e-5)


def test_a_stale_or_foreign_window_is_not_followed():
    """ComfyUI leaves the last window in the options; a window of another length (or along another dim) is not this
    call's, and the rows are frames 0, 1, ..."""
    loaded = loaded_adapter("sd15_base")
    prompt = prompt_of(loaded, 4)
    entry = entry_for(loaded, prompt, 1.0, per_frame=True)
    site = loaded.adapter.layers[0]
    q = torch.randn(8, 40, 64)
    plain = entry.image_branch(site, q, options((1, 0)))
    for window in (Window([5, 6], 8), Window([1, 2, 3, 0], 4, dim=2)):
        assert torch.equal(entry.image_branch(site, q, {**options((1, 0)), "context_window": window}), plain)
    NodeInputError = pack_module("nodes.common").NodeInputError
    with pytest.raises(NodeInputError, match=r"per_frame is on with 4 reference images, but the latent batch has 8 "
                                             r"frames \(sampled in context windows of 4\)"):
        entry.image_branch(site, q, {**options((1, 0)), "ad_params": {"sub_idxs": [0, 1, 2, 3], "full_length": 8}})


def test_precise_layers_swap_cond_and_uncond():
    loaded = loaded_adapter("sdxl_vith")
    prompt = prompt_of(loaded, 1)
    weights = schedule("style transfer precise", "sdxl", 1.0, boost=2.0)
    Entry = pack_module("nodes.patch").ImagePromptEntry
    entry = Entry(loaded, prompt, {s.index: w for s, w in zip(loaded.adapter.layers, weights.weights)}, 1e9, 0.0,
                  swapped=weights.swapped)
    site = next(s for s in loaded.adapter.layers if s.index in weights.swapped)  # input 8: the layout layers
    q = torch.randn(1, 12, 256)
    out = entry.image_branch(site, q, options((0,)))  # a cond row gets the uncond tokens
    k, v = kv_by_hand(loaded, site, prompt.uncond[0])
    assert torch.allclose(out, core.sdpa_attention(q, k[None], v[None], 8) * 2.0, atol=1e-5)


# --- the nodes end to end on the stand-in UNet ---------------------------------------------------------------


def test_advanced_linear_equals_the_basic_node(nodes):
    model, loaded = model_patcher("sd15"), loaded_adapter("sd15_plus")
    prompt = prompt_of(loaded, 1)
    x, sigma, context = torch.randn(2, 4, 12, 20), torch.tensor([2.0]), torch.randn(2, 77, 768)
    basic = forward(nodes["ApplyIPAdapter"].apply(model, loaded, prompt, 0.7, 0.0, 1.0)[0], x, sigma, context, (1, 0))
    advanced = nodes["ApplyIPAdapterAdvanced"].apply(model, loaded, prompt, 0.7, 0.0, 1.0)[0]
    assert torch.equal(forward(advanced, x, sigma, context, (1, 0)), basic)


def test_style_transfer_patches_only_the_style_layers(nodes):
    model, loaded = model_patcher("sdxl"), loaded_adapter("sdxl_vith")
    (patched,) = nodes["ApplyIPAdapterAdvanced"].apply(model, loaded, prompt_of(loaded, 1), 1.0, 0.0, 1.0, "style transfer")
    keys = set(patched.model_options["transformer_options"]["patches_replace"]["attn2"])
    assert keys == {("output", 1, t) for t in range(10)}


def test_style_and_composition_node(nodes):
    model, loaded = model_patcher("sd15"), loaded_adapter("sd15_plus")
    style, comp = prompt_of(loaded, 1, seed=1), prompt_of(loaded, 1, seed=2)
    (patched,) = nodes["ApplyIPAdapterStyleComposition"].apply(model, loaded, style, comp, 0.9, 0.6, 0.0, 1.0)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    comp_keys = {("input", 7), ("input", 8)}
    for key, patch in replace.items():
        entry, inner = patch.entry, patch.inner
        if key in comp_keys:
            assert entry.prompt is comp and inner is None
            assert entry.layer_weights[patch.site.index] == pytest.approx(0.6 * (0.25 if key == ("input", 7) else 1))
        else:
            assert entry.prompt is style and entry.layer_weights[patch.site.index] == pytest.approx(0.9)
    assert set(replace) == comp_keys | {("input", 1), ("input", 2), ("input", 4), ("input", 5)} | {
        ("output", i) for i in range(5, 12)}


def test_advanced_node_errors(nodes):
    NodeInputError = pack_module("nodes.common").NodeInputError
    model, loaded = model_patcher("sd15"), loaded_adapter("sd15_plus")
    apply = nodes["ApplyIPAdapterAdvanced"].apply
    prompt = prompt_of(loaded, 2)
    with pytest.raises(NodeInputError, match=r"Apply IP-Adapter \(advanced\): layer_weights entry 1 'input 3 = 1'"):
        apply(model, loaded, prompt, 1.0, 0.0, 1.0, layer_weights="input 3 = 1")
    with pytest.raises(NodeInputError, match="'frame_weights' needs per_frame on"):
        apply(model, loaded, prompt, 1.0, 0.0, 1.0, frame_weights="1, 0.5")
    with pytest.raises(NodeInputError, match="'frame_weights' has 3 values for 2 frames"):
        apply(model, loaded, prompt, 1.0, 0.0, 1.0, per_frame=True, frame_weights="1, 0.5, 0.2")
    with pytest.raises(NodeInputError, match="'weight_type' must be one of"):
        apply(model, loaded, prompt, 1.0, 0.0, 1.0, weight_type="heavy")
    with pytest.raises(NodeInputError, match=r"'attn_mask' is empty \(all zeros\) \(mask 2 of 2\)"):
        mask = torch.ones(2, 32, 32)
        mask[1] = 0
        apply(model, loaded, prompt, 1.0, 0.0, 1.0, attn_mask=mask)
