"""Apply IP-Adapter nodes: a clone of the model whose cross-attention layers add the image prompt."""

import math

import torch

from ..ipadapter_core.attention import KV_SCALING
from ..ipadapter_core.schedules import (
    COMPOSITION,
    STYLE,
    WEIGHT_TYPES,
    LayerWeights,
    LayerWeightsError,
    apply_layer_weights,
    schedule,
)
from .common import ADAPTER_TYPE, CATEGORY, PROMPT_TYPE, NodeInputError, logger
from .encode import ImagePrompt, parse_numbers
from .faceid import add_lora, check_faceid_options, faceid_prompt, is_faceid
from .flux import apply_flux
from .loader import LoadedAdapter
from .patch import ImagePromptEntry, IPAttn2Patch
from .sd3 import apply_sd3

DIT_APPLY = {"flux": ("Flux", apply_flux), "sd3": ("SD3.5", apply_sd3)}  # family -> (name, apply function)


def check_dit_options(node, family, weight_type, kv_scaling, per_frame, frame_weights):
    """The advanced node's UNet-only inputs must stay at their defaults with a Flux or SD3.5 adapter."""
    example = "'all = 0, double 5 = 1'" if family == "Flux" else "'all = 0, block 5 = 1'"
    if weight_type != "linear":
        raise NodeInputError(f"{node}: weight_type '{weight_type}' is defined on SD1.5/SDXL UNet layers; with a {family} "
                             f"adapter use 'linear' and set blocks with layer_weights (e.g. {example}).")
    if kv_scaling != "V only":
        raise NodeInputError(f"{node}: kv_scaling '{kv_scaling}' is for SD1.5/SDXL; {family} adapters use 'V only'.")
    if per_frame or (frame_weights and frame_weights.strip()):
        raise NodeInputError(f"{node}: per_frame and frame_weights are for SD1.5/SDXL batches; turn them off with a "
                             f"{family} adapter.")


def model_attn2_layers(model, node):
    """{(block_name, block_id, transformer_index): attn2 module} of a ComfyUI UNet, read from its modules."""
    unet = model.get_model_object("diffusion_model")
    if not all(hasattr(unet, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        raise NodeInputError(
            f"{node}: the model is a {type(unet).__name__}, not an SD1.5 or SDXL UNet, and this is an SD1.5/SDXL "
            "IP-Adapter. For Flux.1 load a Flux IP-Adapter (XLabs flux-ip-adapter or InstantX FLUX.1-dev-IP-Adapter)."
        )
    layers = {}
    for block_name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for block_id, block in enumerate(blocks):
            for module in block:
                for index, transformer in enumerate(getattr(module, "transformer_blocks", ())):
                    if getattr(transformer, "attn2", None) is not None:
                        layers[(block_name, block_id, index)] = transformer.attn2
    return layers


def check_model_fits(model, loaded: LoadedAdapter, node):
    """Every layer the adapter patches must exist in the model with the widths of its to_k_ip [D, C]."""
    layers = model_attn2_layers(model, node)
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
            f"{node}: '{loaded.file_name}' is an {spec.label}, but the model does not fit it: "
            f"{'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}. {advice}"
        )


def check_inputs(node, ipadapter, prompts, weights, start_percent, end_percent):
    if not isinstance(ipadapter, LoadedAdapter):
        raise NodeInputError(f"{node}: 'ipadapter' must come from a Load IP-Adapter node of this pack.")
    for name, prompt in prompts.items():
        if not isinstance(prompt, ImagePrompt):
            raise NodeInputError(f"{node}: '{name}' must come from an Encode Image Prompt node of this pack.")
        if prompt.adapter is not ipadapter.adapter:
            raise NodeInputError(
                f"{node}: the image prompt was encoded for '{prompt.file_name}' but is applied with "
                f"'{ipadapter.file_name}'. Connect the same Load IP-Adapter node to Encode Image Prompt and Apply IP-Adapter."
            )
    for name, weight in weights.items():
        if not math.isfinite(weight) or not -1.0 <= weight <= 5.0:
            raise NodeInputError(f"{node}: '{name}' must be a number from -1 to 5, got {weight}.")
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise NodeInputError(f"{node}: '{name}' must be from 0 to 1, got {value}.")
    if start_percent > end_percent:
        raise NodeInputError(f"{node}: 'start_percent' ({start_percent}) is after 'end_percent' ({end_percent}); "
                             "the adapter would never act. Make start_percent smaller than end_percent.")


def check_mask(attn_mask, images, node):
    """None, or a [1 or n, H, W] float mask: one for the whole prompt, or one per reference image (or frame)."""
    if attn_mask is None:
        return None
    mask = attn_mask if attn_mask.ndim == 3 else attn_mask[None] if attn_mask.ndim == 2 else None
    if mask is None or min(mask.shape) == 0:
        raise NodeInputError(f"{node}: 'attn_mask' must be a MASK [height, width] or [masks, height, width], "
                             f"got shape {list(attn_mask.shape)}.")
    if mask.shape[0] not in (1, images):
        raise NodeInputError(f"{node}: 'attn_mask' holds {mask.shape[0]} masks, but the image prompt has {images} "
                             f"reference image(s); give 1 mask, or one per reference image ({images}).")
    if not torch.isfinite(mask).all():
        raise NodeInputError(f"{node}: 'attn_mask' contains NaN or infinite values.")
    empty = [i for i in range(mask.shape[0]) if not mask[i].any()]
    if empty:
        which = "" if mask.shape[0] == 1 else f" (mask {empty[0] + 1} of {mask.shape[0]})"
        raise NodeInputError(f"{node}: 'attn_mask' is empty (all zeros){which}, so the image prompt would apply "
                             "nowhere there. Paint the area where it should apply, or disconnect the mask.")
    return mask.float().clamp(0, 1).cpu()


def sigma_range(model, start_percent, end_percent):
    sampling = model.get_model_object("model_sampling")
    return sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent)


