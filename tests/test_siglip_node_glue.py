"""nodes/siglip.py against the stand-in host: the connected SigLIP encoder's attention-pooling head is found by
content among models/clip_vision's .safetensors files; pickles are never opened."""

import gc
import os

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from standin_host import ClipVisionModel, folder_paths, pack_module

HEAD_PREFIX = "vision_model.head."
TEST_INNER = 32  # the head's MLP inner width (4304 in so400m); the rest has the real width 1152


@pytest.fixture
def glue():
    return pack_module("nodes.siglip")


@pytest.fixture
def node_error():
    return pack_module("nodes.common").NodeInputError


@pytest.fixture
def clip_dir(tmp_path, monkeypatch):
    """A models/clip_vision of our own, so files other tests put in the stand-in's folder do not interfere."""
    folder = tmp_path / "clip_vision"
    folder.mkdir()
    _, extensions = folder_paths.folder_names_and_paths["clip_vision"]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "clip_vision", ([str(folder)], extensions))
    return folder


@pytest.fixture
def opened(glue, monkeypatch):
    """Paths glue opens with safe_open; torch.load (a pickle) fails the test."""
    paths, real = [], glue.safe_open

    def recording(path, *args, **kwargs):
        paths.append(os.fspath(path))
        return real(path, *args, **kwargs)

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(glue, "safe_open", recording)
    monkeypatch.setattr(torch, "load", no_pickles)
    return paths


def head_tensors(seed, dtype=torch.float32):
    """A random so400m-width head, as vision_model.head.* tensors."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"probe": (1, 1, 1152), "attention.in_proj_weight": (3456, 1152), "attention.in_proj_bias": (3456,),
              "attention.out_proj.weight": (1152, 1152), "attention.out_proj.bias": (1152,),
              "layernorm.weight": (1152,), "layernorm.bias": (1152,), "mlp.fc1.weight": (TEST_INNER, 1152),
              "mlp.fc1.bias": (TEST_INNER,), "mlp.fc2.weight": (1152, TEST_INNER), "mlp.fc2.bias": (1152,)}
    return {HEAD_PREFIX + k: (torch.randn(s, generator=generator) * 0.05).to(dtype) for k, s in shapes.items()}


def write(folder, name, encoder, head=None, dtype=torch.float32):
    tensors = {k: v.to(dtype).contiguous() for k, v in encoder.get_sd().items()}
    safetensors.torch.save_file({**tensors, **(head or {})}, os.path.join(folder, name))
    return name


def loaded_from(folder, name):
    """What Load CLIP Vision gives for the file: the stand-in built with the file's weights (head dropped)."""
    return ClipVisionModel("siglip-384", seed=123, state_dict=safetensors.torch.load_file(os.path.join(folder, name)))


@pytest.fixture(scope="module")
def encoder():
    return ClipVisionModel("siglip-384", seed=3)


@pytest.fixture(scope="module")
def tokens(encoder):
    return encoder.encode_image(torch.rand(2, 40, 60, 3), crop=False)


def test_standin_siglip_outputs(encoder, tokens):
    assert tokens["last_hidden_state"].shape == (2, 729, 1152)
    assert torch.equal(tokens["image_embeds"], tokens["last_hidden_state"])  # ComfyUI: the whole post-LN sequence
    assert tokens["penultimate_hidden_states"].shape == (2, 729, 1152)
    all_hidden = tokens["all_hidden_states"]
    assert torch.equal(tokens["penultimate_hidden_states"], all_hidden[:, -2])
    sd = encoder.get_sd()
    post_ln = F.layer_norm(all_hidden[:, -1], (1152,), sd["vision_model.post_layernorm.weight"],
                           sd["vision_model.post_layernorm.bias"], 1e-5)
    assert torch.allclose(tokens["last_hidden_state"], post_ln, atol=1e-5)
    assert (encoder.image_size, encoder.image_mean, encoder.image_std) == (384, [0.5] * 3, [0.5] * 3)


def test_standin_vit_l():
    out = ClipVisionModel("vit-l").encode_image(torch.rand(1, 64, 64, 3))
    assert out["image_embeds"].shape == (1, 768) and out["penultimate_hidden_states"].shape == (1, 257, 1024)


def test_is_siglip(glue, encoder):
    assert glue.is_siglip(encoder)
    assert not any(glue.is_siglip(ClipVisionModel(kind)) for kind in ("vit-h", "vit-l", "vit-bigg"))


