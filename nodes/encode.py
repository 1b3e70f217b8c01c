"""EncodeImagePrompt: reference images -> the adapter's cond and uncond image tokens."""

import math
import re
from dataclasses import dataclass

import comfy.model_management
import comfy.utils
import torch
import torch.nn.functional as F

from ..ipadapter_core import AdapterSpec, ImagePromptError, check_features, image_tokens, uncond_features
from ..ipadapter_core.combine import COMBINE_MODES, combine_features
from .common import ADAPTER_TYPE, CATEGORY, PROMPT_TYPE, NodeInputError
from .faces import FACES_TYPE
from .loader import LoadedAdapter
from .siglip import pooled_output

NODE = "Encode Image Prompt"
CROP_MODES = ["center crop", "pad", "squash", "tiles"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the colour that normalises to zero
ENCODE_CHUNK = 16  # images per encoder call; the progress bar moves once per chunk
MIN_SIDE = 16  # smaller images carry nothing an encoder can use
MAX_SHORT_SIDE = 1024  # larger images are shrunk first (the encoder sees 224 px); smaller ones reach it untouched


@dataclass(frozen=True, eq=False)
class ImagePrompt:
    """What flows through an IPA_DCA_IMAGE_PROMPT socket: image tokens for one adapter.

    The encoder features are kept too: Save Image Prompt stores them, so a saved prompt works with any adapter
    that reads the same encoder output.
    """

    adapter: object  # the IPAdapter that projected the tokens; tokens only make sense with it
    file_name: str
    spec: AdapterSpec
    cond: torch.Tensor | None  # [n, T, C] fp32: one row of tokens per reference image (or tile); SD3.5: None
    uncond: torch.Tensor | None  # [n, T, C] fp32: the negative tokens, one row per image; None: the adapter has none
    image_weights: torch.Tensor  # [n]: each image's share when their tokens are concatenated
    features: torch.Tensor  # [n, E] or [n, 257, E]: the encoder output the cond tokens were projected from
    uncond_features: torch.Tensor | None  # [1 or n, ...]
    faceid: object = None  # FaceID adapters: nodes.faceid.FaceTokens (the parts s_scale combines, which faces exist)

    @property
    def count(self):
        return self.features.shape[0]


def make_prompt(loaded, features, uncond, image_weights) -> ImagePrompt:
    """Project features with the adapter (`loaded`: anything with its adapter, file_name and spec, a LoadedAdapter or
    an ImagePrompt); the uncond row is repeated to one per image. `uncond` is None for adapters
    that have no negative tokens (InstantX Flux without a negative image): their uncond rows get no image prompt."""
    if loaded.spec.family == "sd3":  # its resampler needs each step's timestep: the tokens are made while sampling
        return ImagePrompt(loaded.adapter, loaded.file_name, loaded.spec, None, None, image_weights.float(), features,
                           uncond)
    cond = image_tokens(loaded.adapter, features)
    uncond_tokens = None
    if uncond is not None:
        uncond_tokens = image_tokens(loaded.adapter, uncond).expand(cond.shape[0], -1, -1).contiguous()
    return ImagePrompt(loaded.adapter, loaded.file_name, loaded.spec, cond.contiguous(), uncond_tokens,
                       image_weights.float(), features, uncond)


def merge(features, uncond, weights, mode, where):
    """(features, uncond, image weights) after combining the images by `mode`: concat keeps them; the other modes merge
    them into one, and the negatives too when there is one per image (a shared negative stays as it is)."""
    try:
        features = combine_features(features, mode, weights)
        if mode != "concat":
            if uncond is not None and uncond.shape[0] > 1:
                uncond = combine_features(uncond, mode, weights)
            weights = torch.ones(1)
    except ValueError as e:
        raise NodeInputError(f"{where}: {e}.") from None
    return features, uncond, weights


def to_rgb(image, name):
    """ComfyUI IMAGE [B, H, W, C] -> 3 channels; clear errors for what cannot be an image."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise NodeInputError(f"{NODE}: '{name}' must be an IMAGE batch [batch, height, width, channels], got {shape}.")
    if image.shape[0] == 0:
        raise NodeInputError(f"{NODE}: '{name}' is an empty batch (0 images). Connect at least one image.")
    if min(image.shape[1:3]) < MIN_SIDE:
        raise NodeInputError(
            f"{NODE}: '{name}' is {image.shape[2]}x{image.shape[1]} pixels; reference images need at least "
            f"{MIN_SIDE} pixels on each side (224 or more is best). Use a larger image.")
    channels = image.shape[-1]
    if channels == 1:
        return image.expand(-1, -1, -1, 3)
    if channels in (3, 4):
        return image[..., :3]  # alpha is dropped, as ComfyUI's CLIP preprocessing does
    raise NodeInputError(f"{NODE}: '{name}' has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA).")


def pad_to_square(image):
    """Pad with the CLIP mean colour, which the encoder sees as zero, so the borders carry no content."""
    _, h, w, _ = image.shape
    size = max(h, w)
    canvas = image.new_tensor(CLIP_MEAN).expand(image.shape[0], size, size, 3).clone()
    top, left = (size - h) // 2, (size - w) // 2
    canvas[:, top:top + h, left:left + w] = image
    return canvas


def square_tiles(image):
    """Cover each image with squares of its short side, evenly overlapping: [B, H, W, 3] -> [B * tiles, S, S, 3].

    A 2:1 image gives 2 tiles, 2.5:1 gives 3; a square image is one tile. Nothing is cropped away."""
    _, h, w, _ = image.shape
    side, long = min(h, w), max(h, w)
    count = math.ceil(long / side - 1e-6)
    starts = [round(i * (long - side) / max(count - 1, 1)) for i in range(count)]
    tiles = [image[:, s:s + side] if h > w else image[:, :, s:s + side] for s in starts]
    return torch.stack(tiles, dim=1).flatten(0, 1), count


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
        if spec.encoder.output == "siglip_pooled":  # ComfyUI's SigLIP has no pooling head: ours, from its file
            chunks.append(pooled_output(clip_vision, out).float())
        else:
            chunks.append(out[spec.encoder.output].float())
        progress.update(chunk.shape[0])
    features = torch.cat(chunks)
    try:
        check_features(spec, features, "the connected CLIP vision model")
    except ImagePromptError as e:
        raise ImagePromptError(f"{NODE}: {e}") from None
    return features


def encode_pixels(clip_vision, pixels, output):
    """Encoder output ("penultimate_hidden_states" or "image_embeds") for *normalised* pixel values [B, 3, 224, 224].

    encode_image would quantise them to 1/255 steps first, so the vision model is called directly with the pixel
    tensor, as encode_image itself calls it.
    """
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device), intermediate_output=-2)
    return (out[1] if output == "penultimate_hidden_states" else out[2]).float().cpu()


def encode_zero_pixels(clip_vision, spec: AdapterSpec):
    """Encoder output for an all-zero *normalised* pixel tensor (reference-spec §5.3)."""
    return uncond_features(spec, lambda pixels: encode_pixels(clip_vision, pixels, spec.encoder.output))


def default_uncond(clip_vision, spec, crop_mode):
    """The negative features when no negative image is given, as each reference makes them."""
    if spec.uncond in ("none", "zero features"):  # InstantX: none (Flux) / zeros_like at sampling time (SD3.5)
        return None
    if spec.uncond == "black image":  # XLabs: a black image through CLIP's own preprocessing
        return encode_features(clip_vision, torch.zeros(1, 224, 224, 3), spec, crop_mode)
    return encode_zero_pixels(clip_vision, spec)


def parse_numbers(text, count, name, what, node):
    """'1.0, 0.5' -> a tensor of `count` values (one value is repeated); empty text -> ones."""
    entries = [e.strip() for e in re.split(r"[,;\s]+", text or "") if e.strip()]
    if not entries:
        return torch.ones(count)
    values = []
    for i, entry in enumerate(entries, 1):
        try:
            value = float(entry)
        except ValueError:
            raise NodeInputError(f"{node}: '{name}' entry {i} ('{entry}') is not a number; write numbers separated by "
                                 "commas, for example '1.0, 0.5'.") from None
        if not math.isfinite(value):
            raise NodeInputError(f"{node}: '{name}' entry {i} is {value}; every value must be a finite number.")
        values.append(value)
    if len(values) not in (1, count):
        raise NodeInputError(f"{node}: '{name}' has {len(values)} values for {count} {what}; give one value, or one per "
                             f"{what.rstrip('s')}.")
    return torch.tensor(values).expand(count).clone()


def subtract_content(features, spec, content_text, scale):
    """InstantStyle's content subtraction: image embedding - scale x the pooled text embedding of the content."""
    if spec.encoder.output != "image_embeds":
        raise NodeInputError(
            f"{NODE}: 'content_text' works with adapters that read CLIP's global image embedding (ip-adapter_sd15, "
            f"ip-adapter_sdxl, ...); the {spec.label} reads per-patch hidden states, where text cannot be subtracted. "
            "Disconnect content_text or use a base adapter.")
    pooled = [c[1].get("pooled_output") for c in content_text] if isinstance(content_text, list) else [None]
    if not pooled or pooled[0] is None:
        raise NodeInputError(f"{NODE}: 'content_text' has no pooled text embedding; connect the output of a "
                             "CLIP Text Encode node.")
    text = pooled[0].float().reshape(-1, pooled[0].shape[-1])[:1].to(features.device)
    if text.shape[-1] != features.shape[-1]:
        need = {1280: "the SDXL CLIP (its OpenCLIP bigG half)", 1024: "an OpenCLIP ViT-H text encoder (SD2.x CLIP)"}
        raise NodeInputError(
            f"{NODE}: 'content_text' is a {text.shape[-1]}-wide text embedding, but the {spec.label} reads "
            f"{features.shape[-1]}-wide image embeddings from {spec.encoder.name}: encode the content text with "
            f"{need.get(features.shape[-1], 'the text encoder paired with that image encoder')}.")
    return features - scale * text


class EncodeImagePrompt:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ipadapter": (ADAPTER_TYPE, {"tooltip": "The IP-Adapter from Load IP-Adapter. Its image tokens are made here."}),
                "crop": (CROP_MODES, {
                    "default": "center crop",
                    "tooltip": "How non-square images reach the encoder's 224x224 input: 'center crop' keeps the middle "
                               "(the borders are lost), 'pad' keeps everything on a neutral background, 'squash' stretches, "
                               "'tiles' encodes overlapping squares that cover the whole image (more tokens, all detail).",
                }),
                "combine": (list(COMBINE_MODES), {
                    "default": "concat",
                    "tooltip": "How several images (or tiles) make one prompt: 'concat' keeps all their tokens (the model "
                               "draws on each); 'average', 'norm average', 'add' and 'subtract' merge them into one image's "
                               "worth before projection ('subtract': the first image minus the others).",
                }),
                "image_weights": ("STRING", {
                    "default": "",
                    "tooltip": "Optional weight per reference image, e.g. '1.0, 0.5' (empty = all 1). With concat they "
                               "scale each image's share; with the other modes they weight the merge.",
                }),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {
                    "tooltip": "The image encoder from Load CLIP Vision. Most adapters need ViT-H "
                               "(CLIP-ViT-H-14-laion2B-s32B-b79K); ip-adapter_sdxl and ip-adapter_sd15_vit-G need ViT-bigG. "
                               "FaceID needs none, FaceID-Plus needs ViT-H for the face crop.",
                }),
                "image": ("IMAGE", {"tooltip": "One or more reference images (a batch). Not for FaceID: connect faces."}),
                "faces": (FACES_TYPE, {
                    "tooltip": "FaceID adapters only: the faces from Embed Faces (one per image; several photos of one "
                               "person give a stronger likeness).",
                }),
                "negative_image": ("IMAGE", {
                    "tooltip": "Optional: what the picture should move away from (for example a noise or blurred image). "
                               "Without it the adapter's own neutral image is used, as the IP-Adapter authors do.",
                }),
                "content_text": ("CONDITIONING", {
                    "tooltip": "Optional (InstantStyle): a text encoding of the reference's content, e.g. 'a cat'. It is "
                               "subtracted from the image embedding so the style carries over without the content. Base "
                               "adapters only; the text encoder must match the image encoder (SDXL CLIP for ip-adapter_sdxl).",
                }),
                "content_scale": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 2.0, "step": 0.05,
                    "tooltip": "How much of content_text to subtract.",
                }),
            },
        }

    RETURN_TYPES = (PROMPT_TYPE,)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("The encoded image prompt for this adapter. Connect it to an Apply IP-Adapter node.",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Encodes reference images with CLIP vision and projects them into image tokens for the given IP-Adapter. "
        "The encoder must be the one the adapter was trained with; a mismatch is reported with the file to load."
    )

    def encode(self, ipadapter, clip_vision=None, image=None, crop="center crop", combine="concat", image_weights="",
               negative_image=None, content_text=None, content_scale=0.5, faces=None):
        if not isinstance(ipadapter, LoadedAdapter):
            raise NodeInputError(f"{NODE}: 'ipadapter' must come from a Load IP-Adapter node of this pack.")
        for name, value, allowed in (("crop", crop, CROP_MODES), ("combine", combine, COMBINE_MODES)):
            if value not in allowed:
                raise NodeInputError(f"{NODE}: '{name}' must be one of {list(allowed)}, got {value!r}.")
        spec = ipadapter.spec
        if spec.projection == "faceid":
            from .faceid import encode_faces  # nodes/faceid.py builds on this module's helpers

            if faces is None:
                raise NodeInputError(f"{NODE}: {ipadapter.file_name} is an {spec.label}: it reads faces, not images. "
                                     "Connect Load Face Analyzer -> Embed Faces to 'faces'.")
            for name, value in (("image", image), ("negative_image", negative_image), ("content_text", content_text)):
                if value is not None:
                    raise NodeInputError(
                        f"{NODE}: '{name}' is not used by FaceID adapters ({ipadapter.file_name}): the photos go "
                        "through Embed Faces into 'faces', and the negative is the zero identity, as the authors "
                        f"make it. Disconnect '{name}'.")
            return (encode_faces(NODE, ipadapter, faces, clip_vision, combine, image_weights),)
        if faces is not None:
            raise NodeInputError(f"{NODE}: 'faces' is for FaceID adapters (ip-adapter-faceid_sd15.bin, ...); "
                                 f"{ipadapter.file_name} is an {spec.label}, which reads images: connect the photo to "
                                 "'image' instead.")
        for name, value in (("clip_vision", clip_vision), ("image", image)):
            if value is None:
                raise NodeInputError(f"{NODE}: connect '{name}'; the {spec.label} needs "
                                     f"{'reference images' if name == 'image' else 'its image encoder, ' + spec.encoder.name}.")
        images = to_rgb(image, "image")
        weights = parse_numbers(image_weights, images.shape[0], "image_weights", "images", NODE)
        if crop == "tiles":
            images, tiles = square_tiles(images)
            weights = weights.repeat_interleave(tiles)
        features = encode_features(clip_vision, images, spec, crop)
        if content_text is not None:
            features = subtract_content(features, spec, content_text, content_scale)

        if negative_image is None:
            uncond = default_uncond(clip_vision, spec, crop)
        else:
            negative = to_rgb(negative_image, "negative_image")
            if negative.shape[0] not in (1, image.shape[0]):
                raise NodeInputError(
                    f"{NODE}: 'negative_image' has {negative.shape[0]} images; give 1, or one per reference image "
                    f"({image.shape[0]}).")
            if crop == "tiles":
                negative, _ = square_tiles(negative)
            uncond = encode_features(clip_vision, negative, spec, crop)
            if uncond.shape[0] not in (1, features.shape[0]):  # tiles of differently shaped images
                uncond = uncond.mean(0, keepdim=True)
        if combine == "subtract" and features.shape[0] < 2:
            raise NodeInputError(f"{NODE}: combine 'subtract' needs at least two images (the first, and what to take "
                                 f"away from it); got {features.shape[0]}.")
        return (make_prompt(ipadapter, *merge(features, uncond, weights, combine, f"{NODE}: 'image_weights'")),)