def add_patches(model, entry: ImagePromptEntry, layers):
    """Register one IPAttn2Patch per weighted layer on `model` (a clone), wrapping what each layer had before."""
    existing = model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for site in layers:
        if entry.layer_weights.get(site.index, 0.0) == 0.0:
            continue  # a zero weight costs nothing: the layer is left as it was
        full_key = (site.block_name, site.block_id, site.transformer_index)
        # ComfyUI looks the 3-tuple up first, then the 2-tuple: wrap the patch it would call, at its key
        key = next((k for k in (full_key, full_key[:2]) if k in existing), site.patch_key)
        model.set_model_attn2_replace(IPAttn2Patch(site, entry, existing.get(key)), *key)


def patched_clone(model, loaded, entries):
    patched = model.clone()
    for entry in entries:
        add_patches(patched, entry, loaded.adapter.layers)
    logger.debug("applied %s: %d image prompt(s)", loaded.file_name, len(entries))
    return patched


def by_index(loaded, layer_weights: LayerWeights):
    return {site.index: w for site, w in zip(loaded.adapter.layers, layer_weights.weights)}


def apply_image_prompt(node, model, ipadapter, image_prompt, weight, start_percent, end_percent, weight_type="linear",
                       kv_scaling="V only", per_frame=False, attn_mask=None, layer_weights="", composition_weight=1.0,
                       style_boost=1.0, composition_boost=0.0, frame_weights="", s_scale=1.0, lora_strength=1.0):
    """What both Apply IP-Adapter nodes do (the plain one with the advanced inputs at their defaults): check, then
    patch a clone for an SD1.5/SDXL (CLIP or FaceID) adapter, or hand over to the Flux / SD3.5 glue."""
    check_inputs(node, ipadapter, {"image_prompt": image_prompt}, {"weight": weight, "composition_weight": composition_weight,
                 "s_scale": s_scale, "lora_strength": lora_strength}, start_percent, end_percent)
    for name, value, allowed in (("weight_type", weight_type, WEIGHT_TYPES), ("kv_scaling", kv_scaling, KV_SCALING)):
        if value not in allowed:
            raise NodeInputError(f"{node}: '{name}' must be one of {list(allowed)}, got {value!r}.")
    for name, value in (("style_boost", style_boost), ("composition_boost", composition_boost)):
        if not math.isfinite(value):
            raise NodeInputError(f"{node}: '{name}' must be a finite number, got {value}.")
    check_faceid_options(node, ipadapter.spec, s_scale, lora_strength)
    mask = check_mask(attn_mask, image_prompt.count, node)
    if ipadapter.spec.family in DIT_APPLY:
        family, apply_dit = DIT_APPLY[ipadapter.spec.family]
        check_dit_options(node, family, weight_type, kv_scaling, per_frame, frame_weights)
        return (apply_dit(model, ipadapter, image_prompt, weight, sigma_range(model, start_percent, end_percent),
                          mask, layer_weights, node),)
    frames = None
    if frame_weights and frame_weights.strip():
        if not per_frame:
            raise NodeInputError(f"{node}: 'frame_weights' needs per_frame on (one reference image per frame).")
        frames = parse_numbers(frame_weights, image_prompt.count, "frame_weights", "frames", node)
    check_model_fits(model, ipadapter, node)
    if is_faceid(ipadapter.spec):
        faceid = faceid_prompt(node, image_prompt, mask, s_scale, per_frame, frames)
        if faceid is None:
            return (model,)
        image_prompt, mask, frames = faceid
    family = ipadapter.spec.family
    boost = style_boost if weight_type == "style transfer precise" else composition_boost
    weights = schedule(weight_type, family, weight, composition_weight, boost)
    try:
        weights = apply_layer_weights(layer_weights, family, weights, weight)
    except LayerWeightsError as e:
        raise NodeInputError(f"{node}: {e}") from None
    entry = ImagePromptEntry(ipadapter, image_prompt, by_index(ipadapter, weights),
                             *sigma_range(model, start_percent, end_percent), mask=mask, swapped=weights.swapped,
                             kv_scaling=kv_scaling, per_frame=per_frame, frame_weights=frames)
    patched = patched_clone(model, ipadapter, [entry])
    if is_faceid(ipadapter.spec):
        add_lora(node, patched, ipadapter, lora_strength)
    return (patched,)