def test_finds_the_encoders_file(glue, clip_dir, opened, tokens):
    head = head_tensors(1)
    ours = write(clip_dir, "sigclip_vision_patch14_384.safetensors", ClipVisionModel("siglip-384", seed=3), head)
    write(clip_dir, "another_siglip.safetensors", ClipVisionModel("siglip-384", seed=7), head_tensors(2))
    write(clip_dir, "clip_vit_h.safetensors", ClipVisionModel("vit-h"))
    torch.save({"vision_model.post_layernorm.weight": torch.zeros(1152)}, clip_dir / "siglip.bin")
    clip_vision = loaded_from(clip_dir, ours)

    found = glue.pooling_head_for(clip_vision)
    direct = pack_module("ipadapter_core.siglip").head_from_state_dict(head, "direct")
    x = tokens["last_hidden_state"]
    with torch.no_grad():
        assert torch.equal(found(x), direct(x))
    assert found(x).shape == (2, 1152)
    assert not any(p.endswith(".bin") for p in opened)

    opened.clear()  # cached per clip_vision: no file is opened again
    assert glue.pooling_head_for(clip_vision) is found and opened == []

    # pooled_output redoes the post-layernorm with SigLIP's eps 1e-6 from the last layer's output
    sd = clip_vision.get_sd()
    outputs = clip_vision.encode_image(torch.rand(2, 40, 60, 3), crop=False)
    expected = direct(F.layer_norm(outputs["all_hidden_states"][:, -1], (1152,), sd["vision_model.post_layernorm.weight"],
                                   sd["vision_model.post_layernorm.bias"], 1e-6))
    pooled = glue.pooled_output(clip_vision, outputs)
    assert pooled.shape == (2, 1152) and torch.allclose(pooled, expected, atol=1e-6)
    assert torch.allclose(pooled, direct(outputs["last_hidden_state"]), atol=1e-3)


def test_fp16_file_matches_and_keeps_dtype(glue, clip_dir, opened):
    write(clip_dir, "a_other.safetensors", ClipVisionModel("siglip-384", seed=7))  # no head, not ours
    name = write(clip_dir, "siglip_fp16.sft", ClipVisionModel("siglip-384", seed=4), head_tensors(5, torch.float16),
                 dtype=torch.float16)
    clip_vision = ClipVisionModel("siglip-384", seed=4)  # float32 weights, the file has them in fp16
    head = glue.pooling_head_for(clip_vision)
    assert all(p.dtype == torch.float16 for p in head.parameters())
    assert any(p.endswith(name) for p in opened)


def test_file_without_head(glue, clip_dir, node_error):
    name = write(clip_dir, "sigclip_vision_patch14_384.safetensors", ClipVisionModel("siglip-384", seed=3))
    with pytest.raises(node_error) as info:
        glue.pooling_head_for(loaded_from(clip_dir, name))
    message = str(info.value)
    assert message.startswith("Encode Image Prompt:")
    for part in ("'sigclip_vision_patch14_384.safetensors'", "lacks the attention-pooling head (vision_model.head.*)",
                 "InstantX Flux IP-Adapter", "google/siglip-so400m-patch14-384", "model.safetensors",
                 "models/clip_vision", "Load CLIP Vision"):
        assert part in message


def test_file_with_a_head_wins_over_a_headless_copy(glue, clip_dir):
    write(clip_dir, "a_sigclip_no_head.safetensors", ClipVisionModel("siglip-384", seed=3))
    write(clip_dir, "b_siglip_so400m.safetensors", ClipVisionModel("siglip-384", seed=3), head_tensors(1))
    assert glue.pooling_head_for(ClipVisionModel("siglip-384", seed=3)).hidden_size == 1152


def test_broken_head_names_the_file(glue, clip_dir, node_error):
    head = head_tensors(1)
    del head[HEAD_PREFIX + "mlp.fc2.bias"]
    write(clip_dir, "partial.safetensors", ClipVisionModel("siglip-384", seed=3), head)
    with pytest.raises(node_error, match=r"^Encode Image Prompt: 'partial\.safetensors'.*mlp\.fc2\.bias"):
        glue.pooling_head_for(ClipVisionModel("siglip-384", seed=3))


def test_no_matching_file(glue, clip_dir, opened, node_error):
    write(clip_dir, "another_siglip.safetensors", ClipVisionModel("siglip-384", seed=7), head_tensors(2))
    write(clip_dir, "clip_vit_h.safetensors", ClipVisionModel("vit-h"))
    (clip_dir / "broken.safetensors").write_bytes(b"not a safetensors file")
    clip_vision = ClipVisionModel("siglip-384", seed=3)
    # a pickle with the encoder's own weights and head: never opened
    torch.save({**{k: v.clone() for k, v in clip_vision.get_sd().items()}, **head_tensors(1)}, clip_dir / "sigclip.bin")
    with pytest.raises(node_error) as info:
        glue.pooling_head_for(clip_vision)
    message = str(info.value)
    assert message.startswith("Encode Image Prompt: the connected SigLIP encoder was not found in models/clip_vision")
    assert "SigLIP files seen: 'another_siglip.safetensors'." in message
    assert "clip_vit_h" not in message and "sigclip.bin" not in message
    assert opened and not any(p.endswith(".bin") for p in opened)


def test_empty_folder(glue, clip_dir, node_error):
    with pytest.raises(node_error, match="SigLIP files seen: none"):
        glue.pooling_head_for(ClipVisionModel("siglip-384", seed=3))


def test_not_siglip(glue, clip_dir, node_error):
    with pytest.raises(node_error, match=r"^Encode Image Prompt: the connected CLIP vision model is not SigLIP"):
        glue.pooling_head_for(ClipVisionModel("vit-h"))


def test_cache_does_not_keep_the_encoder(glue, clip_dir):
    write(clip_dir, "siglip.safetensors", ClipVisionModel("siglip-384", seed=3), head_tensors(1))
    clip_vision = ClipVisionModel("siglip-384", seed=3)
    glue.pooling_head_for(clip_vision)
    before = len(glue._heads)
    del clip_vision
    gc.collect()
    assert len(glue._heads) == before - 1
