"""Reading files and detecting the variant, on full-size synthetic checkpoints."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from synthetic import VARIANTS, flatten, make_checkpoint

from ipadapter_core import AdapterFileError, describe, load_adapter, read_state_dict

EXPECTED = {  # variant: (family, projection, tokens, encoder name, encoder output, width, resampler dim, heads)
    "sd15_base": ("sd15", "base", 4, "ViT-H/14", "image_embeds", 1024, 0, 0),
    "sd15_vitg": ("sd15", "base", 4, "ViT-bigG/14", "image_embeds", 1280, 0, 0),
    "sd15_plus": ("sd15", "plus", 16, "ViT-H/14", "penultimate_hidden_states", 1280, 768, 12),
    "sd15_full": ("sd15", "full-face", 257, "ViT-H/14", "penultimate_hidden_states", 1280, 0, 0),
    "sdxl_bigg": ("sdxl", "base", 4, "ViT-bigG/14", "image_embeds", 1280, 0, 0),
    "sdxl_vith": ("sdxl", "base", 4, "ViT-H/14", "image_embeds", 1024, 0, 0),
    "sdxl_plus": ("sdxl", "plus", 16, "ViT-H/14", "penultimate_hidden_states", 1280, 1280, 20),
}


@pytest.fixture(scope="module")
def checkpoints():
    return {v: make_checkpoint(v, seed=i) for i, v in enumerate(VARIANTS)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_detects_every_released_variant(checkpoints, variant):
    spec = describe(checkpoints[variant], variant)
    family, projection, tokens, enc_name, enc_out, width, dim, heads = EXPECTED[variant]
    assert (spec.family, spec.projection, spec.num_tokens) == (family, projection, tokens)
    assert (spec.encoder.name, spec.encoder.output, spec.encoder.width) == (enc_name, enc_out, width)
    assert (spec.resampler_dim, spec.resampler_heads) == (dim, heads)
    assert spec.num_layers == {"sd15": 16, "sdxl": 70}[family]
    assert spec.cross_attention_dim == {"sd15": 768, "sdxl": 2048}[family]


def _assert_same(adapter, nested):
    loaded = adapter.state_dict()
    for key, value in flatten(nested).items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("variant", ["sd15_plus", "sdxl_vith"])
def test_safetensors_round_trip(tmp_path, checkpoints, variant):
    path = tmp_path / f"{variant}.safetensors"
    save_file(flatten(checkpoints[variant]), str(path))
    adapter = load_adapter(str(path))
    assert adapter.spec == describe(checkpoints[variant])
    _assert_same(adapter, checkpoints[variant])


def test_training_prefix_adapter_modules(tmp_path, checkpoints):
    path = tmp_path / "trained.safetensors"
    save_file(flatten(checkpoints["sd15_base"], ip_prefix="adapter_modules."), str(path))
    _assert_same(load_adapter(str(path)), checkpoints["sd15_base"])


def test_bin_nested_with_mixed_dtypes(tmp_path):
    # ip-adapter-plus_sd15.bin stores the projector in fp32 and the K/V in fp16
    nested = make_checkpoint("sd15_plus", seed=3, dtype=torch.float16, proj_dtype=torch.float32)
    path = tmp_path / "ip-adapter-plus_sd15.bin"
    torch.save(nested, path)
    adapter = load_adapter(str(path))
    assert adapter.spec.projection == "plus"
    _assert_same(adapter, nested)
    assert adapter.image_proj.latents.dtype == torch.float32
    assert adapter.ip_adapter["1"].to_k_ip.weight.dtype == torch.float16


def test_bin_in_legacy_torch_format(tmp_path, checkpoints):
    path = tmp_path / "old.bin"
    torch.save(checkpoints["sd15_full"], path, _use_new_zipfile_serialization=False)
    _assert_same(load_adapter(str(path)), checkpoints["sd15_full"])


def test_safetensors_stay_memory_mapped(tmp_path, checkpoints):
    # the adapter holds the tensors safetensors handed out, not copies of them
    path = tmp_path / "a.safetensors"
    save_file(flatten(checkpoints["sd15_base"]), str(path))
    nested = read_state_dict(str(path))
    from ipadapter_core import adapter_from_state_dict

    adapter = adapter_from_state_dict(nested, "a.safetensors")
    assert adapter.ip_adapter["1"].to_k_ip.weight.data_ptr() == nested["ip_adapter"]["1.to_k_ip.weight"].data_ptr()


class _Payload:
    """Unpickling this would create a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"image_proj": {"x": _Payload(str(target))}, "ip_adapter": {}}, f)
    with pytest.raises(AdapterFileError, match=r"'evil\.bin' was refused: it is not a plain tensor file"):
        load_adapter(str(path))
    assert not target.exists()
    # the same inside torch.save's zip format
    path2 = tmp_path / "evil2.bin"
    torch.save({"image_proj": {"x": _Payload(str(target))}}, path2)
    assert not target.exists()
    with pytest.raises(AdapterFileError, match="evil2.bin' was refused"):
        load_adapter(str(path2))
    assert not target.exists()


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(AdapterFileError, match=r"'empty\.safetensors' is empty \(0 bytes\)\. Download it again"):
        load_adapter(str(path))


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_truncated_file(tmp_path, checkpoints, suffix):
    path = tmp_path / f"cut{suffix}"
    if suffix == ".bin":
        torch.save(checkpoints["sd15_base"], path)
    else:
        save_file(flatten(checkpoints["sd15_base"]), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match=rf"'cut\{suffix}'.*truncated or corrupt: download it again"):
        load_adapter(str(path))


