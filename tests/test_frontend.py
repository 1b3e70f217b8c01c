"""The browser check: every shipped workflow dropped on ComfyUI's real frontend (comfyui-frontend-package, the version
ComfyUI v0.8.0 pins) in headless Chromium, served by the stand-in in frontend_server.py with the real server's
recorded answers. What is checked is what the frontend itself reports: every node type known, the prompt its
`graphToPrompt()` would queue equal to the one the workflow builder meant, no two nodes overlapping, no node drawn
smaller than its widgets, links reading left to right, every node in a named group, a note naming the model files.

Screenshots go to $TMPDIR/ipadapter-dca-browser-check/. tests/integration/test_frontend_real.py runs the same check
against the real ComfyUI server and renews the recording.
"""

import copy
import json
import os
import sys
import tempfile

import pytest
from frontend_browser import Frontend, check_in_frontend, chromium_path, prompt_differences, run_canvas_command
from workflow_format import FRONTEND_ONLY, load_definitions, load_frontend_nodes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import build_workflows  # noqa: E402

SCREENSHOTS = os.path.join(tempfile.gettempdir(), "ipadapter-dca-browser-check")


def browser_or_skip():
    """The browser check needs Chromium, Playwright and the frontend package; CI installs them (.ci/run), so there
    a missing one is a failure, elsewhere a skip that says what to install."""
    missing = []
    if chromium_path() is None:
        missing.append("Debian's chromium (apt-get install chromium)")
    for module, package in (("playwright", "playwright"), ("comfyui_frontend_package", "comfyui-frontend-package==1.35.9"),
                            ("aiohttp", "aiohttp")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"pip install {package}")
    if missing:
        message = "the browser check needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def server():
    browser_or_skip()
    from frontend_server import StandinServer

    with StandinServer() as s:
        yield s


@pytest.fixture(scope="module")
def frontend(server):
    with Frontend(server.url) as fe:
        fe.open()
        yield fe


def test_recording_is_of_the_pinned_frontend(server):
    from frontend_server import frontend_version

    assert server.recording["_frontend_version"] == frontend_version() == "1.35.9"
    assert server.recording["_comfyui_version"] == "0.8.0"


def test_frontend_nodes_fixture_matches_the_frontend(frontend):
    """tests/fixtures/frontend_nodes.json (the widget order the workflow builder writes in) is what the frontend
    builds from the recorded node definitions. UPDATE_FRONTEND_NODES=1 rewrites it."""
    from workflow_format import dump_frontend_nodes

    recorded = load_frontend_nodes()
    types = sorted(set(recorded) | {k for k in load_definitions() if not k.startswith("_")} | FRONTEND_ONLY - {"MarkdownNote"})
    live = frontend.node_layouts(types)
    if os.environ.get("UPDATE_FRONTEND_NODES"):
        dump_frontend_nodes(live)
        recorded = load_frontend_nodes()
    assert json.loads(json.dumps(live)) == recorded


@pytest.mark.parametrize("name", sorted(build_workflows.WORKFLOWS))
def test_workflow_in_the_real_frontend(name, frontend, server):
    graph = build_workflows.WORKFLOWS[name]()
    graph.json()
    problems, report = check_in_frontend(frontend, os.path.join(REPO, "workflows", f"{name}.json"),
                                         graph.intended_prompt(), SCREENSHOTS)
    assert problems == [], f"{name} in the frontend (screenshot {report.get('screenshot')}):\n" + "\n".join(problems)
    assert server.unrecorded == [], "the frontend asked for routes the recording does not hold: rerun the real-host suite"


