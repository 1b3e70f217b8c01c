"""Shipped workflows and node definitions against the real ComfyUI."""

import asyncio
import glob
import json
import os

import sys

import pytest
import torch
from comfy_host import PACK_DIR, boot
from workflow_format import check_workflow, definitions_from_input_types, dump_definitions, load_definitions, load_frontend_nodes

sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
import build_workflows  # noqa: E402

CORE_NODES = ["CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "EmptyLatentImage", "VAEDecode", "VAEEncode",
              "SaveImage", "LoadImage", "CLIPVisionLoader", "LoraLoader", "ControlNetLoader", "ControlNetApplyAdvanced",
              "SetLatentNoiseMask", "LoadImageMask", "ImageBatch", "UNETLoader", "DualCLIPLoader", "VAELoader",
              "FluxGuidance", "EmptySD3LatentImage", "TripleCLIPLoader", "ContextWindowsManual"]
OUR_NODES = ["LoadIPAdapter", "LoadIPAdapterAndEncoder", "EncodeImagePrompt", "CombineImagePrompts", "ApplyIPAdapter",
             "ApplyIPAdapterAdvanced", "ApplyIPAdapterStyleComposition", "SaveImagePrompt", "LoadImagePrompt",
             "LoadFaceAnalyzer", "EmbedFaces"]
WORKFLOWS = sorted(glob.glob(os.path.join(PACK_DIR, "workflows", "*.json")))


def intended_prompt(path):
    """The API prompt the workflow queues: the builder's, which the browser check proves the frontend makes."""
    graph = build_workflows.WORKFLOWS[os.path.basename(path)[:-5]]()
    graph.json()
    return graph.intended_prompt()


def real_definitions():
    nodes, _, _ = boot()
    defs = definitions_from_input_types({n: nodes.NODE_CLASS_MAPPINGS[n] for n in CORE_NODES + OUR_NODES})
    for d in defs.values():  # model-file combos list the user's folders: keep them open
        for entry in d["inputs"]:
            if isinstance(entry[1], list) and entry[0] in FILE_COMBOS:
                entry[1] = []
    return defs


FILE_COMBOS = {"ckpt_name", "clip_name", "lora_name", "control_net_name", "ipadapter_file", "image", "prompt_file",
               "unet_name", "clip_name1", "clip_name2", "clip_name3", "vae_name", "clip_vision", "pack"}


# inputs core nodes gained after ComfyUI 0.3.64 (the oldest version tested): an older host lacks them
ADDED_SINCE_0_3 = {"ContextWindowsManual": {"freenoise"}}


def without_choices(defs):
    return {name: [[n, "COMBO" if isinstance(k, list) else k, o, opt] for n, k, o, opt in d["inputs"]
                   if n not in ADDED_SINCE_0_3.get(name, ())]
            for name, d in defs.items()}


def test_node_definitions_fixture_matches_the_real_host():
    """tests/fixtures/node_defs.json is what CI checks workflows against; the real host wins.
    UPDATE_NODE_DEFS=1 rewrites it from this host. Other versions must agree on every input and widget;
    their combo choices (sampler lists grow with each release) may differ."""
    defs = json.loads(json.dumps(real_definitions()))
    import comfyui_version

    fixture = load_definitions()
    if os.environ.get("UPDATE_NODE_DEFS"):
        dump_definitions(defs, comfyui_version.__version__)
        fixture = load_definitions()
    if fixture.pop("_comfyui_version") == comfyui_version.__version__:
        assert fixture == defs
    else:
        assert without_choices(fixture) == without_choices(defs)


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_passes_comfyui_prompt_validation(path, tmp_path_factory):
    boot()
    import execution
    import folder_paths

    with open(path) as f:
        workflow = json.load(f)
    defs = real_definitions()
    assert check_workflow(workflow, defs, load_frontend_nodes()) == []
    prompt = intended_prompt(path)
    # every model and image the workflow names must exist for validation: create empty stand-ins
    root = tmp_path_factory.mktemp("models")
    folders = {"ckpt_name": "checkpoints", "clip_name": "clip_vision", "lora_name": "loras",
               "control_net_name": "controlnet", "ipadapter_file": "ipadapter", "unet_name": "diffusion_models",
               "clip_name1": "text_encoders", "clip_name2": "text_encoders", "clip_name3": "text_encoders",
               "vae_name": "vae"}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if name in folders:
                os.makedirs(root / folders[name], exist_ok=True)
                open(root / folders[name] / value, "wb").close()
                folder_paths.add_model_folder_path(folders[name], str(root / folders[name]))
            elif name == "image" and node["class_type"] in ("LoadImage", "LoadImageMask"):
                from PIL import Image

                Image.new("RGB", (64, 64)).save(os.path.join(folder_paths.get_input_directory(), value))
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    assert valid, (error, node_errors)
    assert outputs


