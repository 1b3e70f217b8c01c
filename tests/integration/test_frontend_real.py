"""The browser check against the real ComfyUI: its server on 127.0.0.1 (this pack its only custom node, no models,
no images), its own frontend in headless Chromium, every shipped workflow dropped on the page.

Beyond what tests/test_frontend.py checks through the stand-in, here the prompt the frontend makes is sent to the
real server's /api/prompt, and its validation must find nothing wrong but the model and image files that are not
installed. The responses the frontend got are what tests/fixtures/frontend_recording.json must hold (the stand-in
serves that file in CI): UPDATE_FRONTEND_RECORDING=1 rewrites it from this run; otherwise a difference fails.
"""

import json
import os
import sys
import tempfile

import pytest
from comfy_host import COMFYUI_PATH, PACK_DIR

sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
import build_workflows  # noqa: E402

SCREENSHOTS = os.path.join(tempfile.gettempdir(), "ipadapter-dca-browser-check-real")
from frontend_browser import MODEL_FILE_INPUTS  # noqa: E402

FILE_INPUTS = MODEL_FILE_INPUTS | {"prompt_file"}
IMAGE_NODES = {"LoadImage", "LoadImageMask"}


@pytest.fixture(scope="module")
def server():
    from frontend_browser import chromium_path

    if chromium_path() is None:
        pytest.skip("the browser check needs Debian's chromium (apt-get install chromium) and playwright")
    from comfy_server import ComfyServer

    import re

    from frontend_server import load_recording

    with open(os.path.join(COMFYUI_PATH, "comfyui_version.py")) as f:
        version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)
    recorded = load_recording()["_comfyui_version"]
    if version != recorded:
        pytest.skip(f"the browser check is of ComfyUI {recorded} and the frontend it pins; this checkout is {version}")
    with ComfyServer(COMFYUI_PATH) as s:
        yield s


@pytest.fixture(scope="module")
def frontend(server):
    from frontend_browser import Frontend

    with Frontend(server.url) as fe:
        fe.open()
        yield fe


def validation_problems(status, answer, prompt):
    """What the server's validation reports beyond model and image files that are not installed; and the
    (node, input) pairs it reported missing."""
    if status == 200:
        return [f"the server accepted the prompt with no models installed: {answer}"], set()
    problems, missing = [], set()
    for node_id, entry in answer.get("node_errors", {}).items():
        class_type = prompt[node_id]["class_type"]
        for error in entry["errors"]:
            name = error.get("extra_info", {}).get("input_name")
            if error["type"] == "value_not_in_list" and name in FILE_INPUTS:
                missing.add((node_id, name))
            elif (error["type"] == "custom_validation_failed" and class_type in IMAGE_NODES
                  and "Invalid image file" in error["details"]):
                missing.add((node_id, "image"))
            else:
                problems.append(f"node {node_id} ({class_type}): {error['type']}: {error['message']} {error['details']}")
    if not answer.get("node_errors"):
        problems.append(f"the server refused the prompt for another reason: {answer.get('error')}")
    return problems, missing


@pytest.mark.parametrize("name", sorted(build_workflows.WORKFLOWS))
def test_workflow_in_the_real_frontend_and_server(name, frontend, server):
    from frontend_browser import check_in_frontend

    graph = build_workflows.WORKFLOWS[name]()
    graph.json()
    intended = graph.intended_prompt()
    problems, report = check_in_frontend(frontend, os.path.join(PACK_DIR, "workflows", f"{name}.json"), intended,
                                         SCREENSHOTS)
    assert problems == [], f"{name} in the frontend (screenshot {report.get('screenshot')}):\n" + "\n".join(problems)
    status, answer = server.post_prompt(report["output"])
    problems, missing = validation_problems(status, answer, report["output"])
    assert problems == [], f"{name}: the server's validation:\n" + "\n".join(problems)
    assert missing == named_files(intended), f"{name}: validation should report every file the workflow names as missing"


def named_files(prompt):
    """The (node, input) pairs of a prompt that name a model or image file."""
    return {(node_id, k) for node_id, node in prompt.items() for k in node["inputs"]
            if k in FILE_INPUTS or (k == "image" and node["class_type"] in IMAGE_NODES)}


CONVERTED = ["plus_advanced_model_loader", "plus_batch_and_layers", "plus_embeds_pipeline", "plus_load_embeds",
             "plus_style_composition_sdxl", "plus_unified_simple", "plus_faceid_unified", "plus_faceid_batch_insightface"]


def converted_fixture(name, files=None):
    from plus_fixtures import fixture
    from workflow_format import api_prompt, load_definitions, load_frontend_nodes

    from converter import convert_workflow

    workflow, _ = convert_workflow(fixture(name), files)
    return workflow, api_prompt(workflow, load_definitions(), load_frontend_nodes())


