"""The converter from ComfyUI_IPAdapter_plus workflows, on fixtures in that pack's format (tests/plus_fixtures.py).

What a converted graph queues is read the way the frontend reads it (workflow_format.api_prompt, by the recorded
widget order); tests/test_frontend.py drops the same graphs on the real frontend, and tests/integration runs them.
"""

import copy
import json
import os
import subprocess
import sys

import pytest
from plus_fixtures import FIXTURES, fixture
from workflow_format import FRONTEND_ONLY, api_prompt, check_workflow, load_definitions, load_frontend_nodes

from converter import WorkflowError, convert_workflow
from converter import ours
from converter.plus_nodes import WIDGETS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFS, FRONTEND = load_definitions(), load_frontend_nodes()
CLEAN = sorted(set(FIXTURES) - {"plus_faceid_and_noise"})  # every node has an equivalent here


def converted(name, files=None):
    original = fixture(name)
    workflow, report = convert_workflow(original, files)
    return original, workflow, report, api_prompt(workflow, DEFS, FRONTEND) if name in CLEAN else None


def by_type(prompt, kind):
    return [(k, v["inputs"]) for k, v in prompt.items() if v["class_type"] == kind]


def test_our_node_table_is_what_the_real_frontend_records():
    for kind, layout in ours.LAYOUT.items():
        if kind in FRONTEND_ONLY:
            continue
        recorded = FRONTEND[kind]
        assert layout["widgets"] == recorded["widgets_values"] and layout["defaults"] == recorded["defaults"], kind
        assert layout["size"] == [max(320, recorded["size"][0]), recorded["size"][1]], kind
        sockets = [[n, t] for n, t, _, _ in DEFS[kind]["inputs"] if n not in recorded["widgets_values"]]
        assert layout["inputs"] == sockets, kind
        assert [t for _, t in layout["outputs"]] == DEFS[kind]["outputs"], kind
    assert set(ours.DISPLAY) == set(ours.LAYOUT) - {"Note"}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_converted_graphs_load_cleanly_and_keep_everything_else(name):
    original, workflow, report, _ = converted(name)
    problems = check_workflow(workflow, DEFS, FRONTEND)
    left = {n["id"] for n in workflow["nodes"] if n["type"] in WIDGETS}
    assert [p for p in problems if not any(p.startswith(f"node {i} ") for i in left)] == []
    before = {n["id"]: n for n in original["nodes"]}
    for node in workflow["nodes"]:
        if node["id"] in before and before[node["id"]]["type"] not in WIDGETS:  # core and other nodes untouched
            old = before[node["id"]]
            assert {k: node[k] for k in ("type", "pos", "size", "widgets_values", "properties")} == \
                   {k: old[k] for k in ("type", "pos", "size", "widgets_values", "properties")}
    assert workflow["groups"] == original["groups"]
    notes = [n for n in workflow["nodes"] if n.get("title") == "Converted from IPAdapter Plus"]
    assert len(notes) == 1 and notes[0]["widgets_values"] == [report.text()]
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - 30, n["size"][0], n["size"][1] + 30) for n in workflow["nodes"]
             if n["id"] not in before or before[n["id"]]["type"] in WIDGETS]  # what the converter placed overlaps nothing
    for a, ax, ay, aw, ah in boxes:
        for n in workflow["nodes"]:
            if n["id"] != a:
                bx, by, bw, bh = n["pos"][0], n["pos"][1] - 30, n["size"][0], n["size"][1] + 30
                assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay, (a, n["id"])


def test_unified_loader_and_simple_node():
    original, workflow, report, prompt = converted("plus_unified_simple")
    ids = {n["type"]: str(n["id"]) for n in original["nodes"]}
    ((loader, loader_inputs),) = by_type(prompt, "LoadIPAdapterAndEncoder")
    assert loader == ids["IPAdapterUnifiedLoader"]
    assert loader_inputs == {"ipadapter_file": "ip-adapter-plus_sd15.safetensors", "clip_vision": ours.AUTO}
    ((encode, encode_inputs),) = by_type(prompt, "EncodeImagePrompt")
    assert encode_inputs == {"crop": "center crop", "combine": "concat", "image_weights": "", "content_scale": 0.5,
                             "ipadapter": [loader, 0], "clip_vision": [loader, 1], "image": [ids["LoadImage"], 0]}
    ((apply, apply_inputs),) = by_type(prompt, "ApplyIPAdapter")
    assert apply == ids["IPAdapter"]  # same id, same place
    assert apply_inputs == {"weight": 0.8, "start_percent": 0.0, "end_percent": 0.9,
                            "model": [ids["CheckpointLoaderSimple"], 0],  # around the loader's model pass-through
                            "ipadapter": [loader, 0], "image_prompt": [encode, 0]}
    assert prompt[ids["KSampler"]]["inputs"]["model"] == [apply, 0]
    assert report.left == [] and report.approximated == []
    assert report.assumed == [f"#{loader} IPAdapterUnifiedLoader: SD1.5 (from the checkpoint name "
                              "v1-5-pruned-emaonly.safetensors); ip-adapter-plus_sd15.safetensors is the file that "
                              "pack's README gives for the preset: pick yours on the node if it is called otherwise"]


