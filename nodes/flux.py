"""Flux.1 IP-Adapters in ComfyUI: a `dit` replace patch per block, and inside it the block's own attention, seen
through the `optimized_attention_override` slot of transformer_options.

The patch never replaces the block. It calls `original_block` (or the patch that held the key before) with a copy of
transformer_options whose override slot holds ours, chained to any override already there, so it only acts inside
this block. Our override runs the host's attention for the base result and recovers the pre-RoPE query from the
post-RoPE one it is given (RoPE is a rotation: its inverse is the transpose). InstantX's image attention is added to
the attention output there, before the block's output projection; XLabs' is kept and added after the block.

Shapes: B batch rows (cond/uncond chunks), H heads, L tokens, d head width, n reference images, T tokens per image,
C token width, W model width.
"""

from dataclasses import dataclass

import comfy.patcher_extension
import torch

from ..ipadapter_core.flux import image_attention, image_kv, unrope
from ..ipadapter_core.schedules import block_weights
from ..ipadapter_core.masks import mask_for_tokens
from .common import NodeInputError
from .patch import TimestepGate, patch_models

GRID_KEY = "ipadapter_dca_grid"  # transformer_options entry: ((h, w) image-token grid, text tokens) of this call


@dataclass(frozen=True)
class FluxSite:
    """One block that gets an image branch."""

    block_type: str  # "double" | "single"
    index: int  # the block's index in the model
    layer: int  # the checkpoint's index: XLabs double i -> i; InstantX double i -> i, single i -> doubles + i

    @property
    def key(self):
        return (f"{self.block_type}_block", self.index)

    @property
    def name(self):
        return f"{self.block_type} {self.index}"


def flux_sites(spec, doubles, singles):
    sites = [FluxSite("double", i, i) for i in range(doubles)]
    if spec.projection == "instantx":
        sites += [FluxSite("single", i, doubles + i) for i in range(singles)]
    return sites


def check_flux_model(model, loaded, node):
    """The Flux.1 model's (double blocks, single blocks, heads), or a NodeInputError saying why the adapter does
    not fit it. The adapter is checked against this model (depth, width), not against the released 19 + 38 blocks."""
    spec, file_name = loaded.spec, loaded.file_name
    unet = model.get_model_object("diffusion_model")
    name = type(unet).__name__
    if hasattr(unet, "input_blocks"):
        raise NodeInputError(f"{node}: '{file_name}' is a {spec.label}, but the model is an SD1.5/SDXL UNet. Use it "
                             "with a Flux.1 model (dev, schnell or a fine-tune), or use an SD1.5/SDXL IP-Adapter here.")
    params = getattr(unet, "params", None)
    if not (hasattr(unet, "double_blocks") and hasattr(unet, "single_blocks") and params is not None):
        raise NodeInputError(f"{node}: '{file_name}' is a {spec.label}, but the model is a {name}, not Flux.1. Flux "
                             "IP-Adapters work with Flux.1 models only (SD3.5 has its own InstantX adapter).")
    chroma = "Chroma" in name or not getattr(unet.double_blocks[0], "modulation", True)  # Chroma: no per-block modulation
    if chroma or getattr(params, "global_modulation", False):
        kind = "Chroma" if chroma else "Flux.2"
        raise NodeInputError(f"{node}: the model is {kind} ({name}), which Flux.1 IP-Adapters were not trained for: "
                             f"'{file_name}' needs a Flux.1 model (dev, schnell or a fine-tune).")
    doubles, singles = len(unet.double_blocks), len(unet.single_blocks)
    width, heads = params.hidden_size, params.num_heads
    wanted = doubles if spec.projection == "xlabs" else doubles + singles
    problems = []
    if spec.hidden_size != width:
        problems.append(f"its image attention writes {spec.hidden_size}-wide values, the model is {width} wide")
    if spec.num_layers != wanted:
        blocks = f"{doubles} double blocks" + ("" if spec.projection == "xlabs" else f" + {singles} single blocks")
        problems.append(f"it has {spec.num_layers} block layers, the model has {blocks}")
    if getattr(unet.double_blocks[0], "flipped_img_txt", False):
        problems.append("the model puts image tokens before text tokens (not a Flux.1 layout)")
    if problems:
        released = "19 double blocks" if spec.projection == "xlabs" else "19 double + 38 single blocks (57)"
        raise NodeInputError(f"{node}: '{file_name}' is a {spec.label}, but the model does not fit it: "
                             f"{'; '.join(problems)}. The released adapter is for FLUX.1 ({released}, 3072 wide).")
    return doubles, singles, heads


