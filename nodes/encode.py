"""EncodeImagePrompt: reference images -> the adapter's cond and uncond image tokens."""

from dataclasses import dataclass

import comfy.model_management
import comfy.utils
import torch
import torch.nn.functional as F

from ..ipadapter_core import AdapterSpec, ImagePromptError, check_features, image_tokens, uncond_features
from .common import ADAPTER_TYPE, CATEGORY, PROMPT_TYPE, NodeInputError
from .loader import LoadedAdapter

CROP_MODES = ["center crop", "pad", "squash"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the colour that normalises to zero
ENCODE_CHUNK = 16  # images per encoder call; the progress bar moves once per chunk
MIN_SIDE = 16  # smaller images carry nothing an encoder can use
MAX_SHORT_SIDE = 1024  # larger images are shrunk first (the encoder sees 224 px); smaller ones reach it untouched


@dataclass(frozen=True, eq=False)
class ImagePrompt:
    """What flows through an IPA_DCA_IMAGE_PROMPT socket: image tokens for one adapter."""

    adapter: object  # the IPAdapter that projected the tokens; tokens only make sense with it
    file_name: str
    spec: AdapterSpec
    cond: torch.Tensor  # [1, n*T, C] fp32: the n reference images' tokens, concatenated
    uncond: torch.Tensor  # [1, n*T, C] fp32: the negative image tokens, same length


def to_rgb(image, name):
    """ComfyUI IMAGE [B, H, W, C] -> 3 channels; clear errors for what cannot be an image."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise NodeInputError(f"Encode Image Prompt: '{name}' must be an IMAGE batch [batch, height, width, channels], got {shape}.")
    if image.shape[0] == 0:
        raise NodeInputError(f"Encode Image Prompt: '{name}' is an empty batch (0 images). Connect at least one image.")
    if min(image.shape[1:3]) < MIN_SIDE:
        raise NodeInputError(
            f"Encode Image Prompt: '{name}' is {image.shape[2]}x{image.shape[1]} pixels; reference images need at least "
            f"{MIN_SIDE} pixels on each side (224 or more is best). Use a larger image.")
    channels = image.shape[-1]
    if channels == 1:
        return image.expand(-1, -1, -1, 3)
    if channels in (3, 4):
        return image[..., :3]  # alpha is dropped, as ComfyUI's CLIP preprocessing does
    raise NodeInputError(f"Encode Image Prompt: '{name}' has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA).")


def pad_to_square(image):
    """Pad with the CLIP mean colour, which the encoder sees as zero, so the borders carry no content."""
    _, h, w, _ = image.shape
    size = max(h, w)
    canvas = image.new_tensor(CLIP_MEAN).expand(image.shape[0], size, size, 3).clone()
    top, left = (size - h) // 2, (size - w) // 2
    canvas[:, top:top + h, left:left + w] = image
    return canvas


def shrink_large(images):
    """Area-downscale so the short side is MAX_SHORT_SIDE: the encoder's own bicubic resize of a huge image
    would cost time and memory for nothing."""
    short = min(images.shape[1:3])
    if short <= MAX_SHORT_SIDE:
        return images
    size = [round(side * MAX_SHORT_SIDE / short) for side in images.shape[1:3]]
    return F.interpolate(images.movedim(-1, 1), size=size, mode="area").movedim(1, -1)


def encode_features(clip_vision, images, spec: AdapterSpec, crop_mode: str):
    """The encoder output the adapter consumes, [B, E] or [B, 257, E], encoded in chunks."""
    if crop_mode == "pad":
        images = pad_to_square(images)
    progress = comfy.utils.ProgressBar(images.shape[0])
    chunks = []
    for start in range(0, images.shape[0], ENCODE_CHUNK):
        chunk = shrink_large(images[start:start + ENCODE_CHUNK])
        out = clip_vision.encode_image(chunk, crop=crop_mode != "squash")
        chunks.append(out[spec.encoder.output].float())
        progress.update(chunk.shape[0])
    return torch.cat(chunks)


def encode_zero_pixels(clip_vision, spec: AdapterSpec):
    """Encoder output for an all-zero *normalised* pixel tensor (reference-spec §5.3).

    encode_image would quantise the mean colour to 1/255 steps first, so the vision model is called
    directly with the pixel tensor, as encode_image itself calls it.
    """
    def encode(pixels):
        comfy.model_management.load_model_gpu(clip_vision.patcher)
        out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device), intermediate_output=-2)
        return (out[1] if spec.encoder.output == "penultimate_hidden_states" else out[2]).float().cpu()

    return uncond_features(spec, encode)


def encoder_mismatch(spec, features, clip_vision_name="the connected CLIP vision model"):
    try:
        check_features(spec, features, clip_vision_name)
    except ImagePromptError as e:
        raise ImagePromptError(f"Encode Image Prompt: {e}") from None


class EncodeImagePrompt:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ipadapter": (ADAPTER_TYPE, {"tooltip": "The IP-Adapter from Load IP-Adapter. Its image tokens are made here."}),
                "clip_vision": ("CLIP_VISION", {
                    "tooltip": "The image encoder from Load CLIP Vision. Most adapters need ViT-H "
                               "(CLIP-ViT-H-14-laion2B-s32B-b79K); ip-adapter_sdxl and ip-adapter_sd15_vit-G need ViT-bigG.",
                }),
                "image": ("IMAGE", {"tooltip": "One or more reference images. Several images are combined by "
                                               "concatenating their tokens, so the picture draws on all of them."}),
                "crop": (CROP_MODES, {
                    "default": "center crop",
                    "tooltip": "How non-square images reach the encoder's 224x224 input: 'center crop' keeps the middle "
                               "(the borders are lost), 'pad' keeps everything on a neutral background, 'squash' stretches.",
                }),
            },
            "optional": {
                "negative_image": ("IMAGE", {
                    "tooltip": "Optional: what the picture should move away from (for example a noise or blurred image). "
                               "Without it the adapter's own neutral image is used, as the IP-Adapter authors do.",
                }),
            },
        }

    RETURN_TYPES = (PROMPT_TYPE,)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("The encoded image prompt for this adapter. Connect it to Apply IP-Adapter.",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Encodes reference images with CLIP vision and projects them into image tokens for the given IP-Adapter. "
        "The encoder must be the one the adapter was trained with; a mismatch is reported with the file to load."
    )

    def encode(self, ipadapter, clip_vision, image, crop="center crop", negative_image=None):
        if not isinstance(ipadapter, LoadedAdapter):
            raise NodeInputError("Encode Image Prompt: 'ipadapter' must come from a Load IP-Adapter node of this pack.")
        if crop not in CROP_MODES:
            raise NodeInputError(f"Encode Image Prompt: 'crop' must be one of {CROP_MODES}, got {crop!r}.")
        spec = ipadapter.spec
        images = to_rgb(image, "image")
        features = encode_features(clip_vision, images, spec, crop)
        encoder_mismatch(spec, features)
        cond = image_tokens(ipadapter.adapter, features)  # [n, T, C]
        n = cond.shape[0]

        if negative_image is None:
            uncond = image_tokens(ipadapter.adapter, encode_zero_pixels(clip_vision, spec)).expand(n, -1, -1)
        else:
            negative = to_rgb(negative_image, "negative_image")
            if negative.shape[0] not in (1, n):
                raise NodeInputError(
                    f"Encode Image Prompt: 'negative_image' has {negative.shape[0]} images; give 1, or one per "
                    f"reference image ({n}).")
            uncond = image_tokens(ipadapter.adapter, encode_features(clip_vision, negative, spec, crop)).expand(n, -1, -1)

        prompt = ImagePrompt(
            adapter=ipadapter.adapter,
            file_name=ipadapter.file_name,
            spec=spec,
            cond=cond.reshape(1, -1, cond.shape[-1]).contiguous(),
            uncond=uncond.reshape(1, -1, uncond.shape[-1]).contiguous(),
        )
        return (prompt,)


