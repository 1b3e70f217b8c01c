"""FaceID through the pack's nodes (stand-in host): Load Face Analyzer -> Embed Faces -> Encode Image Prompt ->
Apply IP-Adapter, on synthetic ONNX face models (tests/synthetic_faces.py) and synthetic FaceID checkpoints narrowed
to the tiny UNet. Numbers are checked against the core (which tests/test_faceid_core.py checks against diffusers)
and against the same model patched without the face."""

import dataclasses
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the synthetic face models are built with the onnx package")
pytest.importorskip("onnxruntime", reason="the face backend runs on onnxruntime")

import synthetic_faces as sf  # noqa: E402
from standin_host import ClipVisionModel, folder_paths, forward, load_pack, model_patcher, pack_module  # noqa: E402
from synthetic_faceid import narrow_faceid_adapter  # noqa: E402

from ipadapter_core import faces as backend  # noqa: E402
from ipadapter_core.faceid import faceid_token_parts, faceid_tokens, lora_weights  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")
ONE = [(200, 150, 128)]
TWO = [(40, 40, 160), (400, 360, 96)]  # big top-left, small bottom-right (the smaller scores higher)


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    pack = load_pack()
    root = tmp_path_factory.mktemp("face_models")
    sf.write_pack(root)
    # a detector that misses faces filling the frame, as real ones do
    sf.write_pack(root, "tight", {"det_10g.onnx": sf.detector_model(width_penalty=0.015),
                                  "w600k_r50.onnx": sf.recognizer_model()})
    folder_paths.add_model_folder_path("insightface", str(root / "insightface"), is_default=True)
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def analyzer(nodes):
    (made,) = nodes["LoadFaceAnalyzer"]().load("buffalo_l", "onnxruntime", "CPU")
    return made


def comfy_image(*bgr_images):
    """BGR uint8 [H, W, 3] images -> a ComfyUI IMAGE batch (RGB float)."""
    return torch.from_numpy(np.stack([im[..., ::-1] for im in bgr_images]).copy()).float() / 255


def face_image(squares=ONE, seed=0):
    return sf.squares_image(squares, 512, 768, seed)


