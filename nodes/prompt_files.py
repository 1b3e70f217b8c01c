"""Save Image Prompt / Load Image Prompt: image prompts as .safetensors files, with metadata, never pickles.

A file holds the encoder features (before the adapter's projection), their negative, and the per-image
weights; metadata names the adapter family and file it was made with and the encoder output it holds. Loading
projects the features with the adapter given, which must read the same encoder output.
"""

import os

import folder_paths
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .common import ADAPTER_TYPE, CATEGORY, PROMPT_TYPE, NodeInputError, logger
from .encode import ImagePrompt, make_prompt
from .loader import LoadedAdapter

FORMAT = "ipadapter-dca image prompt"
SUFFIX = ".ipprompt.safetensors"


def prompt_files():
    folder = folder_paths.get_input_directory()
    return sorted(f for f in os.listdir(folder) if f.endswith(SUFFIX)) if os.path.isdir(folder) else []


class SaveImagePrompt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image_prompt": (PROMPT_TYPE, {"tooltip": "The image prompt to keep."}),
            "filename_prefix": ("STRING", {"default": "image_prompt",
                                           "tooltip": "Saved as <prefix>_00001.ipprompt.safetensors in the output folder."}),
        }}

    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Saves an image prompt (its encoder features and weights) to the output folder. Move the file to the "
                   "input folder to load it with Load Image Prompt, without the images or the CLIP vision model.")

    def save(self, image_prompt, filename_prefix="image_prompt"):
        if not isinstance(image_prompt, ImagePrompt):
            raise NodeInputError("Save Image Prompt: 'image_prompt' must come from an Encode Image Prompt node of this pack.")
        folder = folder_paths.get_output_directory()
        os.makedirs(folder, exist_ok=True)
        counter = 1
        while os.path.exists(os.path.join(folder, f"{filename_prefix}_{counter:05}{SUFFIX}")):
            counter += 1
        name = f"{filename_prefix}_{counter:05}{SUFFIX}"
        spec = image_prompt.spec
        metadata = {"format": FORMAT, "version": "1", "adapter_file": image_prompt.file_name, "family": spec.family,
                    "projection": spec.projection, "encoder": spec.encoder.name, "encoder_output": spec.encoder.output,
                    "encoder_width": str(spec.encoder.width)}
        tensors = {"features": image_prompt.features, "uncond_features": image_prompt.uncond_features,
                   "image_weights": image_prompt.image_weights}
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, os.path.join(folder, name),
                  metadata)
        logger.info("saved image prompt %s", name)
        return {"ui": {"text": [name]}}


class LoadImagePrompt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ipadapter": (ADAPTER_TYPE, {"tooltip": "The IP-Adapter to project the saved features with; it must read "
                                                    "the same CLIP vision output as the one that saved them."}),
            "prompt_file": (prompt_files(), {"tooltip": "A *.ipprompt.safetensors file in ComfyUI's input folder."}),
        }}

    RETURN_TYPES = (PROMPT_TYPE,)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("The image prompt, ready for Apply IP-Adapter.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads an image prompt saved by Save Image Prompt and projects it with the given IP-Adapter."

    def load(self, ipadapter, prompt_file):
        node = "Load Image Prompt"
        if not isinstance(ipadapter, LoadedAdapter):
            raise NodeInputError(f"{node}: 'ipadapter' must come from a Load IP-Adapter node of this pack.")
        path = os.path.join(folder_paths.get_input_directory(), prompt_file)
        if not os.path.isfile(path):
            raise NodeInputError(f"{node}: '{prompt_file}' is not in the input folder ({folder_paths.get_input_directory()}).")
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise NodeInputError(f"{node}: '{prompt_file}' is not a readable .safetensors file ({e}).") from None
        if meta.get("format") != FORMAT or not {"features", "uncond_features", "image_weights"} <= set(tensors):
            raise NodeInputError(f"{node}: '{prompt_file}' is not an image prompt saved by Save Image Prompt.")
        enc = ipadapter.spec.encoder
        saved = (meta.get("encoder_output"), meta.get("encoder_width"))
        if saved != (enc.output, str(enc.width)):
            raise NodeInputError(
                f"{node}: '{prompt_file}' holds {meta.get('encoder')} {saved[0]} ({saved[1]} wide), saved with "
                f"'{meta.get('adapter_file')}' ({meta.get('family')}), but '{ipadapter.file_name}' reads "
                f"{enc.name} {enc.output} ({enc.width} wide). Load it with an adapter that uses the same image encoder.")
        return (make_prompt(ipadapter, tensors["features"], tensors["uncond_features"], tensors["image_weights"]),)
