"""The converter against the real ComfyUI_IPAdapter_plus (CUBIQ_PATH): the real server with both packs installed.

- converter/plus_nodes.py (that pack's widget order, written from its node tables) is what the real frontend builds
  for each of its nodes;
- the fixtures in that pack's format (tests/plus_fixtures.py) are workflows that pack's own server accepts (its
  validation reports only the files that are not installed);
- with that pack installed, the canvas command converts the open graph too, nodes left in place still load.
"""

import json
import os

import pytest
from comfy_host import COMFYUI_PATH

from converter.plus_nodes import WIDGETS

CUBIQ_PATH = os.environ.get("CUBIQ_PATH")
pytestmark = pytest.mark.skipif(not CUBIQ_PATH, reason="CUBIQ_PATH is not set: point it at a ComfyUI_IPAdapter_plus checkout")


@pytest.fixture(scope="module")
def server():
    from frontend_browser import chromium_path

    if chromium_path() is None:
        pytest.skip("needs Debian's chromium and playwright")
    from comfy_server import ComfyServer

    with ComfyServer(COMFYUI_PATH, other_packs={"ComfyUI_IPAdapter_plus": CUBIQ_PATH}) as s:
        yield s


@pytest.fixture(scope="module")
def frontend(server):
    from frontend_browser import Frontend

    with Frontend(server.url) as fe:
        fe.open()
        yield fe


def test_their_widget_order_is_what_the_frontend_builds(frontend):
    live = frontend.node_layouts(sorted(WIDGETS))
    for kind, widgets in WIDGETS.items():
        assert live[kind] is not None, f"{kind} is not a node of the installed ComfyUI_IPAdapter_plus"
        assert live[kind]["widgets_values"] == [name for name, _ in widgets], kind
        for (name, default), value in zip(widgets, live[kind]["defaults"]):
            if default is not None:  # file lists depend on the folder
                assert value == default, (kind, name)


@pytest.mark.parametrize("name", ["plus_advanced_model_loader", "plus_batch_and_layers", "plus_embeds_pipeline",
                                  "plus_faceid_and_noise", "plus_load_embeds", "plus_style_composition_sdxl",
                                  "plus_unified_simple", "plus_faceid_unified", "plus_faceid_batch_insightface"])
def test_fixture_is_a_workflow_that_pack_accepts(name, frontend, server, tmp_path):
    from plus_fixtures import fixture
    from test_frontend_real import validation_problems

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(fixture(name)))
    frontend.drop_workflow(str(path))
    report = frontend.inspect()
    assert all(n["registered"] and not n["has_errors"] for n in report["nodes"]) and report["dialogs"] == []
    status, answer = server.post_prompt(report["output"])
    problems, _ = validation_problems(status, answer, report["output"])
    # only the files that are not installed (its embeds file too); its unified loaders look for models at run time
    problems = [p for p in problems if "value_not_in_list: Value not in list embeds:" not in p]
    assert problems == [], f"{name}: that pack's validation:\n" + "\n".join(problems)


def test_the_command_converts_with_that_pack_installed(frontend, server, tmp_path):
    from frontend_browser import prompt_differences, run_canvas_command
    from plus_fixtures import fixture
    from workflow_format import api_prompt, load_definitions, load_frontend_nodes

    from converter import convert_workflow

    path = tmp_path / "plus_faceid_and_noise.json"
    path.write_text(json.dumps(fixture("plus_faceid_and_noise")))
    frontend.drop_workflow(str(path))
    result = run_canvas_command(frontend, "Convert IPAdapter Plus nodes", "IPAdapterDCA.ConvertPlusNodes",
                                "() => window.app.graph._nodes.some(n => n.type === 'LoadIPAdapterAndEncoder')")
    assert result == {"registered": True, "found": True}
    report = frontend.inspect()
    assert all(n["registered"] for n in report["nodes"]) and report["dialogs"] == []  # the noise node still loads
    workflow, _ = convert_workflow(fixture("plus_faceid_and_noise"), {"ipadapter": []})
    ours = api_prompt(workflow, load_definitions(), load_frontend_nodes())
    assert prompt_differences({k: v for k, v in report["output"].items() if k in ours}, ours) == []
    assert {v["class_type"] for k, v in report["output"].items() if k not in ours} == {"IPAdapterNoise"}