def test_check_catches_a_widget_order_the_frontend_reads_differently(frontend, tmp_path):
    """The bug this check was made for: LoadImageMask's values written as [image, upload, channel]."""
    name = "sd15_two_regions"
    with open(os.path.join(REPO, "workflows", f"{name}.json")) as f:
        workflow = json.load(f)
    for node in workflow["nodes"]:
        if node["type"] == "LoadImageMask":
            image, channel, upload = node["widgets_values"]
            node["widgets_values"] = [image, upload, channel]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(workflow))
    graph = build_workflows.WORKFLOWS[name]()
    graph.json()
    problems, _ = check_in_frontend(frontend, str(path), graph.intended_prompt())
    assert any("(LoadImageMask).channel: frontend 'image', meant 'alpha'" in p for p in problems), problems


def test_check_catches_overlaps_as_drawn_and_a_missing_node(frontend, tmp_path):
    name = "sd15_image_prompt"
    with open(os.path.join(REPO, "workflows", f"{name}.json")) as f:
        workflow = json.load(f)
    by_type = {n["type"]: n for n in workflow["nodes"]}
    by_type["ApplyIPAdapter"]["pos"] = list(by_type["KSampler"]["pos"])  # on top of the sampler
    # Too small for its widgets, with the next node right below: apart in the file, but the frontend draws the
    # node at the height its widgets need, so on the canvas they overlap.
    encode = by_type["EncodeImagePrompt"]
    encode["size"] = [encode["size"][0], 60]
    text = next(n for n in workflow["nodes"] if n["type"] == "CLIPTextEncode" and n["pos"][0] == encode["pos"][0])
    text["pos"][1] = encode["pos"][1] + 60 + 30 + 10
    broken = copy.deepcopy(by_type["VAEDecode"])
    broken.update(id=99, type="IPAdapterAdvanced", pos=[0, 2000], inputs=[], outputs=[], widgets_values=[])
    workflow["nodes"].append(broken)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(workflow))
    graph = build_workflows.WORKFLOWS[name]()
    graph.json()
    problems, _ = check_in_frontend(frontend, str(path), graph.intended_prompt())
    found = "\n".join(problems)
    assert "ApplyIPAdapter and" in found and "KSampler overlap" in found, found
    assert f"{encode['id']} EncodeImagePrompt and {text['id']} CLIPTextEncode overlap" in found, found
    assert "node 99: type IPAdapterAdvanced is missing in the frontend" in found, found
    assert "node 99: not meant" in found, found
    assert "This workflow has missing nodes" in found, found


# --- graphs converted from ComfyUI_IPAdapter_plus -----------------------------------------------------------

CONVERT_LABEL, CONVERT_COMMAND = "Convert IPAdapter Plus nodes", "IPAdapterDCA.ConvertPlusNodes"


def converted_fixture(name, files=None):
    from plus_fixtures import fixture
    from workflow_format import api_prompt

    from converter import convert_workflow

    workflow, report = convert_workflow(fixture(name), files)
    return workflow, report, api_prompt(workflow, load_definitions(), load_frontend_nodes())


@pytest.mark.parametrize("name", ["plus_advanced_model_loader", "plus_batch_and_layers", "plus_embeds_pipeline",
                                  "plus_load_embeds", "plus_style_composition_sdxl", "plus_unified_simple",
                                  "plus_faceid_unified", "plus_faceid_batch_insightface"])
def test_converted_workflow_in_the_real_frontend(name, frontend, server, tmp_path):
    workflow, _, intended = converted_fixture(name)
    path = tmp_path / f"{name}_converted.json"
    path.write_text(json.dumps(workflow))
    problems, report = check_in_frontend(frontend, str(path), intended, SCREENSHOTS, layout=False)
    assert problems == [], f"{name} converted, in the frontend (screenshot {report.get('screenshot')}):\n" + "\n".join(problems)


def test_nodes_left_in_place_are_the_only_missing_ones(frontend, tmp_path):
    workflow, report, _ = converted_fixture("plus_faceid_and_noise")
    path = tmp_path / "plus_faceid_and_noise_converted.json"
    path.write_text(json.dumps(workflow))
    frontend.drop_workflow(str(path))
    nodes = frontend.inspect()["nodes"]
    missing = sorted(n["type"] for n in nodes if not n["registered"])
    assert missing == ["IPAdapterNoise"]
    assert len(report.left) == 1