class FluxPromptEntry:
    """One image prompt applied to a Flux model: tokens, per-block weights, timestep range, mask, caches.

    The caches never change a result, so clones share one entry: K/V are made once per layer, device and dtype."""

    def __init__(self, loaded, prompt, weights, heads, sigma_start, sigma_end, mask=None):
        self.loaded, self.prompt = loaded, prompt
        self.weights = weights  # {FluxSite: weight}; sites absent are not patched
        self.heads = heads
        self.gate = TimestepGate(sigma_start, sigma_end)
        self.mask = mask  # [1, H, W] or None
        self._kv = {}  # (layer, device, dtype) -> K, V [2 or 1, H, n*T, d]; row 0 cond, row 1 uncond
        self._layouts = {}  # (chunks, rows, device, dtype) -> each batch row's K/V row [B] and weight factor [B, 1, 1]
        self._rows_kv = {}  # (layer, layout key) -> K, V gathered for the batch rows [B, H, n*T, d]
        self._masks = {}

    @property
    def normalize_k(self):
        return self.loaded.spec.projection == "instantx"

    def kv(self, site, device, dtype):
        key = (site.layer, device, dtype)
        if key not in self._kv:
            if any(k[1:] != key[1:] for k in self._kv):
                self._kv.clear()  # moved to another device or dtype: keep one copy only
                self._rows_kv.clear()
            rows = [self.prompt.cond] + ([self.prompt.uncond] if self.prompt.uncond is not None else [])
            tokens = torch.stack(rows).flatten(1, 2).to(device, dtype)  # [2 or 1, n*T, C]
            to_k, k_bias, to_v, v_bias = (None if w is None else w.to(device, dtype) for w in self.loaded.adapter.kv(site.layer))
            ip_k, ip_v = image_kv(tokens, to_k, k_bias, to_v, v_bias, self.heads, self.normalize_k)
            shares = self.prompt.image_weights.to(device, dtype).repeat_interleave(self.prompt.cond.shape[1])
            self._kv[key] = (ip_k, ip_v * shares.view(1, 1, -1, 1))  # each image's share of the values
        return self._kv[key]

    def layout(self, q, transformer_options):
        """How this call's batch rows take the tokens, the same for every block: cond rows the cond tokens, uncond
        rows the negative ones, or a factor 0 when the adapter has none (InstantX without a negative image)."""
        chunks = tuple(transformer_options.get("cond_or_uncond") or [0])
        key = (chunks, q.shape[0], q.device, q.dtype)
        if key not in self._layouts:
            negative = self.prompt.uncond is not None
            per_chunk = q.shape[0] // len(chunks)
            rows = [c if negative else 0 for c in chunks for _ in range(per_chunk)]
            factors = [1.0 if c == 0 or negative else 0.0 for c in chunks for _ in range(per_chunk)]
            self._layouts[key] = (torch.tensor(rows, device=q.device),
                                  torch.tensor(factors, device=q.device, dtype=q.dtype).view(-1, 1, 1))
        return key, self._layouts[key]

    def batch(self, site, q, transformer_options):
        """K, V for each batch row [B, H, n*T, d] and the rows' weights [B, 1, 1], made once per layer and layout."""
        key, (index, factors) = self.layout(q, transformer_options)
        if (site.layer, key) not in self._rows_kv:
            ip_k, ip_v = self.kv(site, q.device, q.dtype)
            self._rows_kv[(site.layer, key)] = (ip_k[index], ip_v[index])
        ip_k, ip_v = self._rows_kv[(site.layer, key)]
        return ip_k, ip_v, factors * self.weights[site]

    def token_mask(self, transformer_options, rows, text_rows, q):
        """[1, rows, 1]: the mask on the image-token grid of this call. Text rows (a single block's first rows) and
        rows past the grid (Kontext's reference latents) are left unmasked."""
        grid, text = transformer_options[GRID_KEY]
        key = (grid, rows, text_rows, q.device, q.dtype)
        if key not in self._masks:
            image = mask_for_tokens(self.mask, grid)[:1]  # [1, h*w, 1]
            parts = [torch.ones(1, text if text_rows else 0, 1), image, torch.ones(1, rows, 1)]
            self._masks[key] = torch.cat(parts, 1)[:, :rows].to(q.device, q.dtype)
        return self._masks[key]

    def branch(self, site, q, transformer_options):
        """weight * Attn(q, K_img, V_img) for the pre-RoPE queries q [B, H, L, d] (a double block's image rows, a
        single block's every row): [B, L, W]."""
        ip_k, ip_v, row_weights = self.batch(site, q, transformer_options)
        out = image_attention(q, ip_k, ip_v) * row_weights
        if self.mask is not None and GRID_KEY in transformer_options:
            out = out * self.token_mask(transformer_options, q.shape[2], site.block_type == "single", q)
        return out


