"""Bad input, case by case: the error type, a message that names the input, says what was expected and what to do,
and nothing half-applied (the incoming model and the loader's cache are as they were).

Each case also names the fragment under which README's troubleshooting table lists it.
"""

import copy
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from standin_host import ClipVisionModel, folder_paths, load_pack, loaded_adapter, model_patcher, pack_module
from synthetic import flatten, make_checkpoint

import ipadapter_core as core

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(folder_paths.models_dir, "ipadapter")


class Payload:
    def __reduce__(self):
        return (open, (os.path.join(FOLDER, "pwned.txt"), "w"))


def write(name, make):
    os.makedirs(FOLDER, exist_ok=True)
    path = os.path.join(FOLDER, name)
    make(path)
    return name


def raw_bytes(data):
    return lambda path: open(path, "wb").write(data)


def cut(make, fraction=0.5):
    def build(path):
        make(path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: int(len(data) * fraction)])
    return build


def st(tensors):
    return lambda path: save_file({k: torch.zeros(s) if isinstance(s, tuple) else s for k, s in tensors.items()}, path)


def tsave(obj):
    return lambda path: torch.save(obj, path)


def faceid():
    from synthetic_faceid import make_faceid_checkpoint

    return make_faceid_checkpoint("sd15_faceid", rank=4)


def edited_faceid(edit):
    nested = faceid()
    edit(nested)
    return nested


def edited(variant, edit):
    nested = make_checkpoint(variant)
    edit(nested)
    return nested


SD15_BASE = lambda path: save_file(flatten(make_checkpoint("sd15_base")), path)  # noqa: E731