def test_the_canvas_command_converts_the_open_graph(frontend, server, tmp_path):
    """A user opens a ComfyUI_IPAdapter_plus workflow (its nodes are missing), right-clicks the canvas and picks
    the command: the graph becomes the converted one, as the command line converts the same file."""
    from plus_fixtures import fixture
    from standin_host import folder_paths  # the stand-in host the route runs in

    path = tmp_path / "plus_unified_simple.json"
    path.write_text(json.dumps(fixture("plus_unified_simple")))
    frontend.drop_workflow(str(path))
    assert any(not n["registered"] for n in frontend.inspect()["nodes"])
    result = run_canvas_command(frontend, CONVERT_LABEL, CONVERT_COMMAND,
                                "() => window.app.graph._nodes.some(n => n.type === 'LoadIPAdapterAndEncoder')")
    assert result == {"registered": True, "found": True}
    report = frontend.inspect()
    _, _, intended = converted_fixture("plus_unified_simple", {"ipadapter": folder_paths.get_filename_list("ipadapter")})
    assert prompt_differences(report["output"], intended) == []
    assert all(n["registered"] for n in report["nodes"]) and report["dialogs"] == []
    assert any(n["text"] and n["text"].startswith("Converted from ComfyUI_IPAdapter_plus") for n in report["nodes"])
    assert server.unrecorded == []


@pytest.mark.parametrize("kind", ["LoadIPAdapter", "LoadIPAdapterAndEncoder"])
def test_what_the_loader_found_is_shown_after_a_run(frontend, kind):
    """What the loaders report (their 'ui' text: the variant, how FaceID v1/v2 was told, the encoder) reaches the node
    as the frontend delivers a run's output, and is drawn, not saved."""
    frontend.clear()
    lines = ["SD1.5 FaceID-Plus v2 IP-Adapter (4 tokens per face, file size)",
             "encoder: model.safetensors (ViT-H/14, found by content)"]
    state = frontend.page.evaluate("""async ([kind, lines]) => {
      const node = LiteGraph.createNode(kind);
      window.app.graph.add(node);
      node.onExecuted({text: lines});
      window.app.canvas.draw(true, true);
      return {shown: node.ipaLoaded, saved: JSON.stringify(node.serialize()).includes('file size')};
    }""", [kind, lines])
    assert state == {"shown": lines, "saved": False}


def test_the_convert_route_answers_bad_requests_with_the_reason(server):
    """What the canvas command shows when the server cannot convert: a 400 with the reason, never a traceback."""
    import urllib.error
    import urllib.request

    def post(body):
        request = urllib.request.Request(server.url + "/api/ipadapter_dca/convert", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert post(b"not json") == (400, {"error": 'expected {"workflow": <the graph>}'})
    status, answer = post(json.dumps({"workflow": {"3": {"class_type": "KSampler"}}}).encode())
    assert status == 400 and answer["error"].startswith("expected a ComfyUI workflow")


def test_a_new_apply_node_takes_its_adapters_reference_weight_until_the_user_sets_one(frontend, tmp_path):
    """web/reference_weight.js in the real frontend, with the pack's route answering from synthetic files."""
    from frontend_browser import reference_weights_as_a_user_sees_them
    from reference_weight_files import STEPS, CANVAS_FILES, write_family_files
    from standin_host import folder_paths

    write_family_files(tmp_path)
    folder_paths.add_model_folder_path("ipadapter", str(tmp_path))
    try:
        seen = reference_weights_as_a_user_sees_them(frontend, CANVAS_FILES)
    finally:
        folder_paths.folder_names_and_paths["ipadapter"][0].remove(str(tmp_path))
    assert seen == STEPS
