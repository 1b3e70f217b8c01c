"""SigLIP's attention-pooling head for a CLIP_VISION that ComfyUI loaded: the pooled output the InstantX Flux
IP-Adapter consumes.

ComfyUI v0.8.0 loads SigLIP so400m-patch14-384 (clip_vision_siglip_384.json) with `load_sd(strict=False)`: the
`vision_model.head.*` tensors are dropped, and the ClipVisionModel keeps no file path. So the encoder's own file is
found again by content: among the .safetensors/.sft files of models/clip_vision, the one whose
`vision_model.post_layernorm.{weight,bias}` equal the loaded model's. Its head tensors are read with safe_open
(header plus the few tensors needed); pickles (.bin, .pt, ...) are never opened.
"""

import os
import weakref

import folder_paths
import torch
import torch.nn.functional as F
from safetensors import safe_open

from ..ipadapter_core.siglip import HEAD_PREFIX, LAYER_NORM_EPS, SiglipHeadError, SiglipPoolingHead, head_from_state_dict
from .common import NodeInputError, logger

NODE = "Encode Image Prompt"
FOLDER = "clip_vision"
SAFE_EXTENSIONS = (".safetensors", ".sft")
POST_LN_WEIGHT = "vision_model.post_layernorm.weight"
POST_LN_BIAS = "vision_model.post_layernorm.bias"
POSITIONS = "vision_model.embeddings.position_embedding.weight"
CLASS_EMBEDDING = "vision_model.embeddings.class_embedding"
SIGLIP_WIDTH, SIGLIP_TOKENS = 1152, 729  # so400m-patch14-384: 27 x 27 patches, no class token
# post_layernorm values equal up to fp16 / bf16 storage of either side
RTOL, ATOL = 5e-3, 1e-4
HEAD_SOURCE = ("Google's google/siglip-so400m-patch14-384 model.safetensors has it: put it in models/clip_vision "
               "and load it with Load CLIP Vision")

_heads = weakref.WeakKeyDictionary()  # clip_vision -> SiglipPoolingHead


def _model_tensors(clip_vision) -> dict:
    return clip_vision.model.state_dict()


def is_siglip(clip_vision) -> bool:
    """True for SigLIP so400m-patch14-384 as ComfyUI loads it: width 1152, 729 positions, no class token."""
    sd = _model_tensors(clip_vision)
    weight, positions = sd.get(POST_LN_WEIGHT), sd.get(POSITIONS)
    return (weight is not None and tuple(weight.shape) == (SIGLIP_WIDTH,) and positions is not None
            and positions.shape[0] == SIGLIP_TOKENS and CLASS_EMBEDDING not in sd)


def _close(stored, reference) -> bool:
    return torch.allclose(stored.float(), reference, rtol=RTOL, atol=ATOL)


def _encoder_heads(clip_vision):
    """num_attention_heads of the loaded encoder (ComfyUI's CLIPAttention.heads); the pooling head uses the same."""
    try:
        heads = clip_vision.model.vision_model.encoder.layers[0].self_attn.heads
    except (AttributeError, IndexError, TypeError):
        return None
    return heads if isinstance(heads, int) else None


def _scan(clip_vision):
    """(name, path, head tensors) of the first matching file that has a head, the matching files without one, and
    the names of SigLIP-shaped files seen. Files are taken in get_filename_list order."""
    sd = _model_tensors(clip_vision)
    ref_weight = sd[POST_LN_WEIGHT].detach().float().cpu()
    ref_bias = sd[POST_LN_BIAS].detach().float().cpu() if POST_LN_BIAS in sd else None
    seen, headless = [], []
    for name in folder_paths.get_filename_list(FOLDER):
        if os.path.splitext(name)[1].lower() not in SAFE_EXTENSIONS:
            continue
        path = folder_paths.get_full_path(FOLDER, name)
        if path is None:
            continue
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                keys = list(f.keys())
                if POST_LN_WEIGHT not in keys or tuple(f.get_slice(POST_LN_WEIGHT).get_shape()) != tuple(ref_weight.shape):
                    continue
                seen.append(name)
                if not _close(f.get_tensor(POST_LN_WEIGHT), ref_weight):
                    continue
                if ref_bias is not None and POST_LN_BIAS in keys and not _close(f.get_tensor(POST_LN_BIAS), ref_bias):
                    continue
                head_keys = [k for k in keys if k.startswith(HEAD_PREFIX)]
                if not head_keys:
                    headless.append(name)
                    continue
                return (name, path, {k: f.get_tensor(k) for k in head_keys}), headless, seen
        except Exception as e:  # not a readable safetensors file: not the one
            logger.debug("SigLIP head search: skipping %s (%s)", path, e)
    return None, headless, seen