class _Server:
    """What PromptExecutor needs of a server when nothing listens."""

    client_id = None
    last_node_id = None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Every model file a workflow names, with random weights, in temporary model folders (deleted afterwards)."""
    boot()
    import folder_paths
    import synthetic_files as sf
    from safetensors.torch import save_file
    from synthetic import flatten, make_checkpoint

    root = tmp_path_factory.mktemp("synthetic_models")
    made = {}

    def make(folder, name, build):
        if name in made:  # the Flux and SD3.5 runs share clip_l, T5-XXL and SigLIP: build each once
            return
        os.makedirs(root / folder, exist_ok=True)
        path = str(root / folder / name)
        with torch.inference_mode():
            build(path)
        folder_paths.add_model_folder_path(folder, str(root / folder), is_default=True)
        made[name] = path

    make("checkpoints", "v1-5-pruned-emaonly.safetensors", sf.sd15_checkpoint)
    make("clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", sf.clip_vision_vit_h)
    make("controlnet", "control_v11p_sd15_canny.pth", sf.sd15_controlnet)
    make("loras", "your_sd15_lora.safetensors", sf.sd15_lora)
    if os.environ.get("RUN_SDXL_WORKFLOW"):
        make("checkpoints", "sd_xl_base_1.0.safetensors", sf.sdxl_checkpoint)
    if os.environ.get("RUN_FLUX_WORKFLOW"):  # FLUX.1-dev at full width, 1 double + 1 single block; full T5-XXL
        make("text_encoders", "t5xxl_fp16.safetensors", sf.t5xxl)
        make("text_encoders", "clip_l.safetensors", sf.clip_l)
        make("diffusion_models", "flux1-dev.safetensors", sf.flux_unet)
        make("vae", "ae.safetensors", sf.flux_vae)
        make("clip_vision", "clip-vit-large-patch14.safetensors", sf.clip_vision_vit_l)
        make("clip_vision", "siglip-so400m-patch14-384.safetensors", sf.clip_vision_siglip_384)
        make("ipadapter", "flux-ip-adapter.safetensors", lambda p: sf.flux_xlabs_adapter(p, doubles=1))
        make("ipadapter", "instantx-flux1-dev-ip-adapter.bin", lambda p: sf.flux_instantx_adapter(p, layers=2))
    if os.environ.get("RUN_SD3_WORKFLOW"):  # SD3.5-Large's layout at 2 blocks of 128 (see sd35_large_checkpoint)
        make("text_encoders", "t5xxl_fp16.safetensors", sf.t5xxl)
        make("text_encoders", "clip_l.safetensors", sf.clip_l)
        make("text_encoders", "clip_g.safetensors", sf.clip_g)
        make("checkpoints", "sd3.5_large.safetensors", lambda p: sf.sd35_large_checkpoint(p, depth=2))
        make("clip_vision", "siglip-so400m-patch14-384.safetensors", sf.clip_vision_siglip_384)
        make("ipadapter", "instantx-sd3.5-large-ip-adapter.bin", lambda p: sf.sd35_instantx_adapter(p, blocks=2, hidden=128))
    for name, variant in (("ip-adapter_sd15.safetensors", "sd15_base"), ("ip-adapter-plus_sd15.safetensors", "sd15_plus"),
                          ("ip-adapter-plus-face_sd15.safetensors", "sd15_plus"),
                          ("ip-adapter_sdxl_vit-h.safetensors", "sdxl_vith"),
                          ("ip-adapter-plus_sdxl_vit-h.safetensors", "sdxl_plus")):
        make("ipadapter", name, lambda p, v=variant: save_file(flatten(make_checkpoint(v)), p))
    # FaceID: the h94 files' layouts at full size (the LoRA at rank 128), and buffalo_l as tiny synthetic ONNX models
    from synthetic_faceid import make_faceid_checkpoint

    for name, variant in (("ip-adapter-faceid_sd15.bin", "sd15_faceid"),
                          ("ip-adapter-faceid-plusv2_sd15.bin", "sd15_faceid_plus")):
        make("ipadapter", name, lambda p, v=variant: torch.save(make_faceid_checkpoint(v), p))
    if os.environ.get("RUN_SDXL_WORKFLOW"):
        make("ipadapter", "ip-adapter-faceid_sdxl.bin", lambda p: torch.save(make_faceid_checkpoint("sdxl_faceid"), p))
    face_models(root)
    yield made
    for path in made.values():  # pytest keeps the last 3 base temp dirs: don't leave 12 GB of weights in each
        os.remove(path)


def face_models(root):
    """buffalo_l's detector and recognizer as the synthetic ONNX models of tests/synthetic_faces.py (a bright square
    on black is a face), in <root>/insightface/models/buffalo_l, registered as ComfyUI's insightface folder."""
    import folder_paths
    import synthetic_faces

    synthetic_faces.write_pack(root)
    folder_paths.add_model_folder_path("insightface", str(root / "insightface"), is_default=True)


