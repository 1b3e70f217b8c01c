"""LoadIPAdapter: list models/ipadapter, read and identify a file once, hand out the adapter."""

import os
from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import folder_paths

from ..ipadapter_core import AdapterFileError, IPAdapter, load_adapter
from .common import ADAPTER_TYPE, CATEGORY, logger

FOLDER = "ipadapter"
EXTENSIONS = {".safetensors", ".bin"}


def register_model_folder():
    """Add models/ipadapter, keeping paths extra_model_paths.yaml (or another pack) already gave the key."""
    paths, extensions = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths = list(paths) + ([default] if default not in paths else [])
    # an empty set means "every file" to folder_paths; keep other packs' extensions, add ours
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(extensions) | EXTENSIONS)


@dataclass(eq=False)
class LoadedAdapter:
    """What flows through an IPA_DCA_ADAPTER socket.

    `patcher` puts the weights under ComfyUI's model management: the apply node's patches report it
    from `models()`, so it is loaded to the GPU with the UNet and offloaded with it.
    """

    adapter: IPAdapter
    patcher: object  # comfy.model_patcher.ModelPatcher around `adapter`
    file_name: str

    @property
    def spec(self):
        return self.adapter.spec


_cache: dict = {}  # full path -> (mtime, LoadedAdapter)


def load_cached(path: str) -> LoadedAdapter:
    """Read each file once; a changed modification time reads it again."""
    mtime = os.path.getmtime(path)
    hit = _cache.get(path)
    if hit and hit[0] == mtime:
        return hit[1]
    adapter = load_adapter(path)
    patcher = comfy.model_patcher.ModelPatcher(
        adapter,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
    loaded = LoadedAdapter(adapter, patcher, os.path.basename(path))
    _cache[path] = (mtime, loaded)
    logger.info("loaded %s: %s", loaded.file_name, adapter.spec.label)
    return loaded


class LoadIPAdapter:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ipadapter_file": (folder_paths.get_filename_list(FOLDER), {
                    "tooltip": "An IP-Adapter model from ComfyUI/models/ipadapter (.safetensors or .bin). "
                               "The variant (SD1.5/SDXL, base/plus/full-face) is read from the file itself.",
                }),
            }
        }

    RETURN_TYPES = (ADAPTER_TYPE,)
    RETURN_NAMES = ("ipadapter",)
    OUTPUT_TOOLTIPS = ("The loaded IP-Adapter. Connect it to Encode Image Prompt and Apply IP-Adapter.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads an IP-Adapter model file and detects which variant it is. The file is read once and reused "
        "until it changes on disk. Only tensors are read: a file that carries code is refused."
    )

    def load(self, ipadapter_file):
        path = folder_paths.get_full_path_or_raise(FOLDER, ipadapter_file)
        try:
            return (load_cached(path),)
        except AdapterFileError as e:
            raise AdapterFileError(f"Load IP-Adapter: {e}") from None
