"""Save Image Prompt writes only inside ComfyUI's output folder (as ComfyUI's save nodes do, through
folder_paths.get_save_image_path); Load Image Prompt lists the input folder's prompt files and the output folder's,
the latter as 'name [output]', and loads either. Each test gets its own ComfyUI base folder."""

import importlib.util
import os
import re
import sys
import types

import pytest
import torch
from standin_host import ClipVisionModel, folder_paths, load_pack, loaded_adapter, pack_module

SUFFIX = ".ipprompt.safetensors"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def inference_mode():
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        yield


@pytest.fixture
def base(tmp_path, monkeypatch):
    """A fresh ComfyUI base folder (input/, output/ ... under it) inside a parent we can watch."""
    root = tmp_path / "comfyui"
    (root / "output").mkdir(parents=True)
    (root / "input").mkdir()
    monkeypatch.setattr(folder_paths, "base_path", str(root))
    return root


@pytest.fixture(scope="module")
def nodes():
    m = load_pack().NODE_CLASS_MAPPINGS
    return {name: m[name]() for name in ("EncodeImagePrompt", "SaveImagePrompt", "LoadImagePrompt")}


@pytest.fixture(scope="module")
def adapter():
    return loaded_adapter("sd15_plus")


@pytest.fixture(scope="module")
def prompt(nodes, adapter):
    with torch.inference_mode():
        images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(3))
        return nodes["EncodeImagePrompt"].encode(adapter, ClipVisionModel("vit-h"), images, "center crop", "concat",
                                                 "1, 0.4")[0]


def tree(root):
    """Every file and folder under root, relative."""
    out = set()
    for dirpath, dirs, files in os.walk(root):
        out.update(os.path.relpath(os.path.join(dirpath, n), root) for n in dirs + files)
    return out


def listing():
    return load_pack().NODE_CLASS_MAPPINGS["LoadImagePrompt"].INPUT_TYPES()["required"]["prompt_file"][0]


def error():
    return pack_module("nodes.common").NodeInputError


# --- Save Image Prompt ---------------------------------------------------------------------------------------------


def test_save_with_a_plain_prefix_writes_into_the_output_folder(nodes, prompt, base):
    result = nodes["SaveImagePrompt"].save(prompt, "plain")
    assert result == {"ui": {"text": ["plain_00001" + SUFFIX]}}
    assert tree(base) == {"input", "output", os.path.join("output", "plain_00001" + SUFFIX)}


def test_save_with_a_subfolder_prefix_makes_the_subfolder(nodes, prompt, base):
    result = nodes["SaveImagePrompt"].save(prompt, "sub/name")
    assert result["ui"]["text"] == ["sub/name_00001" + SUFFIX]  # relative to the output folder, '/' separators
    assert (base / "output" / "sub" / ("name_00001" + SUFFIX)).is_file()
    nodes["SaveImagePrompt"].save(prompt, "sub/deeper/name")
    assert (base / "output" / "sub" / "deeper" / ("name_00001" + SUFFIX)).is_file()
    # a '..' that stays inside is what ComfyUI makes of it: 'sub/../x' is 'x'
    assert nodes["SaveImagePrompt"].save(prompt, "sub/../inside")["ui"]["text"] == ["inside_00001" + SUFFIX]


@pytest.mark.parametrize("prefix", ["../x", "../../x", "sub/../../x", "..", "..\\x", "ABSOLUTE", "ABSOLUTE_IN_OUTPUT"])
def test_save_refuses_a_prefix_that_leaves_the_output_folder(nodes, prompt, base, prefix):
    if prefix == "ABSOLUTE":
        prefix = str(base.parent / "elsewhere" / "x")
    elif prefix == "ABSOLUTE_IN_OUTPUT":  # ComfyUI would take this one; an absolute path is refused all the same
        prefix = str(base / "output" / "x")
    before, parent_before = tree(base), tree(base.parent)
    with pytest.raises(error()) as err:
        nodes["SaveImagePrompt"].save(prompt, prefix)
    message = str(err.value)
    assert message.startswith(f"Save Image Prompt: 'filename_prefix' ('{prefix}') must stay inside ComfyUI's output "
                              f"folder ({base / 'output'})"), message
    assert message.endswith("use a name like 'my_prompt' or 'sub/my_prompt'."), message
    assert tree(base.parent) == parent_before and tree(base) == before  # nothing written, anywhere


def test_save_turns_comfyuis_own_refusal_into_a_node_error(nodes, prompt, base, monkeypatch):
    def refuse(filename_prefix, output_dir, image_width=0, image_height=0):
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")

    monkeypatch.setattr(folder_paths, "get_save_image_path", refuse)  # should a host refuse what we let through
    with pytest.raises(error(), match=re.escape("Save Image Prompt: 'filename_prefix' ('fine') must stay inside")):
        nodes["SaveImagePrompt"].save(prompt, "fine")
    assert tree(base) == {"input", "output"}