@pytest.mark.parametrize("name", CONVERTED)
def test_converted_workflow_in_the_real_frontend_and_server(name, frontend, server, tmp_path):
    """A ComfyUI_IPAdapter_plus workflow converted: the real frontend loads it as meant, and the real server's
    validation finds nothing wrong but the files that are not installed."""
    from frontend_browser import check_in_frontend

    workflow, intended = converted_fixture(name)
    path = tmp_path / f"{name}_converted.json"
    path.write_text(json.dumps(workflow))
    problems, report = check_in_frontend(frontend, str(path), intended, SCREENSHOTS, layout=False)
    assert problems == [], f"{name} converted, in the frontend:\n" + "\n".join(problems)
    status, answer = server.post_prompt(report["output"])
    problems, missing = validation_problems(status, answer, report["output"])
    assert problems == [], f"{name} converted: the server's validation:\n" + "\n".join(problems)
    assert missing == named_files(intended)


def test_the_canvas_command_converts_through_the_real_server(frontend, server, tmp_path):
    """The command in the canvas menu sends the open graph to the pack's route on the real server and loads the
    answer: the same graph the command line makes from the same file with the same models folder."""
    from frontend_browser import prompt_differences, run_canvas_command
    from plus_fixtures import fixture

    path = tmp_path / "plus_advanced_model_loader.json"
    path.write_text(json.dumps(fixture("plus_advanced_model_loader")))
    frontend.drop_workflow(str(path))
    result = run_canvas_command(frontend, "Convert IPAdapter Plus nodes", "IPAdapterDCA.ConvertPlusNodes",
                                "() => window.app.graph._nodes.some(n => n.type === 'LoadIPAdapterAndEncoder')")
    assert result == {"registered": True, "found": True}
    report = frontend.inspect()
    files = server.get_json("/api/object_info")["LoadIPAdapter"]["input"]["required"]["ipadapter_file"][0]
    _, intended = converted_fixture("plus_advanced_model_loader", {"ipadapter": files})
    assert prompt_differences(report["output"], intended) == []
    assert all(n["registered"] for n in report["nodes"]) and report["dialogs"] == []


def test_a_new_apply_node_takes_its_adapters_reference_weight_from_the_real_server(frontend, server):
    """web/reference_weight.js in the real frontend, asking the pack's route on the real server about synthetic files
    in its models/ipadapter (removed after, so the other checks still find no models)."""
    import shutil

    from frontend_browser import reference_weights_as_a_user_sees_them
    from reference_weight_files import CANVAS_FILES, STEPS, write_family_files

    folder = os.path.join(server.base, "models", "ipadapter")
    os.makedirs(folder, exist_ok=True)
    write_family_files(folder)
    try:
        seen = reference_weights_as_a_user_sees_them(frontend, CANVAS_FILES)
    finally:
        shutil.rmtree(folder)
    assert seen == STEPS

def test_frontend_nodes_fixture_matches_the_real_frontend(frontend):
    from workflow_format import load_frontend_nodes

    recorded = load_frontend_nodes()
    assert json.loads(json.dumps(frontend.node_layouts(sorted(recorded)))) == recorded


def test_recording_is_current(frontend, server):
    """Runs after the workflow checks, so the recording holds every route the frontend asked for."""
    from frontend_server import FIXTURE, dump_recording, load_recording, recording_from_responses

    version = server.get_json("/api/system_stats")["system"]["comfyui_version"]
    ours = {k for k, v in server.get_json("/api/object_info").items()
            if v.get("python_module", "").startswith("custom_nodes.ipadapter-dca")}
    from workflow_format import load_definitions

    used = {name for name in load_definitions() if not name.startswith("_")}  # every node type a workflow may use
    live = recording_from_responses(frontend.requests, server.url, ours | used, version)
    assert ours, "the pack's nodes are not in the server's object_info"
    if os.environ.get("UPDATE_FRONTEND_RECORDING"):
        dump_recording(live)
    recorded = load_recording()
    assert recorded["_comfyui_version"] == live["_comfyui_version"], f"{FIXTURE} was recorded from another ComfyUI"
    assert recorded["_frontend_version"] == live["_frontend_version"]
    assert {k: v["status"] for k, v in recorded["routes"].items()} == {k: v["status"] for k, v in live["routes"].items()}
    assert recorded["routes"]["/api/object_info"] == json.loads(json.dumps(live["routes"]["/api/object_info"])), (
        f"the node definitions changed: rerun with UPDATE_FRONTEND_RECORDING=1 to renew {FIXTURE}")