def test_presets_resolve_to_the_users_files_as_that_pack_finds_them():
    files = {"ipadapter": ["ip-adapter-plus_sdxl_vit-h.safetensors", "sd15/ip-adapter-plus_sd15.bin",
                           "ip-adapter-plus-face_sd15.safetensors"]}
    _, _, report, prompt = converted("plus_unified_simple", files)
    ((_, inputs),) = by_type(prompt, "LoadIPAdapterAndEncoder")
    assert inputs["ipadapter_file"] == "sd15/ip-adapter-plus_sd15.bin"
    assert "sd15/ip-adapter-plus_sd15.bin matched the preset in models/ipadapter" in report.assumed[0]
    _, workflow, report, _ = converted("plus_style_composition_sdxl", files)
    loader = next(n for n in workflow["nodes"] if n["type"] == "LoadIPAdapterAndEncoder")
    assert loader["widgets_values"][0] == "ip-adapter-plus_sdxl_vit-h.safetensors"
    assert "SDXL (from the checkpoint name sd_xl_base_1.0.safetensors)" in report.assumed[0]


def test_advanced_node_with_model_loader_lora_negative_and_mask():
    original, _, report, prompt = converted("plus_advanced_model_loader")
    ids = {n["type"]: str(n["id"]) for n in original["nodes"]}
    images = [str(n["id"]) for n in original["nodes"] if n["type"] == "LoadImage"]
    ((loader, loader_inputs),) = by_type(prompt, "LoadIPAdapterAndEncoder")
    assert loader == ids["IPAdapterModelLoader"] and loader_inputs["ipadapter_file"] == "ip-adapter_sd15.safetensors"
    ((encode, encode_inputs),) = by_type(prompt, "EncodeImagePrompt")
    assert encode_inputs["combine"] == "average" and encode_inputs["clip_vision"] == [ids["CLIPVisionLoader"], 0]
    assert encode_inputs["image"] == [images[0], 0] and encode_inputs["negative_image"] == [images[1], 0]
    ((apply, inputs),) = by_type(prompt, "ApplyIPAdapterAdvanced")
    assert inputs == {"weight": 0.7, "start_percent": 0.1, "end_percent": 0.8, "weight_type": "ease in",
                      "kv_scaling": "K+V", "per_frame": False, "layer_weights": "", "composition_weight": 1,
                      "style_boost": 1, "composition_boost": 0, "frame_weights": "", "s_scale": 1, "lora_strength": 1,
                      "model": [ids["LoraLoader"], 0], "ipadapter": [loader, 0], "image_prompt": [encode, 0],
                      "attn_mask": [ids["LoadImageMask"], 0]}
    assert report.approximated == [] and report.left == []


def test_batch_mad_scientist_and_precise_nodes():
    original, _, report, prompt = converted("plus_batch_and_layers")
    ids = {n["type"]: str(n["id"]) for n in original["nodes"]}
    applies = dict(by_type(prompt, "ApplyIPAdapterAdvanced"))
    batch, ms, precise = (applies[ids[k]] for k in ("IPAdapterBatch", "IPAdapterMS", "IPAdapterPreciseStyleTransfer"))
    assert batch["per_frame"] is True and batch["weight_type"] == "linear"
    assert prompt[batch["image_prompt"][0]]["inputs"]["image"] == [ids["ImageBatch"], 0]
    assert ms["layer_weights"] == "all = 0, input 5 = 1, middle = 0.5, output 8 = 0.25" and ms["weight"] == 0.6
    assert ms["model"] == [ids["IPAdapterBatch"], 0] and precise["model"] == [ids["IPAdapterMS"], 0]
    assert (precise["weight_type"], precise["style_boost"], precise["weight"]) == ("style transfer precise", 1.5, 0.5)
    assert any("layer_weights '3:1, 6:0.5, 12:0.25'" in a for a in report.approximated)


