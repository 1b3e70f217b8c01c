"""Combine Image Prompts: prompts encoded apart combine as if the images had been encoded together."""

import pytest
import torch
from standin_host import ClipVisionModel, load_pack, loaded_adapter, pack_module

from ipadapter_core.combine import COMBINE_MODES


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def setup():
    load_pack()
    encode = pack_module("nodes.encode")
    return encode.EncodeImagePrompt(), encode.CombineImagePrompts(), ClipVisionModel("vit-h", seed=1)


def images(seed):
    return torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["sd15_base", "sd15_plus"])
@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_combining_equals_encoding_together(setup, variant, mode):
    encode, combine, vit_h = setup
    adapter = loaded_adapter(variant)
    a, b, c = images(1), images(2), images(3)
    parts = [encode.encode(adapter, vit_h, x, image_weights=w)[0] for x, w in ((a, "1"), (b, "0.5"), (c, "2"))]
    (together,) = encode.encode(adapter, vit_h, torch.cat([a, b, c]), combine=mode, image_weights="1, 0.5, 2")
    (combined,) = combine.combine(parts[0], mode, image_prompt_2=parts[1], image_prompt_4=parts[2])
    torch.testing.assert_close(combined.cond, together.cond, rtol=1e-5, atol=1e-5)  # encoded one by one vs batched: last-bit differences
    torch.testing.assert_close(combined.uncond, together.uncond, rtol=1e-5, atol=1e-5)  # encoded one by one vs batched: last-bit differences
    torch.testing.assert_close(combined.image_weights, together.image_weights)
    assert combined.count == together.count == (3 if mode == "concat" else 1)


def test_a_negative_image_stays_with_its_prompt(setup):
    encode, combine, vit_h = setup
    adapter = loaded_adapter("sd15_plus")
    plain = encode.encode(adapter, vit_h, images(1))[0]
    negative = encode.encode(adapter, vit_h, images(2), negative_image=images(5))[0]
    (combined,) = combine.combine(plain, "concat", image_prompt_2=negative)
    torch.testing.assert_close(combined.uncond, torch.cat([plain.uncond, negative.uncond]), rtol=1e-5, atol=1e-5)  # encoded one by one vs batched: last-bit differences


def test_prompts_of_different_adapters_do_not_combine(setup):
    encode, combine, vit_h = setup
    first = encode.encode(loaded_adapter("sd15_base", seed=0), vit_h, images(1))[0]
    other = encode.encode(loaded_adapter("sd15_base", seed=1), vit_h, images(1))[0]
    with pytest.raises(ValueError, match=r"^Combine Image Prompts: image prompt 2 was made for sd15_base.safetensors, "
                                         r"image prompt 1 for sd15_base.safetensors; image prompts only combine for "
                                         r"the same adapter\.$"):
        combine.combine(first, "concat", image_prompt_2=other)
    with pytest.raises(ValueError, match="'subtract' needs at least two images"):
        combine.combine(first, "subtract")