def input_images(prompt):
    """Random images for every LoadImage; an inpainting source gets a transparent hole (its mask). Images named
    face* hold one synthetic face (tests/synthetic_faces.py), no_face* are black."""
    import folder_paths
    import numpy as np
    import synthetic_faces
    from PIL import Image

    rng = np.random.default_rng(0)
    for node in prompt.values():
        if node["class_type"] in ("LoadImage", "LoadImageMask"):
            name = node["inputs"]["image"]
            pixels = rng.integers(0, 255, (96, 128, 4), dtype=np.uint8)
            pixels[..., 3] = 255
            pixels[24:72, 32:96, 3] = 0  # LoadImage's mask is 1 where alpha is 0
            if name.startswith(("face", "no_face")):
                face = [(160, 96, 192)] if name.startswith("face") else []
                pixels = synthetic_faces.squares_image(face, 384, 512, seed=len(name))[..., ::-1]  # BGR -> RGB
            Image.fromarray(np.ascontiguousarray(pixels)).save(os.path.join(folder_paths.get_input_directory(), name))


@pytest.fixture(scope="module")
def executor():
    """One executor for all runs, as in a ComfyUI session: its cache keeps the loaded models between prompts."""
    boot()
    import inspect

    import execution

    # v0.8.0 takes cache_args (with a required "ram" entry); v0.3.64 took cache_size
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(_Server(), cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
    return execution.PromptExecutor(_Server(), cache_type=execution.CacheType.CLASSIC)


def needs_sdxl(path):
    if "sdxl" in os.path.basename(path) and not os.environ.get("RUN_SDXL_WORKFLOW"):
        pytest.skip("the SDXL run builds a 7 GB checkpoint and needs about 20 GB of RAM: set RUN_SDXL_WORKFLOW=1")


def needs_flux(path):
    if "flux" in os.path.basename(path) and not os.environ.get("RUN_FLUX_WORKFLOW"):
        pytest.skip("the Flux runs build 12 GB of files (T5-XXL alone is 9.5 GB, full size) and need about 14 GB of "
                    "RAM (20 GB at the peak, while T5 is built): set RUN_FLUX_WORKFLOW=1")


_last_run = {}


def run(executor, prompt):
    """Validate and execute an API prompt as ComfyUI's queue does, with random input images."""
    import execution

    input_images(prompt)
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("run", prompt, None))
    assert valid, (error, node_errors)
    executor.execute(prompt, "run", {}, outputs)
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    assert executor.success, errors


def needs_sd3(path):
    if "sd35" in os.path.basename(path) and not os.environ.get("RUN_SD3_WORKFLOW"):
        pytest.skip("the SD3.5 run needs full-size text encoders (T5-XXL 9.5 GB, CLIP-G) and about 20 GB of RAM at "
                    "its peak: set RUN_SD3_WORKFLOW=1")


def make_room(executor, family):
    """Before a big family's first run, drop what earlier runs cached; runs of one family share their loaders."""
    import gc

    import comfy.model_management

    if _last_run.get("family") != family:
        executor.reset()
        comfy.model_management.unload_all_models()
        gc.collect()
    _last_run["family"] = family


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_runs_with_synthetic_weights(path, model_files, executor):
    """The shipped workflow, as ComfyUI's executor runs it, with 2 steps at 256x256 to fit a CPU."""
    import comfy.model_management

    needs_sdxl(path)
    needs_flux(path)
    needs_sd3(path)
    name = os.path.basename(path)
    import comfyui_version

    if "context_windows" in name and comfyui_version.__version__.startswith("0.3."):
        pytest.skip("ComfyUI 0.3.x context windows fail on image batches (dim 0) before any model call")
    if "sdxl" in name:  # make room: a full-size SDXL in fp32 fills most of 24 GB on its own
        import gc

        executor.reset()
        comfy.model_management.unload_all_models()
        gc.collect()
    # the Flux runs hold T5-XXL (9.5 GB in fp16) and share it, with the Flux model, through the executor's cache
    make_room(executor, "flux" if "flux" in name else "sd35" if "sd35" in name else "other")

    prompt = intended_prompt(path)
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            node["inputs"].update(width=256, height=256)
    run(executor, prompt)


CONVERTED_RUNS = ["plus_advanced_model_loader", "plus_batch_and_layers", "plus_embeds_pipeline", "plus_unified_simple",
                  "plus_faceid_unified", "plus_faceid_batch_insightface"]


@pytest.mark.parametrize("name", CONVERTED_RUNS)
def test_converted_plus_workflow_runs_with_synthetic_weights(name, model_files, executor):
    """A ComfyUI_IPAdapter_plus workflow (tests/plus_fixtures.py), converted as the canvas command converts it on
    this server (presets resolved against models/ipadapter), then run as ComfyUI runs it. The image encoder is
    found in models/clip_vision by content."""
    import folder_paths
    from plus_fixtures import fixture
    from workflow_format import api_prompt

    from converter import convert_workflow

    make_room(executor, "other")
    workflow, report = convert_workflow(fixture(name), {"ipadapter": folder_paths.get_filename_list("ipadapter")})
    assert report.left == []
    assert check_workflow(workflow, real_definitions(), load_frontend_nodes()) == []
    prompt = api_prompt(workflow, real_definitions(), load_frontend_nodes())
    assert not any(node["class_type"].startswith("IPAdapter") for node in prompt.values())
    run(executor, prompt)