def test_missing_file():
    with pytest.raises(AdapterFileError, match="does not exist"):
        load_adapter("/nonexistent/ip-adapter_sd15.safetensors")


def _save(tmp_path, name, tensors):
    path = tmp_path / name
    save_file(tensors, str(path))
    return str(path)


@pytest.mark.parametrize(
    "name, keys, message",
    [
        ("my_lora.safetensors", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)},
         "looks like a LoRA"),
        ("v1-5.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)},
         "Stable Diffusion checkpoint or UNet"),
        ("clip_vision_h.safetensors", {"vision_model.encoder.layers.0.mlp.fc1.weight": (5120, 1280)},
         "CLIP vision encoder"),
        ("random.safetensors", {"foo.weight": (3, 3)}, "none of its 1 keys start with 'image_proj.'"),
    ],
)
def test_non_adapter_files_are_named_and_explained(tmp_path, name, keys, message):
    path = _save(tmp_path, name, {k: torch.zeros(s) for k, s in keys.items()})
    with pytest.raises(AdapterFileError) as err:
        load_adapter(path)
    text = str(err.value)
    assert f"'{name}' is not an IP-Adapter file" in text and message in text
    assert "16 (SD1.5) or 70 (SDXL)" in text  # says what a valid file looks like


def test_faceid_files_load_from_bin_and_safetensors(tmp_path):
    """The released FaceID files are .bin (torch.save of the nested dict); a .safetensors conversion loads too."""
    from synthetic_faceid import make_faceid_checkpoint

    nested = make_faceid_checkpoint("sd15_faceid", rank=4)
    torch.save(nested, tmp_path / "ip-adapter-faceid_sd15.bin")
    save_file(flatten(nested), str(tmp_path / "ip-adapter-faceid_sd15.safetensors"))
    for name in ("ip-adapter-faceid_sd15.bin", "ip-adapter-faceid_sd15.safetensors"):
        adapter = load_adapter(str(tmp_path / name))
        assert (adapter.spec.variant, adapter.spec.lora_rank, len(adapter.lora)) == ("faceid", 4, 256)
        assert torch.equal(adapter.lora["31.to_out_lora.up.weight"], nested["ip_adapter"]["31.to_out_lora.up.weight"])


def test_missing_layers_are_listed():
    nested = make_checkpoint("sd15_base")
    del nested["ip_adapter"]["31.to_v_ip.weight"]
    with pytest.raises(AdapterFileError, match=r"'x.bin' looks like a SD1.5 adapter.*missing: 31.to_v_ip.weight"):
        describe(nested, "x.bin")


def test_wrong_layer_shape_is_listed():
    nested = make_checkpoint("sd15_base")
    nested["ip_adapter"]["5.to_k_ip.weight"] = torch.zeros(320, 768)
    with pytest.raises(AdapterFileError, match=r"wrong shape: 5.to_k_ip.weight \(320, 768\) \(expected \(640, 768\)\)"):
        describe(nested, "x.bin")


def test_unknown_cross_attention_width():
    nested = {"image_proj": {}, "ip_adapter": {"1.to_k_ip.weight": torch.zeros(320, 1024)}}
    with pytest.raises(AdapterFileError, match="cross-attention width 1024; this pack supports SD1.5 \\(768\\) and SDXL"):
        describe(nested, "sd2.bin")


def test_projection_with_missing_key():
    nested = make_checkpoint("sd15_plus")
    del nested["image_proj"]["layers.3.1.3.weight"]
    with pytest.raises(AdapterFileError, match=r"'p.bin' has an image projection that does not match.*layers.3.1.3"):
        describe(nested, "p.bin")


def test_unknown_embedding_width():
    nested = make_checkpoint("sd15_base")
    nested["image_proj"]["proj.weight"] = torch.zeros(3072, 768)
    with pytest.raises(AdapterFileError, match="1024 \\(ViT-H\\) or 1280 \\(ViT-bigG\\), found 768"):
        describe(nested, "p.bin")


def test_reading_does_not_need_the_file_extension_to_be_known(tmp_path, checkpoints):
    path = tmp_path / "adapter.pth"
    torch.save(checkpoints["sd15_base"], path)
    assert load_adapter(str(path)).spec.projection == "base"
    assert os.path.exists(path)
