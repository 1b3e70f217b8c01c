"""LoadIPAdapter: list models/ipadapter, read and identify a file once, hand out the adapter."""

import os
from dataclasses import dataclass

import comfy.clip_vision
import comfy.model_management
import comfy.model_patcher
import folder_paths

from ..ipadapter_core import AdapterFileError, IPAdapter, load_adapter
from ..ipadapter_core import encoders
from .common import ADAPTER_TYPE, CATEGORY, logger, register_model_folder

FOLDER = "ipadapter"
EXTENSIONS = {".safetensors", ".bin"}


def register_adapter_folder():
    register_model_folder(FOLDER, EXTENSIONS)


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
                               "The variant (SD1.5/SDXL, base/plus/full-face/FaceID, Flux, SD3.5) is read from the "
                               "file itself.",
                }),
            }
        }

    RETURN_TYPES = (ADAPTER_TYPE,)
    RETURN_NAMES = ("ipadapter",)
    OUTPUT_TOOLTIPS = ("The loaded IP-Adapter. Connect it to Encode Image Prompt and Apply IP-Adapter.",)
    FUNCTION = "run"
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

    def run(self, ipadapter_file):
        """The node: the adapter, and under the node what the file was found to be (FaceID: how v1/v2 was told)."""
        (adapter,) = self.load(ipadapter_file)
        return {"ui": {"text": [adapter.spec.label]}, "result": (adapter,)}


AUTO = "auto (by content)"
_described: dict = {}  # full path -> ((mtime, size), EncoderFile)


def describe_encoder_files() -> list:
    """Every file in models/clip_vision, described from its header; re-read only when a file changes."""
    described = []
    for name in folder_paths.get_filename_list("clip_vision"):
        path = folder_paths.get_full_path("clip_vision", name)
        stamp = (os.path.getmtime(path), os.path.getsize(path))
        hit = _described.get(path)
        if not hit or hit[0] != stamp:
            hit = (stamp, encoders.describe_file(path, name))
            _described[path] = hit
        described.append(hit[1])
    return described


def clip_encoder(spec, adapter_name: str):
    """The CLIP vision model the adapter reads: FaceID-Plus shows CLIP the face crop; plain FaceID needs none."""
    if spec.projection != "faceid":
        return spec.encoder
    if spec.clip is None:
        raise AdapterFileError(
            f"Load IP-Adapter + Encoder: {adapter_name} is an {spec.label}: it reads only face embeddings (Load Face "
            "Analyzer -> Embed Faces) and needs no image encoder. Use Load IP-Adapter instead.")
    return spec.clip


def pick_encoder_file(spec, adapter_name: str) -> tuple:
    """(file name, how it was chosen) of the clip_vision file the adapter needs, or a clear error."""
    files = describe_encoder_files()
    encoder = clip_encoder(spec, adapter_name)
    chosen = encoders.pick(files, encoder.name, encoder.file_name)
    if chosen is None:
        listing = "\n".join(f"  {f.file_name}: {f.detail}" for f in files) or "  (the folder is empty)"
        raise AdapterFileError(
            f"Load IP-Adapter + Encoder: {adapter_name} needs the image encoder {encoder.name}, and no file in "
            f"ComfyUI/models/clip_vision is one. Download {encoders.SOURCES.get(encoder.name, encoder.name)} "
            f"into models/clip_vision as {encoder.file_name}. What the folder holds:\n{listing}")
    others = [f.file_name for f in files if f.kind == chosen.kind and f is not chosen]
    how = f"{chosen.file_name} ({encoder.name}, found by content"
    how += f"; also fitting: {', '.join(others)})" if others else ")"
    return chosen.file_name, how


def load_encoder(file_name: str):
    encoder = comfy.clip_vision.load(folder_paths.get_full_path_or_raise("clip_vision", file_name))
    if encoder is None:
        raise AdapterFileError(f"Load IP-Adapter + Encoder: {file_name} in models/clip_vision is not a vision model "
                               "ComfyUI can load.")
    return encoder


class LoadIPAdapterAndEncoder:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ipadapter_file": (folder_paths.get_filename_list(FOLDER), {
                    "tooltip": "An IP-Adapter model from ComfyUI/models/ipadapter. Its variant, and the image encoder "
                               "it needs, are read from the file itself.",
                }),
                "clip_vision": ([AUTO] + folder_paths.get_filename_list("clip_vision"), {
                    "tooltip": "The image encoder. 'auto' picks the file in ComfyUI/models/clip_vision that is the "
                               "encoder this adapter was trained with, by reading each file's header (names and "
                               "shapes only). Pick a file to override.",
                }),
            }
        }

    RETURN_TYPES = (ADAPTER_TYPE, "CLIP_VISION")
    RETURN_NAMES = ("ipadapter", "clip_vision")
    OUTPUT_TOOLTIPS = (
        "The loaded IP-Adapter. Connect it to Encode Image Prompt and Apply IP-Adapter.",
        "The image encoder this adapter needs. Connect it to Encode Image Prompt.",
    )
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads an IP-Adapter and the image encoder it was trained with, so the two always match. With "
        "clip_vision on 'auto' the encoder is found in models/clip_vision by content, whatever the files are "
        "called; the choice is stable and shown on the node. Only .safetensors encoders are recognised (a .bin "
        "would have to be unpickled to be read)."
    )

    def load(self, ipadapter_file, clip_vision=AUTO):
        (adapter,) = LoadIPAdapter().load(ipadapter_file)
        if clip_vision == AUTO:
            clip_vision, how = pick_encoder_file(adapter.spec, adapter.file_name)
        else:
            how = f"{clip_vision} (chosen on the node)"
            needed = clip_encoder(adapter.spec, adapter.file_name).name
            found = next((f for f in describe_encoder_files() if f.file_name == clip_vision), None)
            if found is not None and found.kind and found.kind != needed:
                logger.warning("Load IP-Adapter + Encoder: %s is %s, but %s needs %s; Encode Image Prompt will refuse "
                               "it. Set clip_vision to auto.", clip_vision, found.kind, adapter.file_name, needed)
        logger.info("Load IP-Adapter + Encoder: %s uses %s", adapter.file_name, how)
        return {"ui": {"text": [adapter.spec.label, f"encoder: {how}"]}, "result": (adapter, load_encoder(clip_vision))}