MODEL_TOOLTIP = ("The model to steer (SD1.5, SDXL, Flux.1 or SD3.5-Large: the one the adapter is for). It is not "
                 "changed: a patched copy is returned.")
ADAPTER_TOOLTIP = "The IP-Adapter from Load IP-Adapter; the same one that encoded the image prompt."
WEIGHT_TOOLTIP = ("How strongly the image steers the picture. 1.0 for an image-only prompt; about 0.5 when a text prompt "
                  "should matter too; 0 turns the adapter off; negative values push away from the image. A new node "
                  "starts at the connected adapter's reference weight (SD3.5-Large 0.5, InstantX Flux 0.7, others 1.0).")
START_TOOLTIP = "When the adapter starts acting, as a fraction of the sampling steps (0 = from the first step)."
END_TOOLTIP = ("When the adapter stops acting (1 = until the last step). Ending early keeps the composition from the "
               "image but leaves details to the text prompt.")
MASK_TOOLTIP = ("Optional: where in the picture the image prompt applies (white = full strength, gray = partial). Any "
                "size and aspect ratio; it is stretched to the picture. One mask, or one per reference image.")
KV_TOOLTIP = ("Where the weight acts. 'V only' is the paper's weight. 'K+V' also sharpens the attention. The 'C penalty' "
              "modes weaken the fine, high-resolution layers; 'K+mean(V) w/ C penalty' allows weights above 1 without "
              "burning the picture.")
TIMING = {
    "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": START_TOOLTIP}),
    "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": END_TOOLTIP}),
}
OUTPUT_TOOLTIP = ("A patched copy of the model that follows the image prompt. Chain more Apply IP-Adapter, LoRA or other "
                  "model nodes after it as usual.")