COMBINE_NODE = "Combine Image Prompts"


class CombineImagePrompts:
    @classmethod
    def INPUT_TYPES(cls):
        prompt = (PROMPT_TYPE, {"tooltip": "An image prompt from Encode Image Prompt (or Load Image Prompt)."})
        return {
            "required": {
                "image_prompt_1": prompt,
                "combine": (list(COMBINE_MODES), {
                    "default": "concat",
                    "tooltip": "'concat' keeps every prompt's tokens (the model draws on each); 'average', 'norm average', "
                               "'add' and 'subtract' merge their encoder features into one image's worth before the "
                               "projection ('subtract': the first prompt minus the others).",
                }),
            },
            "optional": {f"image_prompt_{i}": prompt for i in range(2, 6)},
        }

    RETURN_TYPES = (PROMPT_TYPE,)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("One image prompt made of all the connected ones.",)
    FUNCTION = "combine"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Combines image prompts encoded separately (different images, crops or negatives) into one, for the same "
        "IP-Adapter. The merge modes work on the encoder features, as Encode Image Prompt's own combine does."
    )

    def combine(self, image_prompt_1, combine="concat", **more):
        prompts = [image_prompt_1] + [more[k] for k in sorted(more) if more[k] is not None]
        for i, prompt in enumerate(prompts, 1):
            if not isinstance(prompt, ImagePrompt):
                raise NodeInputError(f"{COMBINE_NODE}: image prompt {i} must come from Encode Image Prompt of this pack.")
            if prompt.faceid is not None:
                raise NodeInputError(f"{COMBINE_NODE}: image prompt {i} is a FaceID prompt; FaceID prompts are not "
                                     "combined here. Batch the photos into one Embed Faces instead (one face each).")
            if prompt.adapter is not prompts[0].adapter:
                raise NodeInputError(
                    f"{COMBINE_NODE}: image prompt {i} was made for {prompt.file_name}, image prompt 1 for "
                    f"{prompts[0].file_name}; image prompts only combine for the same adapter.")
        if combine not in COMBINE_MODES:
            raise NodeInputError(f"{COMBINE_NODE}: 'combine' must be one of {list(COMBINE_MODES)}, got {combine!r}.")
        features = torch.cat([p.features for p in prompts])
        weights = torch.cat([p.image_weights for p in prompts])
        uncond = [p.uncond_features for p in prompts]
        if all(u is None for u in uncond):
            uncond = None  # InstantX: no negative tokens (Flux), or zeros made while sampling (SD3.5)
        else:
            if any(u is None for u in uncond):
                if prompts[0].spec.uncond != "zero features":
                    raise NodeInputError(
                        f"{COMBINE_NODE}: some of these image prompts have a negative image and some do not; with "
                        f"{prompts[0].file_name} give every Encode Image Prompt a negative image, or none.")
                uncond = [torch.zeros_like(p.features) if u is None else u for u, p in zip(uncond, prompts)]
            uncond = torch.cat([u.expand(p.count, *u.shape[1:]) for u, p in zip(uncond, prompts)])
            if all(torch.equal(row, uncond[0]) for row in uncond):
                uncond = uncond[:1]  # the adapter's own negative everywhere: one row, never merged (as in Encode)
        return (make_prompt(prompts[0], *merge(features, uncond, weights, combine, COMBINE_NODE)),)
