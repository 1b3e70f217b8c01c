"""Shipped workflows and node definitions against the real ComfyUI."""

import asyncio
import glob
import json
import os

import pytest
import torch
from comfy_host import PACK_DIR, boot
from workflow_format import check_workflow, definitions_from_input_types, dump_definitions, load_definitions, to_api_prompt

CORE_NODES = ["CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "EmptyLatentImage", "VAEDecode", "VAEEncode",
              "SaveImage", "LoadImage", "CLIPVisionLoader", "LoraLoader", "ControlNetLoader", "ControlNetApplyAdvanced",
              "SetLatentNoiseMask"]
OUR_NODES = ["LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter"]
WORKFLOWS = sorted(glob.glob(os.path.join(PACK_DIR, "workflows", "*.json")))


def real_definitions():
    nodes, _, _ = boot()
    defs = definitions_from_input_types({n: nodes.NODE_CLASS_MAPPINGS[n] for n in CORE_NODES + OUR_NODES})
    for d in defs.values():  # model-file combos list the user's folders: keep them open
        for entry in d["inputs"]:
            if isinstance(entry[1], list) and entry[0] in FILE_COMBOS:
                entry[1] = []
    return defs


FILE_COMBOS = {"ckpt_name", "clip_name", "lora_name", "control_net_name", "ipadapter_file", "image"}


def without_choices(defs):
    return {name: [[n, "COMBO" if isinstance(k, list) else k, o, opt] for n, k, o, opt in d["inputs"]]
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
    assert check_workflow(workflow, defs) == []
    prompt = to_api_prompt(workflow, defs)
    # every model and image the workflow names must exist for validation: create empty stand-ins
    root = tmp_path_factory.mktemp("models")
    folders = {"ckpt_name": "checkpoints", "clip_name": "clip_vision", "lora_name": "loras",
               "control_net_name": "controlnet", "ipadapter_file": "ipadapter"}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if name in folders:
                os.makedirs(root / folders[name], exist_ok=True)
                open(root / folders[name] / value, "wb").close()
                folder_paths.add_model_folder_path(folders[name], str(root / folders[name]))
            elif name == "image" and node["class_type"] == "LoadImage":
                from PIL import Image

                Image.new("RGB", (64, 64)).save(os.path.join(folder_paths.get_input_directory(), value))
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    assert valid, (error, node_errors)
    assert outputs
