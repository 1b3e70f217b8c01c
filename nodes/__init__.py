"""ComfyUI nodes of the pack: thin glue between ComfyUI's objects and ipadapter_core."""

from ..converter.ours import DISPLAY
from .apply import ApplyIPAdapter, ApplyIPAdapterAdvanced, ApplyIPAdapterStyleComposition
from .encode import CombineImagePrompts, EncodeImagePrompt
from .faces import EmbedFaces, LoadFaceAnalyzer, register_face_folder
from .loader import LoadIPAdapter, LoadIPAdapterAndEncoder, register_adapter_folder
from .prompt_files import LoadImagePrompt, SaveImagePrompt

register_adapter_folder()
register_face_folder()

NODE_CLASS_MAPPINGS = {
    "LoadIPAdapter": LoadIPAdapter,
    "LoadIPAdapterAndEncoder": LoadIPAdapterAndEncoder,
    "EncodeImagePrompt": EncodeImagePrompt,
    "CombineImagePrompts": CombineImagePrompts,
    "ApplyIPAdapter": ApplyIPAdapter,
    "ApplyIPAdapterAdvanced": ApplyIPAdapterAdvanced,
    "ApplyIPAdapterStyleComposition": ApplyIPAdapterStyleComposition,
    "SaveImagePrompt": SaveImagePrompt,
    "LoadImagePrompt": LoadImagePrompt,
    "LoadFaceAnalyzer": LoadFaceAnalyzer,
    "EmbedFaces": EmbedFaces,
}
# the converter writes these nodes too and keeps their names beside their layout (converter/ours.py)
NODE_DISPLAY_NAME_MAPPINGS = dict(DISPLAY)