class FluxBlockPatch:
    """`dit` replacement for one block: the block as it was (or the patch that held its key) plus one entry's image
    attention, computed from the block's own query."""

    def __init__(self, site, entry, inner=None):
        self.site, self.entry, self.inner = site, entry, inner

    def __call__(self, args, extra):
        options = args["transformer_options"]
        run = self.inner if self.inner is not None else (lambda a, _: extra["original_block"](a))
        if not self.entry.gate.active(options):
            return run(args, extra)
        text_len = 0 if self.site.block_type == "single" else args["txt"].shape[1]
        pe, found = args["pe"], {}
        previous = options.get("optimized_attention_override")
        xlabs = self.entry.loaded.spec.projection == "xlabs"

        def override(func, q, k, v, heads, **kwargs):
            out = previous(func, q, k, v, heads, **kwargs) if previous is not None else func(q, k, v, heads, **kwargs)
            image_q = unrope(q[:, :, text_len:], pe[:, :, text_len:])  # [B, H, L_img (single: all rows), d]
            ip = self.entry.branch(self.site, image_q, options)
            if xlabs:
                found["ip"] = ip
                return out
            out[:, text_len:] += ip  # InstantX: before the block's output projection
            return out

        out = run(dict(args, transformer_options=dict(options, optimized_attention_override=override)), extra)
        if xlabs and "ip" in found:  # XLabs: after the whole block, past both residuals
            out = dict(out, img=out["img"] + found["ip"])
        return out

    def __deepcopy__(self, memo):
        """ComfyUI deep-copies model_options on every clone: share the entry (weights, caches), copy the rest."""
        import copy

        return FluxBlockPatch(self.site, self.entry, copy.deepcopy(self.inner, memo))

    def to(self, device_or_dtype):
        if hasattr(self.inner, "to"):
            moved = self.inner.to(device_or_dtype)
            if moved is not self.inner:
                return FluxBlockPatch(self.site, self.entry, moved)
        return self

    def models(self):
        return patch_models(self.entry, self.inner)


def record_grid(patch_size):
    """A DIFFUSION_MODEL wrapper that notes each call's image-token grid and text length, for masks. Called as
    wrapper(executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options, ...)."""
    def wrapper(executor, x, timestep, context, *args, **kwargs):
        options = args[4] if len(args) > 4 else kwargs.get("transformer_options")
        if options is not None:
            grid = tuple((side + patch_size // 2) // patch_size for side in x.shape[-2:])
            options[GRID_KEY] = (grid, context.shape[1])
        return executor(x, timestep, context, *args, **kwargs)
    return wrapper


def apply_flux(model, loaded, prompt, weight, sigmas, mask, layer_weights, node):
    """A patched clone of a Flux.1 model; the incoming model is untouched."""
    doubles, singles, heads = check_flux_model(model, loaded, node)
    if mask is not None and mask.shape[0] > 1:
        raise NodeInputError(f"{node}: 'attn_mask' holds {mask.shape[0]} masks; with Flux give one mask (the reference "
                             "images share one attention).")
    sites = flux_sites(loaded.spec, doubles, singles)
    try:
        weights = block_weights(layer_weights, [s.name for s in sites], weight)
    except ValueError as e:
        raise NodeInputError(f"{node}: {e}") from None
    entry = FluxPromptEntry(loaded, prompt, dict(zip(sites, weights)), heads, *sigmas, mask=mask)
    patched = model.clone()
    existing = patched.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for site in sites:
        if entry.weights[site] == 0.0:
            continue  # a zero weight costs nothing: the block is left as it was
        patched.set_model_patch_replace(FluxBlockPatch(site, entry, existing.get(site.key)), "dit", *site.key)
    if mask is not None:
        patch_size = getattr(model.get_model_object("diffusion_model"), "patch_size", 2)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "ipadapter_dca_grid",
                                     record_grid(patch_size))
    return patched
