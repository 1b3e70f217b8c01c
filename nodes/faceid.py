"""FaceID glue: faces -> image tokens for Encode Image Prompt, and what Apply adds for a FaceID adapter (s_scale,
faceless images at weight 0, the LoRA of the file).

The tokens are projected as the reference does (faceid-kolors.md §1.3, §1.5): cond from the normalised ArcFace
embedding (the raw one for portrait-unnorm) and, for Plus, CLIP ViT-H's penultimate hidden states of the aligned BGR
face crop; uncond from the zero embedding and CLIP of zero (normalised) pixels. Plus keeps both of its parts, u and r,
so Apply's s_scale rebuilds u + s_scale * r without projecting again.
"""

import dataclasses
from dataclasses import dataclass

import torch

from ..ipadapter_core.combine import combine_features
from ..ipadapter_core.faceid import faceid_token_parts, plus_tokens
from ..ipadapter_core.faces import PACKS
from .common import NodeInputError, logger
from .encode import ImagePrompt, encode_pixels, parse_numbers
from .faceid_lora import add_faceid_lora
from .faces import FaceBatch

H94_RECOGNIZER = PACKS["buffalo_l"]["recognizer"]  # every h94 FaceID adapter was trained on its embeddings
CLIP_TOKENS, CLIP_WIDTH = 257, 1280  # ViT-H/14 penultimate hidden states at 224 px


@dataclass(frozen=True, eq=False)
class FaceTokens:
    """The FaceID part of an ImagePrompt."""

    id_tokens: torch.Tensor  # [2, n, T, C] u: row 0 the faces, row 1 the zero identity (uncond)
    resampled: torch.Tensor | None  # [2, n, T, C] Plus's r, of the face crops and of zero pixels; None otherwise
    found: torch.Tensor  # [n] bool: which images have a face


def is_faceid(spec) -> bool:
    return spec.projection == "faceid"


def crop_hidden_states(node, clip_vision, faces: FaceBatch, spec):
    """CLIP ViT-H penultimate hidden states [n, 257, 1280] of the aligned crops, in the BGR channel order the authors
    feed CLIP (insightface's crop straight into CLIPImageProcessor)."""
    if clip_vision is None:
        raise NodeInputError(f"{node}: the {spec.label} also shows CLIP the face crop: connect 'clip_vision' (Load "
                             "CLIP Vision with CLIP-ViT-H-14-laion2B-s32B-b79K, or Load IP-Adapter + Encoder).")
    crops = torch.stack([torch.from_numpy(f.crop.copy()) for f in faces.faces]).float() / 255  # [n, S, S, 3] BGR
    hidden = clip_vision.encode_image(crops, crop=True)["penultimate_hidden_states"].float().cpu()
    if tuple(hidden.shape[1:]) != (CLIP_TOKENS, CLIP_WIDTH):
        raise NodeInputError(
            f"{node}: the {spec.label} needs CLIP ViT-H/14 hidden states [{CLIP_TOKENS}, {CLIP_WIDTH}] of the face "
            f"crop; the connected CLIP vision model gives {list(hidden.shape[1:])}. Load "
            "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors with Load CLIP Vision.")
    return hidden


def identity(faces: FaceBatch, spec):
    """[n, 512]: the embedding each image's face gives the adapter (normalised, or raw for portrait-unnorm)."""
    raw = spec.face.output == "face_raw"
    return torch.stack([torch.from_numpy((f.embedding if raw else f.normed_embedding).astype("float32"))
                        for f in faces.faces])