@pytest.mark.parametrize("prefix, says", [("", "is empty"), ("   ", "is empty"), ("sub/", "does not end in a file name"),
                                          (".", "does not end in a file name"),
                                          ("sub/..", "does not end in a file name")])
def test_save_refuses_a_prefix_without_a_file_name(nodes, prompt, base, prefix, says):
    before = tree(base.parent)
    with pytest.raises(error(), match=re.escape(f"Save Image Prompt: 'filename_prefix' ('{prefix}') {says}: use a name "
                                                "like 'my_prompt' or 'sub/my_prompt'.")):
        nodes["SaveImagePrompt"].save(prompt, prefix)
    assert tree(base.parent) == before


def test_save_counter_continues_past_existing_files(nodes, prompt, base):
    save = nodes["SaveImagePrompt"].save
    assert save(prompt, "c")["ui"]["text"] == ["c_00001" + SUFFIX]
    assert save(prompt, "c")["ui"]["text"] == ["c_00002" + SUFFIX]
    out = base / "output"
    for name in ["c_00007" + SUFFIX, "c_00040_.png", "cc_00090" + SUFFIX, "c_x_00050" + SUFFIX, "c_00060.txt"]:
        (out / name).write_bytes(b"")  # only c_NNNNN.ipprompt.safetensors counts
    assert save(prompt, "c")["ui"]["text"] == ["c_00008" + SUFFIX]
    (out / "sub").mkdir()
    (out / "sub" / ("c_00011" + SUFFIX)).write_bytes(b"")
    assert save(prompt, "sub/c")["ui"]["text"] == ["sub/c_00012" + SUFFIX]  # counted inside its own folder
    assert save(prompt, "d")["ui"]["text"] == ["d_00001" + SUFFIX]


def test_save_still_refuses_a_foreign_prompt(nodes, base):
    with pytest.raises(error(), match="'image_prompt' must come from an Encode Image Prompt node of this pack"):
        nodes["SaveImagePrompt"].save({"cond": torch.zeros(1)}, "x")
    assert tree(base) == {"input", "output"}


# --- Load Image Prompt ---------------------------------------------------------------------------------------------


def test_load_lists_input_files_then_output_files_marked_output(nodes, prompt, base):
    (base / "input" / "deep" / "er").mkdir(parents=True)
    for name in ["a" + SUFFIX, "deep/b" + SUFFIX, "deep/er/c" + SUFFIX, "image.png", "x.safetensors"]:
        (base / "input" / name).write_bytes(b"")
    nodes["SaveImagePrompt"].save(prompt, "saved")
    nodes["SaveImagePrompt"].save(prompt, "sub/s")
    (base / "output" / "render_00001_.png").write_bytes(b"")
    assert listing() == ["a" + SUFFIX, "deep/b" + SUFFIX, "deep/er/c" + SUFFIX,
                         "saved_00001" + SUFFIX + " [output]", "sub/s_00001" + SUFFIX + " [output]"]
    # the annotation is the one ComfyUI resolves: 'name [output]' -> the output folder
    assert folder_paths.annotated_filepath("sub/s_00001" + SUFFIX + " [output]") == ("sub/s_00001" + SUFFIX,
                                                                                   str(base / "output"))


def test_load_lists_nothing_without_the_folders(base):
    os.rmdir(base / "input")
    os.rmdir(base / "output")
    assert listing() == []


def test_a_saved_prompt_loads_straight_from_the_output_listing(nodes, prompt, adapter, base):
    saved = nodes["SaveImagePrompt"].save(prompt, "sub/again")["ui"]["text"][0]
    name = saved + " [output]"
    assert name in listing()
    (loaded,) = nodes["LoadImagePrompt"].load(adapter, name)
    for field in ("features", "uncond_features", "image_weights", "cond", "uncond"):
        assert torch.equal(getattr(loaded, field), getattr(prompt, field).float()), field
    assert loaded.file_name == prompt.file_name and loaded.spec == prompt.spec
    # the same file from the input folder, without the annotation, as before
    os.replace(base / "output" / saved, base / "input" / "moved.ipprompt.safetensors")
    assert "moved.ipprompt.safetensors" in listing()
    assert torch.equal(nodes["LoadImagePrompt"].load(adapter, "moved.ipprompt.safetensors")[0].cond, prompt.cond)


@pytest.mark.parametrize("name", ["../evil" + SUFFIX, "../evil" + SUFFIX + " [output]", "sub/../../evil" + SUFFIX,
                                  "..\\evil" + SUFFIX, "../input/../evil" + SUFFIX + " [output]", "ABSOLUTE", " [output]"])
