"""Every shipped workflow loads in ComfyUI as it is: node types exist, links match, widgets_values fit."""

import copy
import glob
import json
import os

import sys

import pytest
from standin_host import load_pack
from workflow_format import check_workflow, definitions_from_input_types, load_definitions, load_frontend_nodes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
sys.path.insert(0, os.path.join(REPO, "tools"))
import build_workflows  # noqa: E402


@pytest.fixture(scope="module")
def defs():
    return load_definitions()


def test_fixture_has_our_nodes_as_they_are_now(defs):
    ours = definitions_from_input_types(load_pack().NODE_CLASS_MAPPINGS)
    for name, definition in ours.items():
        file_combo = [e for e in definition["inputs"]
                      if e[0] in ("ipadapter_file", "prompt_file", "clip_vision", "pack") and isinstance(e[1], list)]
        for entry in file_combo:
            entry[1] = []  # the file list depends on the user's folder
        assert json.loads(json.dumps(definition)) == defs[name], f"{name} changed: regenerate the fixture and workflows"


def test_there_are_workflows():
    assert len(WORKFLOWS) >= 12


def test_every_workflow_file_is_built_by_the_builder():
    assert sorted(f"{name}.json" for name in build_workflows.WORKFLOWS) == [os.path.basename(p) for p in WORKFLOWS]


@pytest.mark.parametrize("name", sorted(build_workflows.WORKFLOWS))
def test_workflow_file_is_what_the_builder_writes(name):
    """workflows/ is regenerated with `python tools/build_workflows.py`; a hand edit or a stale file fails here."""
    with open(os.path.join(REPO, "workflows", f"{name}.json")) as f:
        assert f.read() == build_workflows.render(build_workflows.WORKFLOWS[name])


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_matches_node_definitions(path, defs):
    with open(path) as f:
        workflow = json.load(f)
    assert check_workflow(workflow, defs, load_frontend_nodes()) == []
    graph = build_workflows.WORKFLOWS[os.path.basename(path)[:-5]]()
    graph.json()
    classes = {n["class_type"] for n in graph.intended_prompt().values()}
    assert "SaveImage" in classes and classes & {"ApplyIPAdapter", "ApplyIPAdapterAdvanced", "ApplyIPAdapterStyleComposition"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_readme_lists_workflow(path):
    with open(os.path.join(REPO, "README.md")) as f:
        assert f"workflows/{os.path.basename(path)}" in f.read()


def test_checker_catches_broken_workflows(defs):
    frontend = load_frontend_nodes()
    with open(os.path.join(REPO, "workflows", "sd15_image_prompt.json")) as f:
        good = json.load(f)
    sampler = next(n for n in good["nodes"] if n["type"] == "KSampler")
    broken = copy.deepcopy(good)
    next(n for n in broken["nodes"] if n["id"] == sampler["id"])["widgets_values"].remove("fixed")
    assert any("6 widgets_values for 7 widgets" in p for p in check_workflow(broken, defs, frontend))
    broken = copy.deepcopy(good)
    next(n for n in broken["nodes"] if n["type"] == "ApplyIPAdapter")["widgets_values"][0] = 9.0
    assert any("bad value 9.0 for 'weight'" in p for p in check_workflow(broken, defs, frontend))
    broken = copy.deepcopy(good)
    broken["links"][0][5] = "IPADAPTER"
    assert any("link 1" in p for p in check_workflow(broken, defs, frontend))
    broken = copy.deepcopy(good)
    broken["nodes"][0]["type"] = "IPAdapterAdvanced"
    assert any("unknown node type" in p for p in check_workflow(broken, defs, frontend))
