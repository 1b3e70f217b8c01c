"""ComfyUI nodes of the pack: thin glue between ComfyUI's objects and ipadapter_core."""

from .apply import ApplyIPAdapter, ApplyIPAdapterAdvanced, ApplyIPAdapterStyleComposition
from .encode import CombineImagePrompts, EncodeImagePrompt
from .loader import LoadIPAdapter, LoadIPAdapterAndEncoder, register_model_folder
from .prompt_files import LoadImagePrompt, SaveImagePrompt

register_model_folder()

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
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "LoadIPAdapterAndEncoder": "Load IP-Adapter + Encoder",
    "EncodeImagePrompt": "Encode Image Prompt",
    "CombineImagePrompts": "Combine Image Prompts",
    "ApplyIPAdapter": "Apply IP-Adapter",
    "ApplyIPAdapterAdvanced": "Apply IP-Adapter (advanced)",
    "ApplyIPAdapterStyleComposition": "Apply IP-Adapter Style & Composition",
    "SaveImagePrompt": "Save Image Prompt",
    "LoadImagePrompt": "Load Image Prompt",
}