class ApplyIPAdapter:
    NODE = "Apply IP-Adapter"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": MODEL_TOOLTIP}),
                "ipadapter": (ADAPTER_TYPE, {"tooltip": ADAPTER_TOOLTIP}),
                "image_prompt": (PROMPT_TYPE, {"tooltip": "The image prompt from Encode Image Prompt."}),
                "weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05, "tooltip": WEIGHT_TOOLTIP}),
                **TIMING,
            },
            "optional": {
                "attn_mask": ("MASK", {"tooltip": MASK_TOOLTIP}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (OUTPUT_TOOLTIP,)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Adds the image prompt to every cross-attention layer of the model (decoupled cross-attention, Ye et al. "
        "2023): out = text attention + weight x image attention. Returns a patched copy; the input model is unchanged. "
        "Several Apply IP-Adapter nodes in a row all apply."
    )

    def apply(self, model, ipadapter, image_prompt, weight, start_percent, end_percent, attn_mask=None):
        return apply_image_prompt(self.NODE, model, ipadapter, image_prompt, weight, start_percent, end_percent,
                                  attn_mask=attn_mask)


class ApplyIPAdapterAdvanced:
    NODE = "Apply IP-Adapter (advanced)"

    @classmethod
    def INPUT_TYPES(cls):
        base = ApplyIPAdapter.INPUT_TYPES()
        return {
            "required": dict(base["required"], **{
                "weight_type": (list(WEIGHT_TYPES), {
                    "default": "linear",
                    "tooltip": "How the weight is spread over the layers: 'linear' everywhere; 'ease in/out' ramps; "
                               "'weak/strong ...' damp blocks; 'style transfer' / 'composition' use only InstantStyle's "
                               "style or layout blocks; the 'precise' kinds also push the other aspect away. Exact "
                               "multipliers are in the README.",
                }),
                "kv_scaling": (list(KV_SCALING), {"default": "V only", "tooltip": KV_TOOLTIP}),
                "per_frame": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "For batches and animation: reference image i steers latent frame i (the counts must "
                               "match). Off: every frame sees all reference images.",
                }),
            }),
            "optional": dict(base["optional"], **{
                "layer_weights": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": "Optional per-layer weights on top of weight_type, e.g. 'all = 0, output 1 = 1' (InstantStyle "
                               "style only) or 'input 8.3 = 0.5' (one transformer block of SDXL's input block 8). Values "
                               "multiply the weight; later entries win.",
                }),
                "composition_weight": ("FLOAT", {
                    "default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                    "tooltip": "The composition layers' weight for weight_type 'style and composition'.",
                }),
                "style_boost": ("FLOAT", {
                    "default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05,
                    "tooltip": "'style transfer precise': how hard the composition layers push away from the image's "
                               "layout (SDXL: start near 2; SD1.5: -1 to 1).",
                }),
                "composition_boost": ("FLOAT", {
                    "default": 0.0, "min": -5.0, "max": 5.0, "step": 0.05,
                    "tooltip": "'composition precise': how hard the style layers push away from the image's style "
                               "(0 = plain composition; try 0.3).",
                }),
                "frame_weights": ("STRING", {
                    "default": "",
                    "tooltip": "With per_frame: a weight per frame, e.g. '1, 0.8, 0.6, 0.4' (empty = all 1).",
                }),
                "s_scale": ("FLOAT", {
                    "default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                    "tooltip": "FaceID-Plus v2 only: how much the face crop's detail (seen by CLIP) adds to the identity. "
                               "1.0 is the authors' value; 1 to 2 is common.",
                }),
                "lora_strength": ("FLOAT", {
                    "default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                    "tooltip": "FaceID and FaceID-Plus: strength of the LoRA inside the adapter file, applied to the "
                               "model like any LoRA. 1.0 is how the authors use it; 0.6 to 0.8 is common to loosen its "
                               "hold on the whole picture; 0 turns it off. Do not load the separate _lora file too.",
                }),
            }),
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (OUTPUT_TOOLTIP,)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Apply IP-Adapter with fine control: per-layer weight schedules (style, composition, ease in/out, custom "
        "layer weights), K/V scaling modes, masks per reference image, and one reference per frame for batches."
    )

    def apply(self, model, ipadapter, image_prompt, weight, start_percent, end_percent, weight_type="linear",
              kv_scaling="V only", per_frame=False, attn_mask=None, layer_weights="", composition_weight=1.0,
              style_boost=1.0, composition_boost=0.0, frame_weights="", s_scale=1.0, lora_strength=1.0):
        return apply_image_prompt(self.NODE, model, ipadapter, image_prompt, weight, start_percent, end_percent,
                                  weight_type, kv_scaling, per_frame, attn_mask, layer_weights, composition_weight,
                                  style_boost, composition_boost, frame_weights, s_scale, lora_strength)


