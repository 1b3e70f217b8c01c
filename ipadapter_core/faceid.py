"""FaceID adapters (h94/IP-Adapter-FaceID): identity tokens from an ArcFace face embedding (faceid-kolors.md §1).

Variants, told from the tensors (reference-spec §2.4-2.6):
  faceid           FaceID MLP: 512 -> 1024 -> T*C, LayerNorm; 4 tokens; LoRA in the file
  faceid-plus(v2)  the same MLP's tokens as the latents of a FacePerceiverResampler over the CLIP ViT-H hidden
                   states of the aligned face crop; v2 adds them back: out = u + s_scale * r. LoRA in the file
  portrait(-v11)   the MLP with 16 tokens, per face; n faces give n*16 tokens; no LoRA
  portrait-unnorm  a Resampler (16 latents) reading the raw (not normalised) embedding as one token; SDXL; no LoRA
v1 and v2 (and portrait and v11) have the same tensors: the released file's size, then its SHA-256, then its name
tell them apart, and the spec says which decided.

The LoRA stored in the file (`N.to_{q,k,v,out}_lora.{down,up}.weight`, processors N = attn1 at even N, attn2 at
odd N) is the reference's multiplier-1.0 LoRA on to_q/to_k/to_v/to_out.0 of every attention; `lora_weights` maps it
to the UNet's own weight names so the host can patch them like any LoRA. No module is built for it.

Shapes: B batch, T tokens, C cross-attention width, N CLIP tokens (257), E CLIP width (1280).
"""

import hashlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import AdapterFileError
from .detect import FAMILIES, FAMILY_NAMES, VIT_H_HIDDEN, ImageEncoder, _expect
from .layers import LAYERS
from .projection import IPLayer, PerceiverAttention, Resampler, feed_forward

FACE_NORMED = ImageEncoder("InsightFace buffalo_l (ArcFace w600k_r50)", "face_normed", 512, "buffalo_l")
FACE_RAW = ImageEncoder("InsightFace buffalo_l (ArcFace w600k_r50)", "face_raw", 512, "buffalo_l")

# The released files that share their tensors' layout with another: exact size in bytes and SHA-256 prefix.
RELEASES = {
    "faceid-plus": (156_558_503, "252fb53e", "ip-adapter-faceid-plus_sd15.bin"),
    "faceid-plusv2": (156_558_509, "26d0d86a", "ip-adapter-faceid-plusv2_sd15.bin"),
    "portrait": (64_586_611, "68570f3c", "ip-adapter-faceid-portrait_sd15.bin"),
    "portrait-v11": (64_586_623, "a48cb4f8", "ip-adapter-faceid-portrait-v11_sd15.bin"),
}
TWINS = {"faceid-plus": ("faceid-plus", "faceid-plusv2"), "portrait": ("portrait", "portrait-v11")}
NAME_HINTS = {"faceid-plusv2": "plusv2", "portrait-v11": "v11"}  # what names the second release
LABELS = {"faceid": "FaceID", "faceid-plus": "FaceID-Plus v1", "faceid-plusv2": "FaceID-Plus v2",
          "portrait": "FaceID portrait", "portrait-v11": "FaceID portrait v11", "portrait-unnorm": "FaceID portrait-unnorm"}


@dataclass(frozen=True)
class FaceIDSpec:
    family: str  # "sd15" | "sdxl"
    variant: str  # a key of LABELS
    cross_attention_dim: int  # C
    num_tokens: int  # T per face
    face: ImageEncoder  # the ArcFace embedding it reads: normalised, or raw for portrait-unnorm
    clip: ImageEncoder | None  # Plus: CLIP ViT-H hidden states of the face crop
    lora_rank: int  # 0: no LoRA in the file
    resampler_dim: int = 0
    resampler_heads: int = 0
    resampler_depth: int = 0
    decided_by: str = "content"  # how v1/v2 (portrait/v11) was told: "file size", "SHA-256", "file name", "assumed"
    projection: str = "faceid"

    @property
    def encoder(self) -> ImageEncoder:
        return self.face

    @property
    def shortcut(self) -> bool:  # v2: the ID tokens are added back to the resampler's output
        return self.variant == "faceid-plusv2"

    @property
    def uncond(self) -> str:
        return "zero embedding"  # the reference projects zeros_like(id) (and, for Plus, CLIP of zero pixels)

    @property
    def num_layers(self) -> int:
        return len(LAYERS[self.family])

    @property
    def reference_weight(self) -> float:
        return 1.0  # the authors' IPAdapterFaceID*.generate(scale=1.0)

    @property
    def label(self) -> str:
        extra = f", {self.decided_by}" if self.variant in RELEASES else ""
        return f"{FAMILY_NAMES[self.family]} {LABELS[self.variant]} IP-Adapter ({self.num_tokens} tokens per face{extra})"