def encode_faces(node, loaded, faces, clip_vision, combine, image_weights) -> ImagePrompt:
    """The image prompt of a FaceID adapter: one row of tokens per image (portrait: n faces give n * 16 tokens)."""
    spec = loaded.spec
    if not isinstance(faces, FaceBatch):
        raise NodeInputError(f"{node}: 'faces' must come from this pack's Embed Faces node.")
    if faces.recognizer != H94_RECOGNIZER:
        logger.warning("%s: the faces were embedded by %s, but %s was trained on buffalo_l's %s embeddings: the "
                       "likeness will be poor. Load Face Analyzer with the buffalo_l pack.", node, faces.recognizer,
                       loaded.file_name, H94_RECOGNIZER)
    embeds = identity(faces, spec)
    if embeds.shape[1] != spec.face.width:
        raise NodeInputError(f"{node}: the face embeddings are {embeds.shape[1]} wide; the {spec.label} reads "
                             f"{spec.face.width}-wide ArcFace embeddings (buffalo_l's {H94_RECOGNIZER}).")
    found = faces.found
    weights = parse_numbers(image_weights, embeds.shape[0], "image_weights", "images", node)
    hidden = crop_hidden_states(node, clip_vision, faces, spec) if spec.clip is not None else None
    if combine != "concat":  # merged from the faces found only: a faceless image has nothing to add
        keep = found if found.any() else torch.ones_like(found)
        try:
            embeds = combine_features(embeds[keep], combine, weights[keep])
            hidden = None if hidden is None else combine_features(hidden[keep], combine, weights[keep])
        except ValueError as e:
            raise NodeInputError(f"{node}: combine '{combine}' of the faces: {e}.") from None
        found, weights = found.any()[None], torch.ones(1)
    zero_embed = torch.zeros(1, embeds.shape[1])
    zero_hidden = None if hidden is None else encode_pixels(clip_vision, torch.zeros(1, 3, 224, 224),
                                                            "penultimate_hidden_states")
    u, r = faceid_token_parts(loaded.adapter, embeds, hidden)
    u0, r0 = faceid_token_parts(loaded.adapter, zero_embed, zero_hidden)
    n = embeds.shape[0]
    id_tokens = torch.stack([u, u0.expand(n, -1, -1)])
    resampled = None if r is None else torch.stack([r, r0.expand(n, -1, -1)])
    parts = FaceTokens(id_tokens, resampled, found)
    cond, uncond = tokens_at(spec, parts, 1.0)
    return ImagePrompt(loaded.adapter, loaded.file_name, spec, cond, uncond, weights.float(), embeds, zero_embed,
                       faceid=parts)


def tokens_at(spec, parts: FaceTokens, s_scale):
    """(cond, uncond) tokens [n, T, C] at this s_scale."""
    if parts.resampled is None:
        return parts.id_tokens[0].contiguous(), parts.id_tokens[1].contiguous()
    both = plus_tokens(spec, parts.id_tokens, parts.resampled, s_scale)
    return both[0].contiguous(), both[1].contiguous()


def check_faceid_options(node, spec, s_scale, lora_strength):
    """s_scale and lora_strength (range-checked with the weights) only mean something to a FaceID adapter."""
    if not is_faceid(spec) and (s_scale, lora_strength) != (1.0, 1.0):
        raise NodeInputError(f"{node}: s_scale and lora_strength are for FaceID adapters; the {spec.label} has "
                             "neither. Set both back to 1.")


def faceid_prompt(node, prompt, mask, s_scale, per_frame, frame_weights):
    """(image prompt, mask, frame weights) as Apply uses them for a FaceID adapter, or None when no image has a
    face: faceless images are dropped (per frame: those frames get weight 0), and Plus's tokens follow s_scale."""
    parts = prompt.faceid
    if not parts.found.any():
        logger.info("%s: no face in any image of the prompt for %s; the model is returned unchanged (no image "
                    "prompt, no LoRA).", node, prompt.file_name)
        return None
    if s_scale != 1.0 and not prompt.spec.shortcut:
        logger.warning("%s: s_scale only acts on FaceID-Plus v2 (its shortcut); the %s ignores it.", node,
                       prompt.spec.label)
    cond, uncond = tokens_at(prompt.spec, parts, s_scale)
    prompt = dataclasses.replace(prompt, cond=cond, uncond=uncond)
    found = parts.found
    if found.all():
        return prompt, mask, frame_weights
    if per_frame:
        weights = torch.ones(found.shape[0]) if frame_weights is None else frame_weights
        return prompt, mask, weights * found.float()
    keep = found
    prompt = dataclasses.replace(prompt, cond=cond[keep], uncond=uncond[keep], image_weights=prompt.image_weights[keep],
                                 features=prompt.features[keep],
                                 faceid=FaceTokens(parts.id_tokens[:, keep], None if parts.resampled is None
                                                   else parts.resampled[:, keep], found[keep]))
    if mask is not None and mask.shape[0] > 1:
        mask = mask[keep]
    return prompt, mask, frame_weights


def add_lora(node, model, loaded, lora_strength):
    """The file's LoRA on the patched clone, as the reference merges it; portrait files have none."""
    if loaded.adapter.lora and lora_strength != 0.0:
        count = add_faceid_lora(model, loaded.adapter, lora_strength, node)
        logger.info("%s: %s LoRA on %d UNet weights at strength %s", node, loaded.file_name, count, lora_strength)
