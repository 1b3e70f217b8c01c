"""Load IP-Adapter + Encoder: the encoder is found in models/clip_vision by its header, never by its name.

The header fixtures carry the real tensor names and shapes ComfyUI's clip_vision.load decides on (layer
count, width, position embeddings); the full-size encoders are loaded in tests/integration.
"""

import os

import pytest
import torch
from safetensors.torch import save_file
from standin_host import folder_paths, load_pack, pack_module
from synthetic import flatten, make_checkpoint

from ipadapter_core import AdapterFileError
from ipadapter_core import encoders

# kind -> (layers, width, positions) of the released encoders
RELEASED = {
    encoders.VIT_H: (32, 1280, 257),
    encoders.VIT_BIGG: (48, 1664, 257),
    encoders.VIT_L: (24, 1024, 257),
    encoders.VIT_L_336: (24, 1024, 577),
    encoders.SIGLIP_384: (27, 1152, 729),
}


def encoder_header_file(path, layers, width, positions, dtype=torch.float16):
    """The tensors ComfyUI looks at to choose a CLIP vision config, at their real shapes."""
    sd = {f"vision_model.encoder.layers.{i}.layer_norm1.weight": torch.ones(width, dtype=dtype) for i in range(layers)}
    sd["vision_model.embeddings.position_embedding.weight"] = torch.zeros(positions, width, dtype=dtype)
    sd["vision_model.post_layernorm.weight"] = torch.ones(width, dtype=dtype)
    save_file(sd, path)


def open_clip_file(path, layers, width):
    sd = {f"visual.transformer.resblocks.{i}.ln_1.weight": torch.ones(width, dtype=torch.float16) for i in range(layers)}
    sd["visual.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3 * width, width, dtype=torch.float16)
    save_file(sd, path)


@pytest.mark.parametrize("kind", list(RELEASED))
def test_each_released_encoder_is_named_from_its_header(tmp_path, kind):
    path = str(tmp_path / "renamed-anything.safetensors")
    encoder_header_file(path, *RELEASED[kind])
    described = encoders.describe_file(path, "renamed-anything.safetensors")
    layers, width, positions = RELEASED[kind]
    assert described.kind == kind
    assert described.detail == f"{kind} ({layers} layers, {width} wide, {positions} positions)"


def test_open_clip_layout_and_foreign_files(tmp_path):
    open_clip_file(str(tmp_path / "h.safetensors"), 32, 1280)
    assert encoders.describe_file(str(tmp_path / "h.safetensors"), "h.safetensors").kind == encoders.VIT_H
    encoder_header_file(str(tmp_path / "small.safetensors"), 12, 768, 197)  # a ViT-B
    small = encoders.describe_file(str(tmp_path / "small.safetensors"), "small.safetensors")
    assert (small.kind, small.detail) == ("", "a vision model no IP-Adapter here uses (12 layers, 768 wide, 197 positions)")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "lora.safetensors"))
    assert encoders.describe_file(str(tmp_path / "lora.safetensors"), "lora.safetensors").detail == \
        "not a CLIP or SigLIP vision model"
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00")
    cut = encoders.describe_file(str(tmp_path / "cut.safetensors"), "cut.safetensors")
    assert cut.kind == "" and cut.detail.startswith("unreadable (shorter than a safetensors header")
    (tmp_path / "old.bin").write_bytes(b"not opened")
    assert encoders.describe_file(str(tmp_path / "old.bin"), "old.bin").detail == \
        "not read: only .safetensors headers are inspected"


def test_pick_is_stable_and_prefers_the_usual_name():
    files = [encoders.EncoderFile(n, encoders.VIT_H, "") for n in ("zz.safetensors", "sub/vit-h.safetensors", "a.safetensors")]
    usual = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
    assert encoders.pick(files, encoders.VIT_H, usual).file_name == "a.safetensors"  # shortest, then alphabetical
    assert encoders.pick(list(reversed(files)), encoders.VIT_H, usual).file_name == "a.safetensors"
    files.append(encoders.EncoderFile("sub/" + usual, encoders.VIT_H, ""))
    assert encoders.pick(files, encoders.VIT_H, usual).file_name == "sub/" + usual
    assert encoders.pick(files, encoders.VIT_BIGG, usual) is None


@pytest.fixture
def folders(tmp_path):
    """models/ipadapter and models/clip_vision of their own for each test."""
    load_pack()
    saved = {k: folder_paths.folder_names_and_paths[k] for k in ("ipadapter", "clip_vision")}
    ipadapter, clip_vision = tmp_path / "ipadapter", tmp_path / "clip_vision"
    ipadapter.mkdir()
    clip_vision.mkdir()
    folder_paths.folder_names_and_paths["ipadapter"] = ([str(ipadapter)], {".safetensors", ".bin"})
    folder_paths.folder_names_and_paths["clip_vision"] = ([str(clip_vision)], folder_paths.supported_pt_extensions)
    save_file(flatten(make_checkpoint("sd15_base")), str(ipadapter / "ip-adapter_sd15.safetensors"))
    save_file(flatten(make_checkpoint("sdxl_bigg")), str(ipadapter / "ip-adapter_sdxl.safetensors"))
    yield ipadapter, clip_vision
    folder_paths.folder_names_and_paths.update(saved)