def loaded_faceid(variant, seed=0, name=None):
    """A LoadedAdapter around a FaceID adapter narrowed to the tiny UNet (64 channels = 320 / 5)."""
    import comfy.model_patcher

    adapter = narrow_faceid_adapter(variant, name, seed)
    patcher = comfy.model_patcher.ModelPatcher(adapter, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    return pack_module("nodes.loader").LoadedAdapter(adapter, patcher, name or f"{variant}.bin")


def embed(nodes, analyzer, image, **options):
    return nodes["EmbedFaces"]().embed(analyzer, image, **options)


def encode(nodes, loaded, faces, clip_vision=None, **options):
    (prompt,) = nodes["EncodeImagePrompt"]().encode(loaded, clip_vision=clip_vision, faces=faces, **options)
    return prompt


def normed(faces):
    return torch.stack([torch.from_numpy(f.normed_embedding) for f in faces.faces])


# --- Load Face Analyzer, Embed Faces ---------------------------------------------------------------------

def test_embed_faces_finds_selects_and_crops(nodes, analyzer):
    images = comfy_image(face_image(ONE), face_image(TWO, seed=1))
    faces, crops = embed(nodes, analyzer, images, crop_size=256)
    assert [f.found for f in faces.faces] == [True, True] and faces.recognizer == "w600k_r50.onnx"
    direct = analyzer.analyzer.analyze(face_image(TWO, seed=1), 256)
    largest = max(direct, key=lambda f: f.area)
    assert faces.faces[1].box == largest.box and np.array_equal(faces.faces[1].embedding, largest.embedding)
    assert abs(np.linalg.norm(faces.faces[0].normed_embedding) - 1) < 1e-6
    assert crops.shape == (2, 256, 256, 3)  # shown in RGB; the face object keeps insightface's BGR crop
    assert torch.equal(crops[1], torch.from_numpy(largest.crop[..., ::-1].copy()).float() / 255)
    by_score, _ = embed(nodes, analyzer, images[1:], select="highest score")
    second, _ = embed(nodes, analyzer, images[1:], select="index from left", index=1)
    small = [f for f in direct if f is not largest][0]
    assert by_score.faces[0].box == small.box and second.faces[0].box == small.box


def test_no_face_stops_or_gets_weight_zero(nodes, analyzer):
    images = comfy_image(face_image(ONE), np.zeros((512, 768, 3), np.uint8))
    with pytest.raises(ValueError, match=r"^Embed Faces: onnxruntime .* found no face in image 2 of 2, also with a "
                                         r"margin added around it\. .*set no_face to 'skip'"):
        embed(nodes, analyzer, images)
    faces, crops = embed(nodes, analyzer, images, no_face="skip")
    assert faces.found.tolist() == [True, False]
    assert not faces.faces[1].normed_embedding.any() and crops[1].abs().sum() == 0
    with pytest.raises(ValueError, match=r"found fewer than 2 faces in the image"):
        embed(nodes, analyzer, images[:1], select="index from left", index=1)


def test_a_face_that_fills_the_photo_is_found_with_a_margin(nodes, caplog):
    (tight,) = nodes["LoadFaceAnalyzer"]().load("tight", "onnxruntime", "CPU")
    close_up = comfy_image(sf.squares_image([(0, 0, 384)], 384, 384))
    assert tight.analyzer.analyze(sf.squares_image([(0, 0, 384)], 384, 384)) == []
    with caplog.at_level(logging.INFO, logger="ipadapter_dca"):
        faces, _ = embed(nodes, tight, close_up)
    assert faces.found.tolist() == [True] and faces.faces[0].box[2] - faces.faces[0].box[0] > 360
    assert "the face in the image was found only with a margin around the photo" in caplog.text


def test_bad_face_images(nodes, analyzer):
    gray = comfy_image(face_image(ONE)).mean(-1, keepdim=True)  # a 1-channel image is used as gray RGB
    assert embed(nodes, analyzer, gray)[0].found.tolist() == [True]
    huge = comfy_image(sf.squares_image([(1500, 1000, 900)], 3000, 4000))  # the detector sees it at 640 px
    (found,) = embed(nodes, analyzer, huge)[0].faces
    assert found.found and 1400 < found.box[0] < 1600
    for image, message in [
        (torch.zeros(0, 64, 64, 3), r"'image' is an empty batch \(0 images\)"),
        (torch.zeros(1, 20, 30, 3), r"the images are 30x20 pixels; a face needs at least 32 pixels"),
        (torch.zeros(64, 64, 3), r"'image' must be an IMAGE batch \[batch, height, width, channels\], got \[64, 64, 3\]"),
        (torch.zeros(1, 64, 64, 2), r"image 1 has 2 channels"),
    ]:
        with pytest.raises(ValueError, match="^Embed Faces: " + message):
            embed(nodes, analyzer, image)
    with pytest.raises(ValueError, match=r"^Embed Faces: 'crop_size': .*multiple of 112 or 128"):
        embed(nodes, analyzer, gray, crop_size=200)
    with pytest.raises(ValueError, match=r"^Embed Faces: 'face_analyzer' must come from this pack's Load Face Analyzer"):
        embed(nodes, object(), gray)


def test_load_face_analyzer_explains_missing_models_and_backends(nodes, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"^Load Face Analyzer: Face models not found: expected the folder .*antelopev2"):
        nodes["LoadFaceAnalyzer"]().load("antelopev2", "auto", "auto")
    monkeypatch.setattr(backend, "_import_onnxruntime", lambda: (None, "ModuleNotFoundError: No module named 'onnxruntime'"))
    monkeypatch.setattr(backend, "_import_insightface", lambda: (None, None, "not installed (No module named 'insightface')"))
    pack_module("nodes.faces")._analyzers.clear()
    with pytest.raises(ValueError, match=r"^Load Face Analyzer: Face analysis needs onnxruntime or insightface, and "
                                         r"neither can be imported .* -m pip install onnxruntime"):
        nodes["LoadFaceAnalyzer"]().load("buffalo_l", "auto", "auto")


def test_loading_the_pack_imports_no_face_backend():
    """ComfyUI imports the pack at start: no onnxruntime, insightface or cv2 may come with it (a broken insightface
    build must never stop the pack from loading)."""
    code = ("import sys; from standin_host import load_pack; pack = load_pack(); "
            "assert {'LoadFaceAnalyzer', 'EmbedFaces'} <= set(pack.NODE_CLASS_MAPPINGS); "
            "pack.NODE_CLASS_MAPPINGS['LoadFaceAnalyzer'].INPUT_TYPES(); "
            "print(sorted(m for m in ('onnxruntime', 'insightface', 'cv2', 'onnx') if m in sys.modules))")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.path.dirname(here)]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=here)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --- Encode Image Prompt with faces ------------------------------------------------------------------------

