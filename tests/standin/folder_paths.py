"""Stand-in for ComfyUI's folder_paths (v0.8.0): the functions the pack calls, same signatures."""

from __future__ import annotations

import logging
import os
import tempfile
import time

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
base_path = tempfile.mkdtemp(prefix="standin-comfyui-")
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {
    "checkpoints": ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions),
    "clip_vision": ([os.path.join(models_dir, "clip_vision")], supported_pt_extensions),
}


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    paths, exts = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path in paths:
        paths.remove(full_folder_path)
    paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_folder_paths(folder_name) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def filter_files_extensions(files, extensions):
    return sorted(f for f in files if len(extensions) == 0 or os.path.splitext(f)[-1].lower() in extensions)


def get_filename_list(folder_name):
    paths, extensions = folder_names_and_paths[folder_name]
    found = set()
    for path in paths:
        if os.path.isdir(path):
            for root, _, files in os.walk(path, followlinks=True):
                found.update(os.path.relpath(os.path.join(root, f), path) for f in files)
    return filter_files_extensions(found, extensions)


def get_full_path(folder_name, filename):
    filename = os.path.relpath(os.path.join("/", filename), "/")  # as ComfyUI: never outside the folder
    for path in folder_names_and_paths.get(folder_name, ([], set()))[0]:
        full = os.path.join(path, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def get_output_directory() -> str:
    return os.path.join(base_path, "output")


def get_input_directory() -> str:
    return os.path.join(base_path, "input")


def get_temp_directory() -> str:
    return os.path.join(base_path, "temp")


# 'name [output]' / 'name [input]' / 'name [temp]': the folder the annotation names, as ComfyUI's pickers mark files
_ANNOTATIONS = (("[output]", get_output_directory), ("[input]", get_input_directory), ("[temp]", get_temp_directory))


def annotated_filepath(name: str) -> tuple[str, str | None]:
    for annotation, directory in _ANNOTATIONS:
        if name.endswith(annotation):
            return name[:-len(annotation) - 1], directory()  # the annotation and the space before it
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base_dir = annotated_filepath(name)
    if base_dir is None:
        base_dir = default_dir if default_dir is not None else get_input_directory()
    return os.path.join(base_dir, name)


def exists_annotated_filepath(name) -> bool:
    name, base_dir = annotated_filepath(name)
    return os.path.exists(os.path.join(base_dir if base_dir is not None else get_input_directory(), name))


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0) -> tuple[str, str, int, str, str]:
    """As ComfyUI's: %width%/%height%/%year%... filled in, the prefix's folder part is a subfolder of output_dir, a
    folder outside output_dir raises a bare Exception, and the counter follows SaveImage's <prefix>_NNNNN_ names."""
    if "%" in filename_prefix:
        now = time.localtime()
        for key, value in (("width", image_width), ("height", image_height), ("year", now.tm_year),
                           ("month", f"{now.tm_mon:02}"), ("day", f"{now.tm_mday:02}"), ("hour", f"{now.tm_hour:02}"),
                           ("minute", f"{now.tm_min:02}"), ("second", f"{now.tm_sec:02}")):
            filename_prefix = filename_prefix.replace(f"%{key}%", str(value))
    normalized = os.path.normpath(filename_prefix)
    subfolder, filename = os.path.dirname(normalized), os.path.basename(normalized)
    full_output_folder = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))
    if common != output_dir:
        err = ("**** ERROR: Saving image outside the output folder is not allowed."
               f"\n full_output_folder: {os.path.abspath(full_output_folder)}\n         output_dir: {output_dir}"
               f"\n         commonpath: {common}")
        logging.error(err)
        raise Exception(err)

    def number(name):  # the digits after '<basename of the prefix>_' up to the next '_', or 0
        cut = len(os.path.basename(filename_prefix)) + 1
        try:
            return int(name[cut:].split("_")[0]), name[:cut]
        except ValueError:
            return 0, name[:cut]

    try:
        numbered = [number(f) for f in os.listdir(full_output_folder)]
        matching = [n for n, head in numbered if head[-1:] == "_" and os.path.normcase(head[:-1]) == os.path.normcase(filename)]
        counter = max(matching) + 1 if matching else 1
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        counter = 1
    return full_output_folder, filename, counter, subfolder, filename_prefix