def pooling_head_for(clip_vision) -> SiglipPoolingHead:
    """The attention-pooling head of the connected SigLIP encoder, read once from its file in models/clip_vision
    and cached per clip_vision object. Raises NodeInputError ("Encode Image Prompt: ...") if it cannot be found."""
    try:
        cached = _heads.get(clip_vision)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None:
        return cached
    if not is_siglip(clip_vision):
        raise NodeInputError(f"{NODE}: the connected CLIP vision model is not SigLIP so400m-patch14-384 (width "
                             f"{SIGLIP_WIDTH}, {SIGLIP_TOKENS} tokens), which the InstantX Flux IP-Adapter needs. "
                             f"{HEAD_SOURCE}.")
    found, headless, seen = _scan(clip_vision)
    if found is None:
        if headless:
            names = ", ".join(f"'{n}'" for n in headless)
            raise NodeInputError(
                f"{NODE}: {names} (the connected SigLIP encoder's file in models/clip_vision) lacks the "
                f"attention-pooling head ({HEAD_PREFIX}*) that the InstantX Flux IP-Adapter needs; ComfyUI does not "
                f"load that head, so it is read from the file. {HEAD_SOURCE}.")
        listed = ", ".join(f"'{n}'" for n in seen) if seen else "none"
        raise NodeInputError(
            f"{NODE}: the connected SigLIP encoder was not found in models/clip_vision: no .safetensors/.sft file "
            f"there has its weights, and its attention-pooling head ({HEAD_PREFIX}*), which the InstantX Flux "
            f"IP-Adapter needs, is read from that file (pickle files such as .bin are not opened). SigLIP files "
            f"seen: {listed}. {HEAD_SOURCE}.")
    name, path, tensors = found
    try:
        head = head_from_state_dict(tensors, name, num_heads=_encoder_heads(clip_vision))
    except SiglipHeadError as e:
        raise NodeInputError(f"{NODE}: {e}. {HEAD_SOURCE}.") from None
    if head.hidden_size != SIGLIP_WIDTH:
        raise NodeInputError(f"{NODE}: '{name}': its attention-pooling head has width {head.hidden_size}, not "
                             f"{SIGLIP_WIDTH}. {HEAD_SOURCE}.")
    logger.info("SigLIP attention-pooling head read from %s", path)
    try:
        _heads[clip_vision] = head
    except TypeError:
        pass
    return head


def pooled_output(clip_vision, outputs) -> torch.Tensor:
    """transformers' SiglipVisionModel pooler_output [B, 1152] (float32) from ComfyUI's encode_image outputs.

    transformers applies the head to post_layernorm with eps 1e-6; ComfyUI's last_hidden_state used torch's 1e-5.
    When encode_image gave all_hidden_states (ComfyUI does for SigLIP), the post-layernorm is redone from the last
    layer's output with SigLIP's eps; otherwise last_hidden_state is used as it is.
    """
    head = pooling_head_for(clip_vision)
    with torch.no_grad():
        return _pool(head, clip_vision, outputs)


def _pool(head, clip_vision, outputs):
    tokens = outputs["last_hidden_state"].float()
    all_hidden = getattr(outputs, "all_hidden_states", None)
    sd = _model_tensors(clip_vision)
    if all_hidden is not None and POST_LN_BIAS in sd:
        last = all_hidden[:, -1].float()
        weight, bias = (sd[k].detach().to(device=last.device, dtype=torch.float32) for k in (POST_LN_WEIGHT, POST_LN_BIAS))
        tokens = F.layer_norm(last, (last.shape[-1],), weight, bias, LAYER_NORM_EPS)
    return head(tokens)


__all__ = ["is_siglip", "pooled_output", "pooling_head_for"]