# (id, file name, how to make it, message fragments, README fragment)
FILE_CASES = [
    ("empty-safetensors", "empty.safetensors", raw_bytes(b""), ["'empty.safetensors' is empty (0 bytes)", "Download it again"], "is empty (0 bytes)"),
    ("empty-bin", "empty.bin", raw_bytes(b""), ["'empty.bin' is empty (0 bytes)"], "is empty (0 bytes)"),
    ("truncated-safetensors", "cut.safetensors", cut(SD15_BASE), ["'cut.safetensors' is not a readable .safetensors file", "download it again"], "is not a readable .safetensors file"),
    ("truncated-bin", "cut.bin", cut(tsave(make_checkpoint("sd15_base"))), ["'cut.bin' could not be read as a PyTorch file", "truncated or corrupt"], "could not be read as a PyTorch file"),
    ("text-as-safetensors", "notes.safetensors", raw_bytes(b"these are my notes" * 10), ["'notes.safetensors' is not a readable .safetensors file"], "is not a readable .safetensors file"),
    ("garbage-bin", "garbage.bin", raw_bytes(bytes(range(256)) * 8), ["'garbage.bin' was refused: it is not a plain tensor file (it is damaged", "Download it again"], "was refused: it is not a plain tensor file"),
    ("pickle-with-code", "evil.bin", lambda p: pickle.dump({"image_proj": Payload()}, open(p, "wb")), ["'evil.bin' was refused: it is not a plain tensor file", "use the .safetensors version"], "was refused: it is not a plain tensor file"),
    ("torch-zip-with-code", "evil2.bin", tsave({"image_proj": {"x": Payload()}}), ["'evil2.bin' was refused: it is not a plain tensor file (it asks to run io.open)"], "was refused: it is not a plain tensor file"),
    ("lora", "my_lora.safetensors", st({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}), ["'my_lora.safetensors' is not an IP-Adapter file", "LoRA", "models/loras"], "it looks like a LoRA"),
    ("unet-checkpoint", "v1-5.safetensors", st({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}), ["'v1-5.safetensors' is not an IP-Adapter file", "models/checkpoints"], "Stable Diffusion checkpoint or UNet"),
    ("clip-vision", "clip_h.safetensors", st({"vision_model.encoder.layers.0.mlp.fc1.weight": (8, 8)}), ["'clip_h.safetensors' is not an IP-Adapter file", "models/clip_vision"], "looks like a CLIP vision encoder"),
    ("faceid-lora-cut", "ip-adapter-faceid_sd15.bin", tsave(edited_faceid(lambda n: n["ip_adapter"].pop("5.to_v_lora.up.weight"))), ["FaceID file 'ip-adapter-faceid_sd15.bin' has an incomplete LoRA (1 of 256 tensors missing, e.g. 5.to_v_lora.up.weight)", "h94/IP-Adapter-FaceID"], "has an incomplete LoRA"),
    ("faceid-plus", "faceid-plus.bin", tsave(edited("sd15_base", lambda n: n["image_proj"].update({"perceiver_resampler.proj_in.weight": torch.zeros(768, 1280)}))), ["FaceID file 'faceid-plus.bin' has an image projection that matches no released FaceID adapter", "h94/IP-Adapter-FaceID"], "matches no released FaceID adapter"),
    ("kolors", "kolors.bin", tsave(edited("sdxl_plus", lambda n: n["image_proj"].update({"proj_in.weight": torch.zeros(2048, 1024)}))), ["'kolors.bin' is a Kolors adapter"], "is a Kolors adapter"),
    ("missing-layer", "partial.bin", tsave(edited("sd15_base", lambda n: n["ip_adapter"].pop("17.to_k_ip.weight"))), ["'partial.bin' looks like a SD1.5 adapter", "missing: 17.to_k_ip.weight", "download it again"], "attention weights do not match"),
    ("wrong-layer-shape", "reshaped.bin", tsave(edited("sd15_base", lambda n: n["ip_adapter"].update({"3.to_v_ip.weight": torch.zeros(640, 768)}))), ["'reshaped.bin'", "wrong shape: 3.to_v_ip.weight (640, 768) (expected (320, 768))"], "attention weights do not match"),
    ("sd2-width", "sd21.bin", tsave({"image_proj": {"proj.weight": torch.zeros(4096, 1024)}, "ip_adapter": {"1.to_k_ip.weight": torch.zeros(320, 1024)}}), ["'sd21.bin' is for a model with cross-attention width 1024", "SD1.5 (768) and SDXL (2048)"], "this pack supports SD1.5 (768) and SDXL (2048)"),
    ("not-a-dict", "list.bin", tsave([torch.zeros(3)]), ["'list.bin' holds a list, not a dictionary of tensors"], "not a dictionary of tensors"),
    ("no-ip-adapter-part", "half.bin", tsave({"image_proj": make_checkpoint("sd15_base")["image_proj"]}), ["'half.bin' has 'image_proj' but no 'ip_adapter' weights", "download it again"], "has 'image_proj' but no 'ip_adapter'"),
    ("unknown-projection", "odd.bin", tsave(edited("sd15_base", lambda n: n["image_proj"].update({"proj.weight": torch.zeros(3072, 512)}))), ["'odd.bin' has an image projection that does not match", "found 512"], "does not match any released adapter"),
]


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_adapter_files(case, pack):
    _, name, make, fragments, _ = case
    write(name, make)
    loader = pack_module("nodes.loader")
    cached = dict(loader._cache)
    with pytest.raises(core.AdapterFileError) as err:
        pack.NODE_CLASS_MAPPINGS["LoadIPAdapter"]().load(name)
    text = str(err.value)
    assert text.startswith("Load IP-Adapter: ")
    for fragment in fragments:
        assert fragment in text, text
    assert loader._cache == cached  # nothing half-loaded is kept
    assert not os.path.exists(os.path.join(FOLDER, "pwned.txt"))  # no code ran


def test_missing_adapter_file(pack):
    with pytest.raises(FileNotFoundError, match="ipadapter.*'gone.safetensors' not found"):
        pack.NODE_CLASS_MAPPINGS["LoadIPAdapter"]().load("gone.safetensors")


# --- encoders: every wrong pairing between adapters and CLIP vision models --------------------------------------