class ApplyIPAdapterStyleComposition:
    NODE = "Apply IP-Adapter Style & Composition"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.5 or SDXL model to steer. It is not changed: a patched copy "
                                               "is returned."}),
                "ipadapter": (ADAPTER_TYPE, {"tooltip": ADAPTER_TOOLTIP}),
                "style_prompt": (PROMPT_TYPE, {"tooltip": "The image prompt whose style (colour, material, "
                                                          "atmosphere) the picture takes."}),
                "composition_prompt": (PROMPT_TYPE, {"tooltip": "The image prompt whose composition (layout, "
                                                                "structure) the picture takes."}),
                "style_weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                                           "tooltip": "Strength of the style image, on the style layers only."}),
                "composition_weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                                                 "tooltip": "Strength of the composition image, on the layout layers only."}),
                **TIMING,
                "kv_scaling": (list(KV_SCALING), {"default": "V only", "tooltip": KV_TOOLTIP}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (OUTPUT_TOOLTIP,)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "InstantStyle with two images: the style image acts only on the layers that carry style and the composition "
        "image only on those that carry layout (SDXL: output block 1 and input block 8; SD1.5: see the README). "
        "Works with SD1.5 and SDXL."
    )

    def apply(self, model, ipadapter, style_prompt, composition_prompt, style_weight, composition_weight,
              start_percent, end_percent, kv_scaling="V only"):
        node = self.NODE
        check_inputs(node, ipadapter, {"style_prompt": style_prompt, "composition_prompt": composition_prompt},
                     {"style_weight": style_weight, "composition_weight": composition_weight}, start_percent, end_percent)
        if kv_scaling not in KV_SCALING:
            raise NodeInputError(f"{node}: 'kv_scaling' must be one of {list(KV_SCALING)}, got {kv_scaling!r}.")
        if is_faceid(ipadapter.spec):
            raise NodeInputError(f"{node}: {ipadapter.file_name} is a FaceID adapter, which takes one identity; use "
                                 "Apply IP-Adapter (advanced), whose weight_type and layer_weights pick its layers.")
        if ipadapter.spec.family in DIT_APPLY:
            raise NodeInputError(f"{node}: InstantStyle's style and composition blocks are SD1.5/SDXL UNet layers; with "
                                 f"a {DIT_APPLY[ipadapter.spec.family][0]} adapter use Apply IP-Adapter (advanced) and "
                                 "pick blocks with layer_weights.")
        check_model_fits(model, ipadapter, node)
        family, sigmas = ipadapter.spec.family, sigma_range(model, start_percent, end_percent)
        entries = []
        for prompt, weight, blocks in ((style_prompt, style_weight, STYLE), (composition_prompt, composition_weight,
                                                                            COMPOSITION)):
            layer_weights = {s.index: weight * blocks[family].get(s.spatial_index, 0.0) for s in ipadapter.adapter.layers}
            entries.append(ImagePromptEntry(ipadapter, prompt, layer_weights, *sigmas, kv_scaling=kv_scaling))
        return (patched_clone(model, ipadapter, entries),)
