"""IP-Adapter core: checkpoint reading, variant detection, projection models and decoupled attention.

Pure torch (plus safetensors); it never imports ComfyUI, so it can be tested and reused on its own.
"""

from .adapter import (
    IPAdapter,
    ImagePromptError,
    adapter_from_state_dict,
    check_features,
    image_tokens,
    load_adapter,
    uncond_features,
)
from .attention import decoupled_attention, image_attention, project_image_tokens, sdpa_attention
from .checkpoint import AdapterFileError, read_state_dict
from .detect import AdapterSpec, ImageEncoder, describe
from .layers import LAYERS, SD15_LAYERS, SDXL_LAYERS, LayerSite

__all__ = [
    "AdapterFileError", "AdapterSpec", "IPAdapter", "ImageEncoder", "ImagePromptError", "LAYERS", "LayerSite",
    "SD15_LAYERS", "SDXL_LAYERS", "adapter_from_state_dict", "check_features", "decoupled_attention", "describe",
    "image_attention", "image_tokens", "load_adapter", "project_image_tokens", "read_state_dict", "sdpa_attention",
    "uncond_features",
]