def test_embeds_pipeline():
    original, _, report, prompt = converted("plus_embeds_pipeline")
    ids = {str(n["id"]): n["type"] for n in original["nodes"]}
    encodes = dict(by_type(prompt, "EncodeImagePrompt"))
    assert sorted(ids[k] for k in encodes) == ["IPAdapterEncoder", "IPAdapterEncoder"]
    assert sorted(e["image_weights"] for e in encodes.values()) == ["", "0.5"]
    ((combine, combine_inputs),) = by_type(prompt, "CombineImagePrompts")
    assert combine_inputs["combine"] == "average"
    assert {combine_inputs["image_prompt_1"][0], combine_inputs["image_prompt_2"][0]} == set(encodes)
    ((_, save),) = by_type(prompt, "SaveImagePrompt")
    assert save == {"filename_prefix": "IP_embeds", "image_prompt": [combine, 0]}
    ((_, apply),) = by_type(prompt, "ApplyIPAdapter")
    assert apply["image_prompt"] == [combine, 0] and apply["weight"] == 0.9
    assert any("weight 0.5 scales that image's share" in a for a in report.approximated)


def test_pickled_embeds_are_never_opened_and_the_note_says_how_to_remake_them(tmp_path):
    _, workflow, report, prompt = converted("plus_load_embeds")
    ((_, load),) = by_type(prompt, "LoadImagePrompt")
    assert load["prompt_file"] == "IP_embeds_00001.ipprompt.safetensors [output]"
    (remake,) = [a for a in report.approximated if "IP_embeds_00001_.ipadpt" in a]
    assert "is a pickle file, which this pack never opens" in remake and "filename_prefix 'IP_embeds'" in remake


def test_what_has_no_equivalent_stays_in_place():
    original, workflow, report, _ = converted("plus_faceid_and_noise")
    before = {n["id"]: n for n in original["nodes"]}
    kept = [n for n in workflow["nodes"] if n["type"] in WIDGETS]
    assert [n["type"] for n in kept] == ["IPAdapterNoise"]
    for node in kept:
        assert {k: v for k, v in node.items() if k not in ("order", "outputs")} == \
               {k: v for k, v in before[node["id"]].items() if k not in ("order", "outputs")}
    ids = {n["type"]: str(n["id"]) for n in original["nodes"]}
    assert [line.split(":")[0] for line in report.left] == [f"#{ids['IPAdapterNoise']} IPAdapterNoise"]
    apply = next(n for n in workflow["nodes"] if n["type"] == "ApplyIPAdapter")
    links = {link[0]: link for link in workflow["links"]}
    model_link = links[next(i["link"] for i in apply["inputs"] if i["name"] == "model")]
    assert model_link[1] == int(ids["IPAdapterFaceID"])  # the converted FaceID node feeds the converted IPAdapter
    encode = next(n for n in workflow["nodes"] if n["type"] == "EncodeImagePrompt" and
                  any(i["name"] == "negative_image" and i["link"] for i in n["inputs"]))
    negative = links[next(i["link"] for i in encode["inputs"] if i["name"] == "negative_image")]
    assert negative[1] == int(ids["IPAdapterNoise"])


def test_faceid_unified_loader_and_apply_become_the_face_nodes():
    original, workflow, report, prompt = converted("plus_faceid_unified")
    ids = {n["type"]: str(n["id"]) for n in original["nodes"]}
    face = next(str(n["id"]) for n in original["nodes"] if n["type"] == "LoadImage")
    ((loader, loader_inputs),) = by_type(prompt, "LoadIPAdapterAndEncoder")  # Plus: CLIP sees the face crop
    assert loader == ids["IPAdapterUnifiedLoaderFaceID"]
    assert loader_inputs == {"ipadapter_file": "ip-adapter-faceid-plusv2_sd15.bin", "clip_vision": ours.AUTO}
    ((analyzer, analyzer_inputs),) = by_type(prompt, "LoadFaceAnalyzer")
    assert analyzer_inputs == {"pack": "buffalo_l", "backend": "auto", "provider": "CPU"}
    ((embed, embed_inputs),) = by_type(prompt, "EmbedFaces")
    assert embed_inputs == {"select": "highest score", "index": 0, "no_face": "error", "crop_size": 224,
                            "face_analyzer": [analyzer, 0], "image": [face, 0]}
    ((encode, encode_inputs),) = by_type(prompt, "EncodeImagePrompt")
    assert encode_inputs == {"crop": "center crop", "combine": "concat", "image_weights": "", "content_scale": 0.5,
                             "ipadapter": [loader, 0], "clip_vision": [loader, 1], "faces": [embed, 0]}
    ((apply, inputs),) = by_type(prompt, "ApplyIPAdapterAdvanced")
    assert apply == ids["IPAdapterFaceID"]
    assert inputs == {"weight": 0.85, "start_percent": 0.1, "end_percent": 1.0, "weight_type": "linear",
                      "kv_scaling": "V only", "per_frame": False, "layer_weights": "", "composition_weight": 1,
                      "style_boost": 1, "composition_boost": 0, "frame_weights": "", "s_scale": 1.5,
                      "lora_strength": 0.6, "model": [ids["CheckpointLoaderSimple"], 0], "ipadapter": [loader, 0],
                      "image_prompt": [encode, 0]}  # the loader's LoRA moves to the apply node; the model goes round
    assert by_type(prompt, "ImageBatch")[0][1] == {"image1": [embed, 1], "image2": [embed, 1]}  # face_image: the crops
    assert by_type(prompt, "KSampler")[0][1]["model"] == [apply, 0]
    assert report.left == [] and report.approximated == []


