"""ApplyIPAdapter: a clone of the model whose cross-attention layers add the image prompt."""

import math

import torch

from .common import ADAPTER_TYPE, CATEGORY, PROMPT_TYPE, NodeInputError, logger
from .encode import ImagePrompt
from .loader import LoadedAdapter
from .patch import ImagePromptEntry, IPAttn2Patch

NODE = "Apply IP-Adapter"


def model_attn2_layers(model):
    """{(block_name, block_id, transformer_index): attn2 module} of a ComfyUI UNet, read from its modules."""
    unet = model.get_model_object("diffusion_model")
    if not all(hasattr(unet, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        raise NodeInputError(
            f"{NODE}: the model is a {type(unet).__name__}, not an SD1.5 or SDXL UNet. IP-Adapter models of this "
            "pack work with SD1.5 and SDXL checkpoints (and their fine-tunes) only."
        )
    layers = {}
    for block_name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for block_id, block in enumerate(blocks):
            for module in block:
                for index, transformer in enumerate(getattr(module, "transformer_blocks", ())):
                    if getattr(transformer, "attn2", None) is not None:
                        layers[(block_name, block_id, index)] = transformer.attn2
    return layers


def check_model_fits(model, loaded: LoadedAdapter):
    """Every layer the adapter patches must exist in the model with the widths of its to_k_ip [D, C]."""
    layers = model_attn2_layers(model)
    spec = loaded.spec
    wrong = []
    for site in loaded.adapter.layers:
        attn2 = layers.get((site.block_name, site.block_id, site.transformer_index))
        d, c = loaded.adapter.ip_adapter[str(site.index)].to_k_ip.weight.shape
        if attn2 is None:
            wrong.append(f"no cross-attention at {site.block_name} block {site.block_id}")
        elif (attn2.to_q.out_features, attn2.to_k.in_features) != (d, c):
            wrong.append(f"{site.block_name} block {site.block_id} is {attn2.to_q.out_features} wide with "
                         f"{attn2.to_k.in_features}-wide text, the adapter expects {d} and {c}")
    if wrong:
        widths = {attn2.to_k.in_features for attn2 in layers.values()}
        family = {768: "SD1.5", 2048: "SDXL"}.get(widths.pop()) if len(widths) == 1 else None
        advice = (f"The model looks like {family}: use an {family} IP-Adapter with it." if family and family not in spec.label
                  else "Use the IP-Adapter made for this model's family.")
        raise NodeInputError(
            f"{NODE}: '{loaded.file_name}' is an {spec.label}, but the model does not fit it: "
            f"{'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}. {advice}"
        )


def check_mask(attn_mask):
    if attn_mask is None:
        return None
    mask = attn_mask if attn_mask.ndim == 3 else attn_mask[None] if attn_mask.ndim == 2 else None
    if mask is None or min(mask.shape) == 0:
        raise NodeInputError(f"{NODE}: 'attn_mask' must be a MASK [height, width] or [1, height, width], "
                             f"got shape {list(attn_mask.shape)}.")
    if mask.shape[0] != 1:
        raise NodeInputError(f"{NODE}: 'attn_mask' holds {mask.shape[0]} masks; give exactly one mask for the whole "
                             "image prompt.")
    if not torch.isfinite(mask).all():
        raise NodeInputError(f"{NODE}: 'attn_mask' contains NaN or infinite values.")
    if not mask.any():
        raise NodeInputError(f"{NODE}: 'attn_mask' is empty (all zeros), so the image prompt would apply nowhere. "
                             "Paint the area where it should apply, or disconnect the mask.")
    return mask.float().clamp(0, 1).cpu()


def add_patches(model, entry: ImagePromptEntry, layers):
    """Register one IPAttn2Patch per layer on `model` (a clone), wrapping what each layer had before."""
    existing = model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for site in layers:
        full_key = (site.block_name, site.block_id, site.transformer_index)
        # ComfyUI looks the 3-tuple up first, then the 2-tuple: wrap the patch it would call, at its key
        key = next((k for k in (full_key, full_key[:2]) if k in existing), site.patch_key)
        model.set_model_attn2_replace(IPAttn2Patch(site, entry, existing.get(key)), *key)


class ApplyIPAdapter:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.5 or SDXL model to steer. It is not changed: a patched copy is returned."}),
                "ipadapter": (ADAPTER_TYPE, {"tooltip": "The IP-Adapter from Load IP-Adapter; the same one that encoded the image prompt."}),
                "image_prompt": (PROMPT_TYPE, {"tooltip": "The image prompt from Encode Image Prompt."}),
                "weight": ("FLOAT", {
                    "default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                    "tooltip": "How strongly the image steers the picture. 1.0 for an image-only prompt; about 0.5 when a "
                               "text prompt should matter too; 0 turns the adapter off; negative values push away from the image.",
                }),
                "start_percent": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                    "tooltip": "When the adapter starts acting, as a fraction of the sampling steps (0 = from the first step).",
                }),
                "end_percent": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                    "tooltip": "When the adapter stops acting (1 = until the last step). Ending early keeps the "
                               "composition from the image but leaves details to the text prompt.",
                }),
            },
            "optional": {
                "attn_mask": ("MASK", {
                    "tooltip": "Optional: where in the picture the image prompt applies (white = full strength, gray = "
                               "partial). Any size and aspect ratio; it is stretched to the picture.",
                }),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A patched copy of the model that follows the image prompt. Chain more Apply IP-Adapter, "
                       "LoRA or other model nodes after it as usual.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Adds the image prompt to every cross-attention layer of the model (decoupled cross-attention, Ye et al. "
        "2023): out = text attention + weight x image attention. Returns a patched copy; the input model is unchanged. "
        "Several Apply IP-Adapter nodes in a row all apply."
    )

    def apply(self, model, ipadapter, image_prompt, weight, start_percent, end_percent, attn_mask=None):
        if not isinstance(ipadapter, LoadedAdapter):
            raise NodeInputError(f"{NODE}: 'ipadapter' must come from a Load IP-Adapter node of this pack.")
        if not isinstance(image_prompt, ImagePrompt):
            raise NodeInputError(f"{NODE}: 'image_prompt' must come from an Encode Image Prompt node of this pack.")
        if image_prompt.adapter is not ipadapter.adapter:
            raise NodeInputError(
                f"{NODE}: the image prompt was encoded for '{image_prompt.file_name}' but is applied with "
                f"'{ipadapter.file_name}'. Connect the same Load IP-Adapter node to Encode Image Prompt and Apply IP-Adapter."
            )
        if not math.isfinite(weight) or not -1.0 <= weight <= 5.0:
            raise NodeInputError(f"{NODE}: 'weight' must be a number from -1 to 5, got {weight}.")
        for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise NodeInputError(f"{NODE}: '{name}' must be from 0 to 1, got {value}.")
        if start_percent > end_percent:
            raise NodeInputError(f"{NODE}: 'start_percent' ({start_percent}) is after 'end_percent' ({end_percent}); "
                                 "the adapter would never act. Make start_percent smaller than end_percent.")
        mask = check_mask(attn_mask)
        check_model_fits(model, ipadapter)

        sampling = model.get_model_object("model_sampling")
        entry = ImagePromptEntry(ipadapter, image_prompt, weight, sampling.percent_to_sigma(start_percent),
                                 sampling.percent_to_sigma(end_percent), mask)
        patched = model.clone()
        add_patches(patched, entry, ipadapter.adapter.layers)
        logger.debug("applied %s at weight %s to %d layers", ipadapter.file_name, weight, len(ipadapter.adapter.layers))
        return (patched,)
