"""FaceID adapters at core level: detection of every h94 FaceID file from content (and v1/v2 by size, hash, name),
the projections against diffusers' IPAdapterFaceIDImageProjection / IPAdapterFaceIDPlusImageProjection loaded by
diffusers' own converter from the original keys, and the LoRA mapped to ComfyUI's UNet weight names."""

import os

import pytest
import torch
from synthetic_faceid import FACEID_VARIANTS, make_faceid_checkpoint

from ipadapter_core import AdapterFileError, adapter_from_state_dict
from ipadapter_core.faceid import (FACE_NORMED, FACE_RAW, RELEASES, faceid_tokens, lora_weights, resolve_version,
                                   unet_attention_key)
from ipadapter_core.layers import LAYERS

EXPECTED = {  # variant: (family, spec variant for a file named plainly, tokens, LoRA rank, face input, CLIP)
    "sd15_faceid": ("sd15", "faceid", 4, 128, FACE_NORMED, False),
    "sd15_faceid_plus": ("sd15", "faceid-plusv2", 4, 128, FACE_NORMED, True),  # named ...plusv2...
    "sd15_portrait": ("sd15", "portrait", 16, 0, FACE_NORMED, False),
    "sdxl_faceid": ("sdxl", "faceid", 4, 128, FACE_NORMED, False),
    "sdxl_faceid_plusv2": ("sdxl", "faceid-plusv2", 4, 128, FACE_NORMED, True),
    "sdxl_portrait": ("sdxl", "portrait", 16, 0, FACE_NORMED, False),
    "sdxl_portrait_unnorm": ("sdxl", "portrait-unnorm", 16, 0, FACE_RAW, False),
}
NAMES = {"sd15_faceid_plus": "ip-adapter-faceid-plusv2_sd15.bin", "sd15_portrait": "ip-adapter-faceid-portrait_sd15.bin"}


@pytest.fixture(scope="module")
def checkpoints():
    # full size; the SDXL files with a LoRA (1.1 and 1.5 GB) are tested narrowed in test_sdxl_lora_files_are_recognised
    kept = {v for v in FACEID_VARIANTS if v.startswith("sd15")} | {"sdxl_portrait", "sdxl_portrait_unnorm"}
    return {v: make_faceid_checkpoint(v, seed=i, dtype=torch.float32) for i, v in enumerate(FACEID_VARIANTS) if v in kept}


@pytest.mark.parametrize("variant", ["sd15_faceid", "sd15_faceid_plus", "sd15_portrait", "sdxl_portrait",
                                     "sdxl_portrait_unnorm"])
def test_every_faceid_file_is_recognised_from_content(checkpoints, variant):
    adapter = adapter_from_state_dict(checkpoints[variant], NAMES.get(variant, f"{variant}.bin"))
    spec = adapter.spec
    family, kind, tokens, rank, face, clip = EXPECTED[variant]
    assert (spec.family, spec.variant, spec.num_tokens, spec.lora_rank, spec.face) == (family, kind, tokens, rank, face)
    assert (spec.clip is not None) == clip
    lora_keys = [k for k in checkpoints[variant]["ip_adapter"] if "_lora." in k]
    assert sorted(adapter.lora) == sorted(lora_keys)
    assert len(lora_keys) == (8 * 2 * len(LAYERS[family]) if rank else 0)  # 288 - 32 K/V keys for SD1.5
    assert not any("lora" in name for name, _ in adapter.named_parameters())  # no module for the LoRA


def test_sdxl_lora_files_are_recognised(tmp_path):
    """The SDXL FaceID files carry 140 processors' LoRA (1,120 tensors); narrowed here to keep the test small."""
    nested = make_faceid_checkpoint("sdxl_faceid", dtype=torch.float16, rank=4)
    spec = adapter_from_state_dict(nested, "ip-adapter-faceid_sdxl.bin").spec
    assert (spec.family, spec.variant, spec.lora_rank) == ("sdxl", "faceid", 4)
    assert len(lora_weights(adapter_from_state_dict(nested, "x.bin").lora, "sdxl")) == 560


def test_v1_and_v2_are_told_by_size_then_name(tmp_path):
    def sized(name, size):
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: nothing is written
        return str(path)

    for variant in ("faceid-plus", "faceid-plusv2"):
        path = sized("renamed.bin", RELEASES[variant][0])
        assert resolve_version("faceid-plus", "renamed.bin", path) == (variant, "file size")
    for variant in ("portrait", "portrait-v11"):
        path = sized("renamed.bin", RELEASES[variant][0])
        assert resolve_version("portrait", "renamed.bin", path) == (variant, "file size")
    other = sized("x.bin", 1000)
    assert resolve_version("faceid-plus", "my-faceid-plusv2.bin", other) == ("faceid-plusv2", "file name")
    assert resolve_version("faceid-plus", "ip-adapter-faceid-plus_sd15.bin", other) == ("faceid-plus", "file name")
    assert resolve_version("faceid-plus", "renamed.bin", other) == ("faceid-plusv2", "assumed")
    assert resolve_version("portrait", "ip-adapter-faceid-portrait-v11_sd15.bin", other) == ("portrait-v11", "file name")
    assert resolve_version("portrait", "ip-adapter-faceid-portrait_sd15.bin", other) == ("portrait", "file name")
    assert resolve_version("portrait", "renamed.bin", other) == ("portrait-v11", "assumed")