def test_faceid_tokens_are_the_projection_of_the_faces(nodes, analyzer):
    loaded = loaded_faceid("sd15_faceid")
    faces, _ = embed(nodes, analyzer, comfy_image(face_image(ONE), face_image(TWO, seed=1)))
    prompt = encode(nodes, loaded, faces)
    assert torch.allclose(prompt.cond, faceid_tokens(loaded.adapter, normed(faces)), atol=1e-6, rtol=0)
    zero = faceid_tokens(loaded.adapter, torch.zeros(1, 512))  # the reference's uncond: zeros_like(id)
    assert prompt.cond.shape == prompt.uncond.shape == (2, 4, 768)
    assert torch.allclose(prompt.uncond, zero.expand(2, -1, -1), atol=1e-6, rtol=0)
    average = encode(nodes, loaded, faces, combine="average")
    assert torch.allclose(average.cond, faceid_tokens(loaded.adapter, normed(faces).mean(0, keepdim=True)), atol=1e-6)
    with pytest.raises(ValueError, match=r"^Encode Image Prompt: combine 'average' of the faces: the image weights add "
                                         r"up to 0"):
        encode(nodes, loaded, faces, combine="average", image_weights="1, -1")


def test_portrait_unnorm_reads_the_raw_embedding(nodes, analyzer):
    loaded = loaded_faceid("sdxl_portrait_unnorm")
    faces, _ = embed(nodes, analyzer, comfy_image(face_image(ONE)))
    raw = torch.from_numpy(faces.faces[0].embedding)[None]
    assert torch.allclose(encode(nodes, loaded, faces).cond, faceid_tokens(loaded.adapter, raw), atol=1e-6, rtol=0)


def test_plus_sees_the_bgr_crop_and_s_scale_rebuilds_its_tokens(nodes, analyzer):
    loaded = loaded_faceid("sd15_faceid_plus", name="ip-adapter-faceid-plusv2_sd15.bin")
    assert loaded.spec.shortcut and loaded.spec.decided_by == "file name"
    clip = ClipVisionModel("vit-h", seed=3)
    faces, _ = embed(nodes, analyzer, comfy_image(face_image(ONE)))
    prompt = encode(nodes, loaded, faces, clip)
    bgr = torch.from_numpy(faces.faces[0].crop.copy())[None].float() / 255
    hidden = clip.encode_image(bgr)["penultimate_hidden_states"]
    assert torch.allclose(prompt.cond, faceid_tokens(loaded.adapter, normed(faces), hidden), atol=1e-6, rtol=0)
    rgb_hidden = clip.encode_image(bgr.flip(-1))["penultimate_hidden_states"]
    rgb = faceid_tokens(loaded.adapter, normed(faces), rgb_hidden)
    assert (rgb - prompt.cond).abs().max() > 1e-2  # the channel order reaches the tokens
    zero_pixels = pack_module("nodes.encode").encode_pixels(clip, torch.zeros(1, 3, 224, 224), "penultimate_hidden_states")
    assert torch.allclose(prompt.uncond, faceid_tokens(loaded.adapter, torch.zeros(1, 512), zero_pixels), atol=1e-6)

    model = model_patcher("sd15")
    (patched,) = nodes["ApplyIPAdapterAdvanced"]().apply(model, loaded, prompt, 1.0, 0.0, 1.0, s_scale=2.0)
    entry = next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values())).entry
    u, r = faceid_token_parts(loaded.adapter, normed(faces), hidden)
    assert torch.allclose(entry.prompt.cond, u + 2.0 * r, atol=1e-6, rtol=0)
    assert torch.allclose(entry.prompt.cond, faceid_tokens(loaded.adapter, normed(faces), hidden, s_scale=2.0), atol=1e-6)