def test_load_refuses_names_that_leave_the_folder(nodes, adapter, prompt, base, name):
    nodes["SaveImagePrompt"].save(prompt, "evil")
    os.replace(base / "output" / ("evil_00001" + SUFFIX), base / ("evil" + SUFFIX))  # a real file, just outside
    (base / "output" / "sub").mkdir()
    if name == "ABSOLUTE":
        name = str(base / ("evil" + SUFFIX))
    with pytest.raises(error()) as err:
        nodes["LoadImagePrompt"].load(adapter, name)
    assert str(err.value) == (f"Load Image Prompt: 'prompt_file' ('{name}') must name a file inside ComfyUI's input or "
                              "output folder; '..' and absolute paths are not allowed. Pick a file from the list.")


def test_load_names_the_folder_a_missing_file_is_not_in(nodes, adapter, base):
    for name, where in [("gone" + SUFFIX, "input"), ("gone" + SUFFIX + " [output]", "output")]:
        with pytest.raises(error(), match=re.escape(f"Load Image Prompt: 'prompt_file' ('{name}') is not in the {where} "
                                                    f"folder ({base / where}).")):
            nodes["LoadImagePrompt"].load(adapter, name)


def test_descriptions_no_longer_ask_to_move_files():
    m = load_pack().NODE_CLASS_MAPPINGS
    assert "Move the file" not in m["SaveImagePrompt"].DESCRIPTION
    assert "[output]" in m["LoadImagePrompt"].INPUT_TYPES()["required"]["prompt_file"][1]["tooltip"]


# --- the stand-in's folder_paths behaves as ComfyUI's ------------------------------------------------------------


def test_standin_save_image_path_refuses_and_counts_as_comfyui(base):
    out = str(base / "output")
    with pytest.raises(Exception, match="Saving image outside the output folder is not allowed"):
        folder_paths.get_save_image_path("../x", out)
    (base / "output" / "p_00004_.png").write_bytes(b"")
    (base / "output" / ("p_00009" + SUFFIX)).write_bytes(b"")  # not a <prefix>_NNNNN_ name: ComfyUI does not count it
    assert folder_paths.get_save_image_path("p", out) == (os.path.join(out, ""), "p", 5, "", "p")
    assert folder_paths.get_save_image_path("a/b", out) == (os.path.join(out, "a"), "b", 1, "a", "a/b")
    assert os.path.isdir(os.path.join(out, "a"))  # made when missing, as ComfyUI does


def _real_folder_paths(monkeypatch):
    """ComfyUI's own folder_paths.py, if a checkout is at hand (COMFYUI_PATH or hosts/comfyui-0.8.0)."""
    root = os.environ.get("COMFYUI_PATH") or os.path.join(REPO, "hosts", "comfyui-0.8.0")
    path = os.path.join(root, "folder_paths.py")
    if not os.path.isfile(path):
        pytest.skip("no ComfyUI checkout: set COMFYUI_PATH to compare the stand-in with the real folder_paths")
    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(base_directory=None)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)  # all folder_paths needs of comfy
    spec = importlib.util.spec_from_file_location("real_folder_paths", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_standin_matches_the_real_folder_paths(base, monkeypatch):
    import inspect

    real = _real_folder_paths(monkeypatch)
    for directory in ("output", "input", "temp"):
        getattr(real, f"set_{directory}_directory")(str(base / directory))
    for name in ("get_save_image_path", "annotated_filepath", "get_annotated_filepath", "exists_annotated_filepath",
                 "get_output_directory", "get_input_directory", "get_temp_directory"):
        assert inspect.signature(getattr(real, name)) == inspect.signature(getattr(folder_paths, name)), name
    out = str(base / "output")
    for name in ("p_00003_.png", "p_00007" + SUFFIX, "P_00009_.png", "p_x_00010_.png", "q_00002_"):
        (base / "output" / name).write_bytes(b"")
    for prefix in ("p", "P", "q", "p_x", "./p", "sub/p", "a/b/c", "sub/", "", ".", "..", "sub/../x", "../x", "../../x",
                   "sub/../../x", "/abs/x", os.path.join(out, "x"), out, "%year%-%month%_x"):
        answers = []
        for module in (real, folder_paths):
            try:
                answers.append(module.get_save_image_path(prefix, out))
            except Exception as e:
                answers.append((type(e), str(e)))
        assert answers[0] == answers[1], prefix
    for name in ("a.x", "a.x [output]", "a.x [input]", "a.x [temp]", "sub/a [output]", "p_00003_.png [output]", "a[output]"):
        for function in ("annotated_filepath", "get_annotated_filepath", "exists_annotated_filepath"):
            assert getattr(real, function)(name) == getattr(folder_paths, function)(name), (function, name)
        assert real.get_annotated_filepath(name, "/d") == folder_paths.get_annotated_filepath(name, "/d"), name