def test_the_adapter_finds_its_encoder_whatever_the_files_are_called(folders):
    _, clip_vision = folders
    encoder_header_file(str(clip_vision / "model.safetensors"), *RELEASED[encoders.VIT_H])
    encoder_header_file(str(clip_vision / "model (1).safetensors"), *RELEASED[encoders.VIT_L])
    loader = pack_module("nodes.loader")
    adapter = pack_module("nodes.loader").LoadIPAdapter().load("ip-adapter_sd15.safetensors")[0]
    name, how = loader.pick_encoder_file(adapter.spec, adapter.file_name)
    assert name == "model.safetensors"
    assert how == "model.safetensors (ViT-H/14, found by content)"
    encoder_header_file(str(clip_vision / "vit-h-copy.safetensors"), *RELEASED[encoders.VIT_H])
    name, how = loader.pick_encoder_file(adapter.spec, adapter.file_name)
    assert (name, how) == ("model.safetensors", "model.safetensors (ViT-H/14, found by content; also fitting: "
                                                "vit-h-copy.safetensors)")


def test_no_fitting_encoder_lists_the_folder_and_names_the_download(folders):
    _, clip_vision = folders
    encoder_header_file(str(clip_vision / "model.safetensors"), *RELEASED[encoders.VIT_H])
    (clip_vision / "old.bin").write_bytes(b"x")
    node = pack_module("nodes.loader").LoadIPAdapterAndEncoder()
    with pytest.raises(AdapterFileError) as e:
        node.load("ip-adapter_sdxl.safetensors")
    assert str(e.value) == (
        "Load IP-Adapter + Encoder: ip-adapter_sdxl.safetensors needs the image encoder ViT-bigG/14, and no file in "
        "ComfyUI/models/clip_vision is one. Download h94/IP-Adapter, sdxl_models/image_encoder/model.safetensors into "
        "models/clip_vision as CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors. What the folder holds:\n"
        "  model.safetensors: ViT-H/14 (32 layers, 1280 wide, 257 positions)\n"
        "  old.bin: not read: only .safetensors headers are inspected")


def test_described_once_per_file_version(folders, monkeypatch):
    _, clip_vision = folders
    path = str(clip_vision / "model.safetensors")
    encoder_header_file(path, *RELEASED[encoders.VIT_H])
    loader = pack_module("nodes.loader")
    reads = []
    real = encoders.read_header
    monkeypatch.setattr(encoders, "read_header", lambda p: reads.append(p) or real(p))
    loader.describe_encoder_files()
    loader.describe_encoder_files()
    assert reads == [path]
    encoder_header_file(path, *RELEASED[encoders.VIT_L])
    os.utime(path, (os.path.getatime(path), os.path.getmtime(path) + 10))
    assert [f.kind for f in loader.describe_encoder_files()] == [encoders.VIT_L]
    assert reads == [path, path]


def test_an_encoder_chosen_on_the_node_is_loaded_as_is(folders):
    _, clip_vision = folders
    from comfy.clip_vision import ClipVisionModel

    save_file(ClipVisionModel("vit-h").get_sd(), str(clip_vision / "standin-vit-h.safetensors"))
    out = pack_module("nodes.loader").LoadIPAdapterAndEncoder().load("ip-adapter_sd15.safetensors",
                                                                    "standin-vit-h.safetensors")
    adapter, encoder = out["result"]
    assert adapter.spec.encoder.name == "ViT-H/14" and isinstance(encoder, ClipVisionModel)
    assert out["ui"] == {"text": ["SD1.5 IP-Adapter (4 tokens, needs CLIP vision ViT-H/14)",
                                 "encoder: standin-vit-h.safetensors (chosen on the node)"]}


def test_faceid_plus_is_paired_with_vit_h_and_plain_faceid_with_nothing(folders):
    """FaceID-Plus shows CLIP ViT-H the face crop; plain FaceID reads only the face embedding."""
    from synthetic_faceid import make_faceid_checkpoint

    ipadapter, clip_vision = folders
    torch.save(make_faceid_checkpoint("sd15_faceid_plus", rank=4), str(ipadapter / "ip-adapter-faceid-plusv2_sd15.bin"))
    torch.save(make_faceid_checkpoint("sd15_faceid", rank=4), str(ipadapter / "ip-adapter-faceid_sd15.bin"))
    encoder_header_file(str(clip_vision / "model.safetensors"), *RELEASED[encoders.VIT_H])
    encoder_header_file(str(clip_vision / "bigg.safetensors"), *RELEASED[encoders.VIT_BIGG])
    loader = pack_module("nodes.loader")
    shown = loader.LoadIPAdapter().run("ip-adapter-faceid-plusv2_sd15.bin")
    plus = shown["result"][0]
    # the node says what it concluded: v1 and v2 share their tensors; a renamed or re-saved copy is told by its name
    assert shown["ui"]["text"] == ["SD1.5 FaceID-Plus v2 IP-Adapter (4 tokens per face, file name)"]
    assert loader.pick_encoder_file(plus.spec, plus.file_name) == ("model.safetensors",
                                                                    "model.safetensors (ViT-H/14, found by content)")
    with pytest.raises(AdapterFileError, match=r"^Load IP-Adapter \+ Encoder: ip-adapter-faceid_sd15\.bin is an SD1\.5 "
                                               r"FaceID IP-Adapter .*: it reads only face embeddings .* and needs no "
                                               r"image encoder\. Use Load IP-Adapter instead\."):
        loader.LoadIPAdapterAndEncoder().load("ip-adapter-faceid_sd15.bin")