def test_the_label_says_how_the_version_was_told(checkpoints):
    spec = adapter_from_state_dict(checkpoints["sd15_faceid_plus"], "ip-adapter-faceid-plusv2_sd15.bin").spec
    assert spec.label == "SD1.5 FaceID-Plus v2 IP-Adapter (4 tokens per face, file name)"


def diffusers_projection(image_proj):
    from diffusers.loaders.unet import UNet2DConditionLoadersMixin

    module = UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
        None, {k: v.clone() for k, v in image_proj.items()}, low_cpu_mem_usage=False)
    return module.float().eval()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("variant", ["sd15_faceid", "sd15_portrait", "sdxl_portrait"])
def test_faceid_mlp_equals_diffusers(checkpoints, variant):
    adapter = adapter_from_state_dict(checkpoints[variant], f"{variant}.bin")
    reference = diffusers_projection(checkpoints[variant]["image_proj"])
    face = torch.nn.functional.normalize(torch.randn(3, 512, generator=torch.Generator().manual_seed(1)), dim=-1)
    with torch.no_grad():
        ours, theirs = faceid_tokens(adapter, face), reference(face)
    assert ours.shape == (3, adapter.spec.num_tokens, adapter.spec.cross_attention_dim)
    assert rel(ours, theirs) <= 1e-6


@pytest.mark.parametrize("shortcut,s_scale", [(False, 1.0), (True, 1.0), (True, 2.5)])
def test_faceid_plus_equals_diffusers(checkpoints, shortcut, s_scale):
    nested = checkpoints["sd15_faceid_plus"]
    name = "ip-adapter-faceid-plusv2_sd15.bin" if shortcut else "ip-adapter-faceid-plus_sd15.bin"
    adapter = adapter_from_state_dict(nested, name)
    assert adapter.spec.shortcut == shortcut
    reference = diffusers_projection(nested["image_proj"])
    g = torch.Generator().manual_seed(2)
    face = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=-1)
    clip = torch.randn(2, 257, 1280, generator=g)
    reference.clip_embeds = clip[:, None]  # diffusers takes [B, images, N, E]
    reference.shortcut, reference.shortcut_scale = shortcut, s_scale
    with torch.no_grad():
        ours, theirs = faceid_tokens(adapter, face, clip, s_scale), reference(face)
    assert rel(ours, theirs) <= 1e-6


def test_portrait_unnorm_reads_the_raw_embedding_as_one_token(checkpoints):
    from ipadapter_core.projection import Resampler

    nested = checkpoints["sdxl_portrait_unnorm"]
    adapter = adapter_from_state_dict(nested, "ip-adapter-faceid-portrait_sdxl_unnorm.bin")
    raw = torch.randn(2, 512, generator=torch.Generator().manual_seed(3)) * 20
    reference = Resampler(1280, 4, 20, 16, 512, 2048)
    reference.load_state_dict(nested["image_proj"])
    with torch.no_grad():
        assert torch.equal(faceid_tokens(adapter, raw), reference(raw[:, None]))


def test_lora_maps_to_every_attention_linear_of_the_unet(checkpoints):
    adapter = adapter_from_state_dict(checkpoints["sd15_faceid"], "ip-adapter-faceid_sd15.bin")
    patches = lora_weights(adapter.lora, "sd15")
    assert len(patches) == 128  # 16 transformer blocks x (attn1, attn2) x (q, k, v, out)
    site = next(s for s in LAYERS["sd15"] if s.block_name == "middle")
    key = "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    assert unet_attention_key(site, 2, "to_k") == key
    up, down = patches[key]
    assert up is adapter.lora[f"{site.index}.to_k_lora.up.weight"] and down.shape == (128, 768)
    first = LAYERS["sd15"][0]
    assert patches["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight"][0] is \
        adapter.lora[f"{first.index - 1}.to_out_lora.up.weight"]


def test_a_half_lora_is_refused(checkpoints):
    nested = {"image_proj": checkpoints["sd15_faceid"]["image_proj"],
              "ip_adapter": dict(checkpoints["sd15_faceid"]["ip_adapter"])}
    del nested["ip_adapter"]["5.to_v_lora.up.weight"]
    with pytest.raises(AdapterFileError, match=r"FaceID file 'x.bin' has an incomplete LoRA \(1 of 256 tensors missing"):
        adapter_from_state_dict(nested, "x.bin")
