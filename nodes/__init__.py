"""ComfyUI nodes of the pack: thin glue between ComfyUI's objects and ipadapter_core."""

from .apply import ApplyIPAdapter
from .encode import EncodeImagePrompt
from .loader import LoadIPAdapter, register_model_folder

register_model_folder()

NODE_CLASS_MAPPINGS = {
    "LoadIPAdapter": LoadIPAdapter,
    "EncodeImagePrompt": EncodeImagePrompt,
    "ApplyIPAdapter": ApplyIPAdapter,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "EncodeImagePrompt": "Encode Image Prompt",
    "ApplyIPAdapter": "Apply IP-Adapter",
}