def test_faceid_model_loader_insightface_loader_and_batch():
    original, workflow, report, prompt = converted("plus_faceid_batch_insightface")
    ids = {n["type"]: str(n["id"]) for n in original["nodes"]}
    ((loader, loader_inputs),) = by_type(prompt, "LoadIPAdapter")  # plain FaceID: no image encoder
    assert loader == ids["IPAdapterModelLoader"] and loader_inputs == {"ipadapter_file": "ip-adapter-faceid_sd15.bin"}
    ((analyzer, analyzer_inputs),) = by_type(prompt, "LoadFaceAnalyzer")
    assert analyzer == ids["IPAdapterInsightFaceLoader"]
    assert analyzer_inputs == {"pack": "buffalo_l", "backend": "auto", "provider": "CPU"}
    ((embed, embed_inputs),) = by_type(prompt, "EmbedFaces")
    assert embed_inputs["face_analyzer"] == [analyzer, 0] and embed_inputs["image"] == [ids["ImageBatch"], 0]
    ((encode, encode_inputs),) = by_type(prompt, "EncodeImagePrompt")
    assert "clip_vision" not in encode_inputs and encode_inputs["faces"] == [embed, 0]
    ((_, inputs),) = by_type(prompt, "ApplyIPAdapterAdvanced")
    assert (inputs["weight"], inputs["weight_type"], inputs["per_frame"], inputs["lora_strength"]) == (0.9, "ease in",
                                                                                                     True, 0.0)
    assert any("lora_strength 0 on its FaceID apply nodes: that pack applied no FaceID LoRA here" in line
               for line in report.assumed)


def test_face_analyzer_providers_are_the_nodes():
    from ipadapter_core import faces

    assert ours.PROVIDERS == ("auto",) + tuple(faces.PROVIDERS)


@pytest.mark.parametrize("name", CLEAN)
def test_converting_twice_changes_nothing(name):
    _, workflow, _, _ = converted(name)
    again, report = convert_workflow(workflow)
    assert again == workflow and not any(report.as_dict().values())


def test_what_is_not_a_workflow_is_refused():
    with pytest.raises(WorkflowError, match=r"expected a ComfyUI workflow .*An API-format prompt \(Export \(API\)\) has "
                                            r"no layout and cannot be converted"):
        convert_workflow({"3": {"class_type": "KSampler", "inputs": {}}})


def test_command_line(tmp_path):
    source = tmp_path / "plus.json"
    source.write_text(json.dumps(fixture("plus_unified_simple")))
    target = tmp_path / "ours.json"
    models = tmp_path / "models" / "ipadapter"
    models.mkdir(parents=True)
    (models / "my-plus-sd15-ip.adapter.plus.sd15.safetensors").write_bytes(b"")
    run = subprocess.run([sys.executable, "-m", "converter", "convert", str(source), str(target), "--models",
                          str(tmp_path / "models")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    expected, report = convert_workflow(fixture("plus_unified_simple"),
                                        {"ipadapter": ["my-plus-sd15-ip.adapter.plus.sd15.safetensors"]})
    assert json.loads(target.read_text()) == expected
    assert run.stdout.strip() == report.text()
    same = subprocess.run([sys.executable, "-m", "converter", "convert", str(source), str(source)], cwd=REPO,
                          capture_output=True, text=True)
    assert same.returncode == 1 and "Write the converted workflow to a new file" in same.stderr
    (tmp_path / "api.json").write_text(json.dumps({"3": {"class_type": "KSampler", "inputs": {}}}))
    api = subprocess.run([sys.executable, "-m", "converter", "convert", str(tmp_path / "api.json"), str(target)],
                         cwd=REPO, capture_output=True, text=True)
    assert api.returncode == 1 and "api.json: expected a ComfyUI workflow" in api.stderr


def test_old_files_with_fewer_values_take_the_defaults():
    workflow = fixture("plus_unified_simple")
    node = next(n for n in workflow["nodes"] if n["type"] == "IPAdapter")
    node["widgets_values"] = [0.8, 0.0, 1.0]  # saved before weight_type existed
    prompt = api_prompt(convert_workflow(copy.deepcopy(workflow))[0], DEFS, FRONTEND)
    ((_, apply),) = by_type(prompt, "ApplyIPAdapter")
    assert (apply["weight"], apply["end_percent"]) == (0.8, 1.0)