def is_faceid_adapter(nested: dict) -> bool:
    proj, ip = nested.get("image_proj", {}), nested.get("ip_adapter", {})
    return ("0.to_q_lora.down.weight" in ip or "perceiver_resampler.proj_in.weight" in proj
            or ("norm.weight" in proj and "proj.2.weight" in proj and "proj.3.weight" not in proj)
            or ("proj_in.weight" in proj and tuple(proj["proj_in.weight"].shape[1:]) == (512,)))


class FaceIDMLP(nn.Module):
    """ArcFace embedding [B, 512] -> T tokens [B, T, C] (reference-spec §2.4)."""

    def __init__(self, cross_attention_dim: int, num_tokens: int, id_dim: int = 512):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(nn.Linear(id_dim, 2 * id_dim), nn.GELU(), nn.Linear(2 * id_dim, num_tokens * cross_attention_dim))
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, face_embeds):  # [B, 512]
        return self.norm(self.proj(face_embeds).unflatten(-1, (self.num_tokens, -1)))


class FacePerceiverResampler(nn.Module):
    """The Resampler's layers with the ID tokens as latents (no learned latents)."""

    def __init__(self, dim: int, depth: int, heads: int, embed_dim: int, output_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(embed_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim, heads), feed_forward(dim)]) for _ in range(depth))

    def forward(self, hidden_states, latents):  # [B, N, E], [B, T, dim]
        features = self.proj_in(hidden_states)
        for attn, ff in self.layers:
            latents = attn(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FaceIDPlusProj(FaceIDMLP):
    """FaceID-Plus (reference-spec §2.5): u = the MLP's tokens of the face; r = the resampler over the face crop's CLIP
    hidden states with u as its latents. The tokens are u + s_scale * r with the shortcut (v2), else r
    (`plus_tokens`); both parts are returned, so s_scale can change without projecting again."""

    def __init__(self, spec: FaceIDSpec):
        super().__init__(spec.cross_attention_dim, spec.num_tokens)
        self.perceiver_resampler = FacePerceiverResampler(spec.resampler_dim, spec.resampler_depth, spec.resampler_heads,
                                                          spec.clip.width, spec.cross_attention_dim)

    def forward(self, face_embeds, clip_hidden_states):  # [B, 512], [B, N, E] -> u, r: [B, T, C] each
        id_tokens = super().forward(face_embeds)
        return id_tokens, self.perceiver_resampler(clip_hidden_states, id_tokens)


def plus_tokens(spec: FaceIDSpec, id_tokens, resampled, s_scale: float = 1.0):
    """FaceID-Plus's tokens from its two parts: v2 adds the ID tokens back (u + s_scale * r); v1 is r alone."""
    return id_tokens + s_scale * resampled if spec.shortcut else resampled


def lora_rank(ip: dict) -> int:
    down = ip.get("0.to_q_lora.down.weight")
    return 0 if down is None else down.shape[0]


def resolve_version(kind: str, name: str, path: str | None):
    """(variant, decided by) for the variants whose v1 and v2 share their tensors: size, then SHA-256, then name."""
    first, second = TWINS[kind]
    if path and os.path.isfile(path):
        size = os.path.getsize(path)
        for variant in (first, second):
            if size == RELEASES[variant][0]:
                return variant, "file size"
        digest = _sha256(path)
        for variant in (first, second):
            if digest.startswith(RELEASES[variant][1]):
                return variant, "SHA-256"
    lowered = name.lower()
    if NAME_HINTS[second] in lowered:
        return second, "file name"
    if ("plus" if kind == "faceid-plus" else "portrait") in lowered:  # the v1 file's own name, without the v2 mark
        return first, "file name"
    return second, "assumed"  # nothing tells: the current release


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_faceid(nested: dict, name: str, path: str | None = None) -> FaceIDSpec:
    proj, ip = nested.get("image_proj", {}), nested.get("ip_adapter", {})
    if "1.to_k_ip.weight" not in ip:
        raise AdapterFileError(f"FaceID file '{name}' has no 'ip_adapter.1.to_k_ip.weight': the file is incomplete.")
    cross_dim = ip["1.to_k_ip.weight"].shape[1]
    family = FAMILIES.get(cross_dim)
    if family is None:
        raise AdapterFileError(f"FaceID file '{name}' is for cross-attention width {cross_dim}; the h94 FaceID "
                               "adapters are for SD1.5 (768) and SDXL (2048).")
    rank = lora_rank(ip)
    try:
        if "perceiver_resampler.proj_in.weight" in proj:
            dim, clip_width = proj["perceiver_resampler.proj_in.weight"].shape
            _expect(clip_width == 1280, f"a CLIP ViT-H hidden-state width of 1280 at proj_in, found {clip_width}")
            tokens, rem = divmod(proj["proj.2.weight"].shape[0], dim)
            heads, rem_heads = divmod(proj["perceiver_resampler.layers.0.0.to_q.weight"].shape[0], 64)
            _expect(rem == rem_heads == 0, "token and head widths that divide evenly")
            depth = len({k.split(".")[2] for k in proj if k.startswith("perceiver_resampler.layers.")})
            variant, how = resolve_version("faceid-plus", name, path) if family == "sd15" else ("faceid-plusv2", "content")
            spec = FaceIDSpec(family, variant, cross_dim, tokens, FACE_NORMED, VIT_H_HIDDEN, rank, dim, heads, depth, how)
        elif "latents" in proj:  # portrait-unnorm: a Resampler over the raw embedding as one token
            _, tokens, dim = proj["latents"].shape
            heads, _ = divmod(proj["layers.0.0.to_q.weight"].shape[0], 64)
            depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
            spec = FaceIDSpec(family, "portrait-unnorm", cross_dim, tokens, FACE_RAW, None, rank, dim, heads, depth)
        else:
            tokens, rem = divmod(proj["proj.2.weight"].shape[0], cross_dim)
            _expect(rem == 0 and tuple(proj["proj.0.weight"].shape) == (1024, 512), "proj.0 of 1024x512")
            if tokens == 16:
                variant, how = resolve_version("portrait", name, path) if family == "sd15" else ("portrait", "content")
            else:
                variant, how = "faceid", "content"
            spec = FaceIDSpec(family, variant, cross_dim, tokens, FACE_NORMED, None, rank, decided_by=how)
    except (KeyError, ValueError, IndexError) as e:
        raise AdapterFileError(f"FaceID file '{name}' has an image projection that matches no released FaceID "
                               f"adapter ({e}). Download it again from h94/IP-Adapter-FaceID.") from None
    return spec


def build_faceid_projection(spec: FaceIDSpec, device=None) -> nn.Module:
    with torch.device(device or "cpu"):
        if spec.variant in ("faceid-plus", "faceid-plusv2"):
            return FaceIDPlusProj(spec)
        if spec.variant == "portrait-unnorm":
            return Resampler(spec.resampler_dim, spec.resampler_depth, spec.resampler_heads, spec.num_tokens,
                             spec.face.width, spec.cross_attention_dim)
        return FaceIDMLP(spec.cross_attention_dim, spec.num_tokens)


class FaceIDAdapter(nn.Module):
    """The projection and the per-layer to_k_ip / to_v_ip, like IPAdapter; the file's LoRA stays plain tensors in
    `lora` ({"N.to_q_lora.down.weight": tensor, ...}): it patches the UNet's own weights, it is no module."""

    def __init__(self, spec: FaceIDSpec, device=None):
        super().__init__()
        self.spec = spec
        self.image_proj = build_faceid_projection(spec, device)
        with torch.device(device or "cpu"):
            self.ip_adapter = nn.ModuleDict({str(s.index): IPLayer(spec.cross_attention_dim, s.hidden_size)
                                             for s in LAYERS[spec.family]})
        self.lora = {}

    @property
    def layers(self):
        return LAYERS[self.spec.family]


def faceid_adapter_from_state_dict(nested: dict, name: str, path: str | None = None) -> FaceIDAdapter:
    spec = describe_faceid(nested, name, path)
    ip = nested["ip_adapter"]
    lora = {k: v for k, v in ip.items() if "_lora." in k}
    adapter = FaceIDAdapter(spec, device="meta")
    flat = {f"image_proj.{k}": v for k, v in nested["image_proj"].items()}
    flat.update({f"ip_adapter.{k}": v for k, v in ip.items() if k not in lora})
    try:
        adapter.load_state_dict(flat, strict=True, assign=True)
    except RuntimeError as e:
        raise AdapterFileError(f"FaceID file '{name}' does not match the {spec.label}: "
                               f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}. "
                               "Download it again from h94/IP-Adapter-FaceID.") from None
    if lora:
        check_lora(lora, spec, name)
    adapter.lora = lora
    return adapter.requires_grad_(False).eval()