ENCODER_CASES = [  # adapter variant, encoder that does not fit, the file the message must name
    ("sd15_base", "vit-bigg", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    ("sd15_plus", "vit-bigg", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    ("sd15_full", "vit-bigg", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    ("sd15_vitg", "vit-h", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"),
    ("sdxl_bigg", "vit-h", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"),
    ("sdxl_vith", "vit-bigg", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    ("sdxl_plus", "vit-bigg", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
]


@pytest.mark.parametrize("variant, encoder, needed", ENCODER_CASES, ids=[f"{v}-with-{e}" for v, e, _ in ENCODER_CASES])
def test_wrong_clip_vision(variant, encoder, needed, pack):
    with pytest.raises(core.ImagePromptError) as err:
        pack.NODE_CLASS_MAPPINGS["EncodeImagePrompt"]().encode(loaded_adapter(variant), ClipVisionModel(encoder),
                                                               torch.rand(1, 64, 64, 3), "center crop")
    text = str(err.value)
    assert text.startswith("Encode Image Prompt: the connected CLIP vision model gives")
    assert "expects [batch, " in text and f"Load the CLIP vision model {needed}" in text


# --- models: every wrong pairing between adapters and base models -----------------------------------------------

MODEL_CASES = [("sd15_base", "sdxl", "SD1.5", "SDXL"), ("sd15_plus", "sdxl", "SD1.5", "SDXL"),
               ("sd15_full", "sdxl", "SD1.5", "SDXL"), ("sdxl_vith", "sd15", "SDXL", "SD1.5"),
               ("sdxl_plus", "sd15", "SDXL", "SD1.5")]


def prompt_for(loaded):
    spec = loaded.spec
    shape = (1, spec.encoder.width) if spec.encoder.output == "image_embeds" else (1, 257, spec.encoder.width)
    return pack_module("nodes.encode").make_prompt(loaded, torch.rand(*shape), torch.rand(*shape), torch.ones(1))


@pytest.fixture(scope="module")
def models():
    return {layout: model_patcher(layout) for layout in ("sd15", "sdxl")}


def assert_refused(node_call, model, fragments, exc=None):
    exc = exc or pack_module("nodes.common").NodeInputError
    before = copy.deepcopy(model.model_options)
    with pytest.raises(exc) as err:
        node_call()
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    assert model.model_options == before


@pytest.mark.parametrize("variant, layout, adapter_family, model_family", MODEL_CASES,
                         ids=[f"{v}-on-{m}" for v, m, _, _ in MODEL_CASES])
def test_adapter_for_the_other_family(variant, layout, adapter_family, model_family, pack, models):
    loaded = loaded_adapter(variant)
    apply = pack.NODE_CLASS_MAPPINGS["ApplyIPAdapter"]().apply
    assert_refused(lambda: apply(models[layout], loaded, prompt_for(loaded), 1.0, 0.0, 1.0), models[layout],
                   [f"Apply IP-Adapter: '{variant}.safetensors' is an {adapter_family} IP-Adapter",
                    "the model does not fit it", f"The model looks like {model_family}: use an {model_family} IP-Adapter"])


def test_model_that_is_not_a_unet(pack):
    import comfy.model_patcher

    class Flux(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)

    model = comfy.model_patcher.ModelPatcher(Flux(), torch.device("cpu"), torch.device("cpu"))
    loaded = loaded_adapter("sd15_base")
    apply = pack.NODE_CLASS_MAPPINGS["ApplyIPAdapter"]().apply
    assert_refused(lambda: apply(model, loaded, prompt_for(loaded), 1.0, 0.0, 1.0), model,
                   ["Apply IP-Adapter: the model is a Linear, not an SD1.5 or SDXL UNet"])


# --- images -------------------------------------------------------------------------------------------------------

IMAGE_CASES = [
    ("empty-batch", dict(image=torch.zeros(0, 64, 64, 3)), ["'image' is an empty batch (0 images)", "Connect at least one image"]),
    ("one-pixel", dict(image=torch.rand(1, 1, 1, 3)), ["'image' is 1x1 pixels", "at least 16 pixels", "Use a larger image"]),
    ("thin-strip", dict(image=torch.rand(1, 8, 512, 3)), ["'image' is 512x8 pixels"]),
    ("not-a-batch", dict(image=torch.rand(64, 64, 3)), ["'image' must be an IMAGE batch [batch, height, width, channels], got [64, 64, 3]"]),
    ("two-channels", dict(image=torch.rand(1, 64, 64, 2)), ["'image' has 2 channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)"]),
    ("negative-batch", dict(image=torch.rand(3, 64, 64, 3), negative_image=torch.rand(2, 64, 64, 3)), ["'negative_image' has 2 images; give 1, or one per reference image (3)"]),
    ("negative-empty", dict(negative_image=torch.zeros(0, 64, 64, 3)), ["'negative_image' is an empty batch"]),
    ("bad-crop", dict(crop="fit"), ["'crop' must be one of ['center crop', 'pad', 'squash', 'tiles'], got 'fit'"]),
    ("foreign-adapter", dict(ipadapter={"ipadapter": {"model": {}}}), ["'ipadapter' must come from a Load IP-Adapter node of this pack"]),
]


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_bad_images(case, pack):
    _, kwargs, fragments = case
    args = dict(ipadapter=loaded_adapter("sd15_base"), clip_vision=ClipVisionModel("vit-h"), image=torch.rand(1, 64, 64, 3),
                crop="center crop")
    args.update(kwargs)
    with pytest.raises(pack_module("nodes.common").NodeInputError) as err:
        pack.NODE_CLASS_MAPPINGS["EncodeImagePrompt"]().encode(**args)
    assert str(err.value).startswith("Encode Image Prompt: ")
    for fragment in fragments:
        assert fragment in str(err.value)


def test_odd_but_valid_images_are_encoded(pack):
    encode = pack.NODE_CLASS_MAPPINGS["EncodeImagePrompt"]().encode
    loaded, vit_h = loaded_adapter("sd15_base"), ClipVisionModel("vit-h")
    for image in (torch.rand(1, 64, 64, 1), torch.rand(1, 64, 64, 4), torch.rand(1, 2048, 3072, 3), torch.rand(1, 16, 16, 3)):
        (prompt,) = encode(loaded, vit_h, image, "center crop")
        assert prompt.cond.shape == (1, 4, 768) and torch.isfinite(prompt.cond).all()


# --- apply: weights, timing, masks, wiring --------------------------------------------------------------------

APPLY_CASES = [
    ("nan-weight", dict(weight=float("nan")), ["'weight' must be a number from -1 to 5, got nan"]),
    ("inf-weight", dict(weight=float("inf")), ["'weight' must be a number from -1 to 5, got inf"]),
    ("negative-inf-weight", dict(weight=float("-inf")), ["'weight' must be a number from -1 to 5, got -inf"]),
    ("weight-too-large", dict(weight=7.0), ["'weight' must be a number from -1 to 5, got 7.0"]),
    ("start-after-end", dict(start_percent=0.9, end_percent=0.1), ["'start_percent' (0.9) is after 'end_percent' (0.1)", "Make start_percent smaller"]),
    ("end-above-one", dict(end_percent=1.5), ["'end_percent' must be from 0 to 1, got 1.5"]),
    ("start-negative", dict(start_percent=-0.1), ["'start_percent' must be from 0 to 1, got -0.1"]),
    ("nan-start", dict(start_percent=float("nan")), ["'start_percent' must be from 0 to 1, got nan"]),
    ("zero-mask", dict(attn_mask=torch.zeros(1, 64, 64)), ["'attn_mask' is empty (all zeros)", "Paint the area"]),
    ("mask-batch", dict(attn_mask=torch.ones(3, 64, 64)), ["'attn_mask' holds 3 masks, but the image prompt has 1 reference image(s); give 1 mask, or one per reference image (1)"]),
    ("nan-mask", dict(attn_mask=torch.full((1, 64, 64), float("nan"))), ["'attn_mask' contains NaN or infinite values"]),
    ("mask-4d", dict(attn_mask=torch.ones(1, 1, 64, 64)), ["'attn_mask' must be a MASK [height, width] or [masks, height, width], got shape [1, 1, 64, 64]"]),
    ("empty-mask", dict(attn_mask=torch.ones(1, 0, 64)), ["'attn_mask' must be a MASK"]),
    ("foreign-adapter", dict(ipadapter={"ipadapter": {}}), ["'ipadapter' must come from a Load IP-Adapter node of this pack"]),
    ("foreign-prompt", dict(image_prompt=({"cond": torch.zeros(1)},)), ["'image_prompt' must come from an Encode Image Prompt node of this pack"]),
    ("prompt-of-other-adapter", dict(image_prompt="other"), ["the image prompt was encoded for 'sd15_base.safetensors' but is applied with 'sd15_plus.safetensors'", "Connect the same Load IP-Adapter node"]),
]


@pytest.mark.parametrize("case", APPLY_CASES, ids=[c[0] for c in APPLY_CASES])
def test_bad_apply_inputs(case, pack, models):
    _, kwargs, fragments = case
    loaded = loaded_adapter("sd15_plus")
    args = dict(model=models["sd15"], ipadapter=loaded, image_prompt=prompt_for(loaded), weight=1.0, start_percent=0.0,
                end_percent=1.0)
    if kwargs.get("image_prompt") == "other":
        kwargs = dict(image_prompt=prompt_for(loaded_adapter("sd15_base")))
    args.update(kwargs)
    apply = pack.NODE_CLASS_MAPPINGS["ApplyIPAdapter"]().apply
    assert_refused(lambda: apply(**args), models["sd15"], [f"Apply IP-Adapter: {fragments[0]}"] + fragments[1:])


def test_masks_of_any_size_are_resized_not_refused(pack, models):
    loaded = loaded_adapter("sd15_plus")
    apply = pack.NODE_CLASS_MAPPINGS["ApplyIPAdapter"]().apply
    for mask in (torch.ones(7, 300), torch.rand(1, 1000, 10) + 0.1, torch.ones(2048, 2048)):
        (patched,) = apply(models["sd15"], loaded, prompt_for(loaded), 1.0, 0.0, 1.0, mask)
        assert patched is not models["sd15"]


# --- the README lists every message ----------------------------------------------------------------------------


MESSAGES = [  # the fixed part of every message the nodes raise, as README's troubleshooting table quotes it
    "the connected CLIP vision model gives", "is an empty batch", "pixels; reference images need at least",
    "must be an IMAGE batch", "has N channels", "'negative_image' has N images", "'crop' must be one of",
    "must come from", "not an SD1.5 or SDXL UNet", "the model does not fit it", "the image prompt was encoded for",
    "'weight' must be a number from -1 to 5", "is after 'end_percent'", "must be from 0 to 1",
    "'attn_mask' is empty (all zeros)", "'attn_mask' holds N masks, but the image prompt has", "'attn_mask' contains NaN or infinite values",
    "'attn_mask' must be a MASK", "'image_weights' has N values for M images", "is not a number",
    "combine 'subtract' needs at least two images", "the image weights add up to 0",
    "'content_text' works with adapters that read CLIP's global image embedding", "'content_text' is a N-wide text embedding",
    "'content_text' has no pooled text embedding", "layer_weights entry N", "'frame_weights' needs per_frame on",
    "'frame_weights' has N values for M frames", "per_frame is on with N reference images, but the latent batch has M frames",
    "'weight_type' / 'kv_scaling' must be one of", "is not an image prompt saved by Save Image Prompt",
    "must stay inside ComfyUI's output folder", "does not end in a file name",
    "must name a file inside ComfyUI's input or output folder",
    "and this is an SD1.5/SDXL IP-Adapter", "but the model is an SD1.5/SDXL UNet", "which Flux.1 IP-Adapters were not trained for",
    "lacks the attention-pooling head", "was not found in models/clip_vision", "is defined on SD1.5/SDXL UNet layers",
    "per_frame and frame_weights are for SD1.5/SDXL batches", "with Flux give one mask",
    "InstantStyle's style and composition blocks are SD1.5/SDXL UNet layers", "with SD3.5 give one mask",
    "not SD3.5-Large", "It needs SD3.5-Large",
    "and no file in ComfyUI/models/clip_vision is one", "is not a vision model ComfyUI can load",
    "image prompts only combine for the same adapter", "some of these image prompts have a negative image and some do not",
    # FaceID (tests/test_faceid_nodes.py, tests/test_faces.py, tests/test_faceid_lora.py)
    "Face models not found: expected the folder", "one folder too deep", "holds no .onnx files", "No face detector in",
    "No face recognition model in", "Face analysis needs onnxruntime or insightface", "found no face in image N of M",
    "found fewer than N faces", "a face needs at least 32 pixels", "multiple of 112 or 128", "it reads faces, not images",
    "'faces' is for FaceID adapters", "'image' is not used by FaceID adapters", "also shows CLIP the face crop",
    "needs CLIP ViT-H/14 hidden states", "s_scale and lora_strength are for FaceID adapters",
    "attention weights, and the model has only", "needs no image encoder",
]


def test_readme_troubleshooting_lists_every_error():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    troubleshooting = readme[readme.index("## Troubleshooting"):]
    missing = sorted(f for f in {c[4] for c in FILE_CASES} | set(MESSAGES) if f not in troubleshooting)
    assert missing == []


def test_case_count():
    count = (len(FILE_CASES) + 1 + len(ENCODER_CASES) + len(MODEL_CASES) + 1 + len(IMAGE_CASES) + len(APPLY_CASES))
    assert count >= 40, count
