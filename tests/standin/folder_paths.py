"""Stand-in for ComfyUI's folder_paths (v0.8.0): the functions the pack calls, same signatures."""

import os
import tempfile

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