LORA_TARGETS = (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0"))


def unet_attention_key(site, attn: int, target: str) -> str:
    """ComfyUI's state-dict name of one attention linear of the transformer block a layer site is in."""
    block = {"input": f"input_blocks.{site.block_id}.1", "output": f"output_blocks.{site.block_id}.1",
             "middle": "middle_block.1"}[site.block_name]
    return f"diffusion_model.{block}.transformer_blocks.{site.transformer_index}.attn{attn}.{target}.weight"


def lora_weights(lora: dict, family: str) -> dict:
    """{ComfyUI UNet weight name: (up [out, r], down [r, in])} for the file's LoRA: processor N - 1 is the attn1 and
    N the attn2 of the transformer block of layer site N (reference-spec §3.2, §4.6)."""
    patches = {}
    for site in LAYERS[family]:
        for attn, processor in ((1, site.index - 1), (2, site.index)):
            for stored, target in LORA_TARGETS:
                up, down = lora[f"{processor}.{stored}_lora.up.weight"], lora[f"{processor}.{stored}_lora.down.weight"]
                patches[unet_attention_key(site, attn, target)] = (up, down)
    return patches


def check_lora(lora: dict, spec: FaceIDSpec, name: str):
    expected = {f"{p}.{t}_lora.{d}.weight" for s in LAYERS[spec.family] for p in (s.index - 1, s.index)
                for t, _ in LORA_TARGETS for d in ("up", "down")}
    missing, extra = sorted(expected - set(lora)), sorted(set(lora) - expected)
    if missing or extra:
        raise AdapterFileError(
            f"FaceID file '{name}' has an incomplete LoRA ({len(missing)} of {len(expected)} tensors missing, e.g. "
            f"{(missing or extra)[0]}). Download it again from h94/IP-Adapter-FaceID.")


def faceid_token_parts(adapter: FaceIDAdapter, face_embeds, clip_hidden_states=None, dtype=torch.float32):
    """(u, r): the identity tokens [B, T, C] (portrait: one row per face; the caller concatenates faces) and, for
    Plus, the resampler's tokens over the face crops' CLIP hidden states (None otherwise), computed with the
    projection's weights cast to `dtype` on the inputs' device."""
    module, spec = adapter.image_proj, adapter.spec
    params = {k: v.to(face_embeds.device, dtype) for k, v in module.state_dict().items()}
    if isinstance(module, FaceIDPlusProj):
        if clip_hidden_states is None:
            raise ValueError(f"the {spec.label} needs the CLIP ViT-H hidden states of the face crop")
        return torch.func.functional_call(module, params, (face_embeds.to(dtype),
                                                           clip_hidden_states.to(face_embeds.device, dtype)))
    if spec.variant == "portrait-unnorm":
        return torch.func.functional_call(module, params, (face_embeds.to(dtype)[:, None],)), None  # one token
    return torch.func.functional_call(module, params, (face_embeds.to(dtype),)), None


def faceid_tokens(adapter: FaceIDAdapter, face_embeds, clip_hidden_states=None, s_scale=1.0, dtype=torch.float32):
    """The adapter's image tokens [B, T, C] for face embeddings (and, for Plus, the crops' CLIP hidden states)."""
    id_tokens, resampled = faceid_token_parts(adapter, face_embeds, clip_hidden_states, dtype)
    return id_tokens if resampled is None else plus_tokens(adapter.spec, id_tokens, resampled, s_scale)