def test_portrait_concatenates_sixteen_tokens_per_face(nodes, analyzer):
    loaded = loaded_faceid("sd15_portrait")
    faces, _ = embed(nodes, analyzer, comfy_image(face_image(ONE), face_image(ONE, seed=2), face_image(TWO, seed=3)))
    prompt = encode(nodes, loaded, faces)
    (patched,) = nodes["ApplyIPAdapter"]().apply(model_patcher("sd15"), loaded, prompt, 1.0, 0.0, 1.0)
    patch = next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    q = torch.zeros(2, 64, patch.site.hidden_size // 5)
    k, v = patch.entry.batch_kv(patch.site, q, [0, 1], 1)
    assert k.shape == v.shape == (2, 3 * 16, patch.site.hidden_size // 5)  # n faces -> n * 16 image tokens
    assert patched.patches == {}  # the portrait files have no LoRA


# --- Apply: LoRA, faceless frames --------------------------------------------------------------------------

def test_apply_patches_the_lora_of_the_file_at_lora_strength(nodes, analyzer):
    loaded = loaded_faceid("sd15_faceid")
    prompt = encode(nodes, loaded, embed(nodes, analyzer, comfy_image(face_image(ONE)))[0])
    model = model_patcher("sd15")
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    (basic,) = nodes["ApplyIPAdapter"]().apply(model, loaded, prompt, 1.0, 0.0, 1.0)
    (advanced,) = nodes["ApplyIPAdapterAdvanced"]().apply(model, loaded, prompt, 1.0, 0.0, 1.0, lora_strength=0.6)
    assert model.patches == {} and model.model_options["transformer_options"] == {}  # the input is untouched
    weights = lora_weights(loaded.adapter.lora, "sd15")
    assert len(basic.patches) == len(advanced.patches) == len(weights) == 128
    for clone, strength in ((basic, 1.0), (advanced, 0.6)):
        patched = clone.patched_weights()
        for key, (up, down) in weights.items():
            assert torch.allclose(patched[key], before[key] + strength * up @ down, atol=1e-6), key
    (off,) = nodes["ApplyIPAdapterAdvanced"]().apply(model, loaded, prompt, 1.0, 0.0, 1.0, lora_strength=0.0)
    assert off.patches == {}


def frames_output(patched, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, 4, 8, 8, generator=g)
    context = torch.randn(frames, 77, 768, generator=g) * 0.1
    return forward(patched, x, torch.tensor([5.0]), context)


def test_faceless_frames_get_weight_zero_and_no_face_leaves_the_model(nodes, analyzer):
    loaded = loaded_faceid("sd15_faceid")
    images = comfy_image(face_image(ONE), np.zeros((512, 768, 3), np.uint8), face_image(TWO, seed=1))
    faces, _ = embed(nodes, analyzer, images, no_face="skip")
    prompt = encode(nodes, loaded, faces)
    model = model_patcher("sd15")
    apply = nodes["ApplyIPAdapterAdvanced"]().apply
    (per_frame,) = apply(model, loaded, prompt, 1.0, 0.0, 1.0, per_frame=True)
    (lora_only,) = apply(model, loaded, prompt, 0.0, 0.0, 1.0, per_frame=True)  # weight 0: the LoRA, no image
    out, plain = frames_output(per_frame), frames_output(lora_only)
    assert torch.allclose(out[1], plain[1], atol=1e-6, rtol=0)  # the faceless frame: as if no image prompt
    assert (out[0] - plain[0]).abs().max() > 1e-3 and (out[2] - plain[2]).abs().max() > 1e-3

    # without per_frame a faceless image is left out, as if it had not been given
    (with_faceless,) = apply(model, loaded, prompt, 1.0, 0.0, 1.0)
    found_only = encode(nodes, loaded, embed(nodes, analyzer, images[[0, 2]])[0])
    (without,) = apply(model, loaded, found_only, 1.0, 0.0, 1.0)
    assert torch.allclose(frames_output(with_faceless), frames_output(without), atol=1e-6, rtol=0)

    masks = torch.zeros(3, 8, 8)
    for i in range(3):
        masks[i, :, i * 2:i * 2 + 3] = 1  # one region per image; the faceless image's region goes with it
    (masked,) = apply(model, loaded, prompt, 1.0, 0.0, 1.0, attn_mask=masks)
    entry = next(iter(masked.model_options["transformer_options"]["patches_replace"]["attn2"].values())).entry
    assert torch.equal(entry.mask, masks[[0, 2]]) and entry.prompt.count == 2

    nobody = encode(nodes, loaded, embed(nodes, analyzer, images[1:2], no_face="skip")[0])
    assert nodes["ApplyIPAdapter"]().apply(model, loaded, nobody, 1.0, 0.0, 1.0) == (model,)
    assert apply(model, loaded, nobody, 1.0, 0.0, 1.0, per_frame=True) == (model,)


def test_wrong_recognizer_is_a_warning(nodes, analyzer, caplog):
    loaded = loaded_faceid("sd15_faceid")
    faces, _ = embed(nodes, analyzer, comfy_image(face_image(ONE)))
    other = dataclasses.replace(faces, recognizer="glintr100.onnx")
    with caplog.at_level(logging.WARNING, logger="ipadapter_dca"):
        prompt = encode(nodes, loaded, other)
    assert "embedded by glintr100.onnx, but sd15_faceid.bin was trained on buffalo_l's w600k_r50.onnx" in caplog.text
    assert prompt.cond.shape == (1, 4, 768)


# --- FaceID and the other adapters do not mix -------------------------------------------------------------

def test_faces_and_images_go_to_the_adapters_that_read_them(nodes, analyzer):
    from standin_host import loaded_adapter

    faceid, plus = loaded_faceid("sd15_faceid"), loaded_faceid("sd15_faceid_plus")
    clip_based = loaded_adapter("sd15_base")
    faces, _ = embed(nodes, analyzer, comfy_image(face_image(ONE)))
    image = comfy_image(face_image(ONE))
    clip = ClipVisionModel("vit-h")
    cases = [
        (dict(ipadapter=faceid, clip_vision=clip, image=image),
         r"sd15_faceid\.bin is an SD1\.5 FaceID IP-Adapter .*: it reads faces, not images\. Connect Load Face Analyzer"),
        (dict(ipadapter=faceid, faces=faces, image=image), r"'image' is not used by FaceID adapters"),
        (dict(ipadapter=clip_based, clip_vision=clip, faces=faces), r"'faces' is for FaceID adapters .*sd15_base"
                                                                     r"\.safetensors is an SD1\.5 .*connect the photo to 'image'"),
        (dict(ipadapter=clip_based, clip_vision=clip), r"connect 'image'"),
        (dict(ipadapter=faceid, faces="faces"), r"'faces' must come from this pack's Embed Faces node"),
        (dict(ipadapter=plus, faces=faces), r"also shows CLIP the face crop: connect 'clip_vision'"),
        (dict(ipadapter=plus, faces=faces, clip_vision=ClipVisionModel("vit-bigg")),
         r"needs CLIP ViT-H/14 hidden states \[257, 1280\] of the face crop; the connected CLIP vision model gives "
         r"\[257, 1664\]"),
    ]
    for inputs, message in cases:
        with pytest.raises(ValueError, match="^Encode Image Prompt: .*" + message):
            nodes["EncodeImagePrompt"]().encode(**inputs)

    prompt = encode(nodes, faceid, faces)
    model = model_patcher("sd15")
    with pytest.raises(ValueError, match=r"^Apply IP-Adapter \(advanced\): s_scale and lora_strength are for FaceID "
                                         r"adapters"):
        base_prompt = nodes["EncodeImagePrompt"]().encode(clip_based, clip, image)[0]
        nodes["ApplyIPAdapterAdvanced"]().apply(model, clip_based, base_prompt, 1.0, 0.0, 1.0, lora_strength=0.6)
    with pytest.raises(ValueError, match=r"^Apply IP-Adapter \(advanced\): 's_scale' must be a number from -1 to 5, got 9"):
        nodes["ApplyIPAdapterAdvanced"]().apply(model, faceid, prompt, 1.0, 0.0, 1.0, s_scale=9.0)
    with pytest.raises(ValueError, match=r"^Apply IP-Adapter Style & Composition: sd15_faceid\.bin is a FaceID adapter"):
        nodes["ApplyIPAdapterStyleComposition"]().apply(model, faceid, prompt, prompt, 1.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^Combine Image Prompts: image prompt 1 is a FaceID prompt"):
        nodes["CombineImagePrompts"]().combine(prompt, "concat", image_prompt_2=prompt)
    with pytest.raises(ValueError, match=r"^Save Image Prompt: FaceID image prompts are not saved"):
        nodes["SaveImagePrompt"]().save(prompt, "face")
    with pytest.raises(ValueError, match=r"^Apply IP-Adapter: the image prompt was encoded for 'sd15_faceid\.bin' but "
                                         r"is applied with 'sd15_faceid_plus\.bin'"):
        nodes["ApplyIPAdapter"]().apply(model, plus, prompt, 1.0, 0.0, 1.0)
    assert model.patches == {} and model.model_options["transformer_options"] == {}
