"""The attn2 replace patch ComfyUI calls in each cross-attention layer.

ComfyUI calls `patch(q, k, v, extra_options)` with q/k/v already projected by the layer's own
to_q/to_k/to_v (LoRA included) and applies to_out to what it returns. One `ImagePromptEntry` holds
everything one Apply IP-Adapter node added; one `IPAttn2Patch` per layer adds that entry's image
attention to whatever the layer computed before: ComfyUI's attention, another adapter of ours, or
another pack's patch, which is wrapped rather than replaced.

ComfyUI deep-copies model_options on every clone; a patch then copies only its small shell and shares
its entry, so adapter weights and caches are never copied.

Shapes: B batch rows (cond/uncond chunks x frames), L query tokens, n reference images, T tokens per image,
D layer width.
"""

import copy

import comfy.ldm.modules.attention as comfy_attention
import torch

from ..ipadapter_core import project_image_tokens
from ..ipadapter_core.attention import scale_image_kv
from ..ipadapter_core.masks import mask_for_tokens, token_grid
from .common import NodeInputError


def host_attention(q, k, v, heads, extra_options):
    """The attention ComfyUI's CrossAttention would run, with the same arguments."""
    return comfy_attention.optimized_attention(
        q, k, v, heads, attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options
    )


def patch_models(entry, inner):
    """What ComfyUI must load with the model for one of our patches: the adapter's weights, then whatever the
    patch it wraps needs."""
    models = inner.models() if hasattr(inner, "models") else []
    return [entry.loaded.patcher] + [m for m in models if m is not entry.loaded.patcher]


def window_frames(options, rows):
    """Which frames of the whole batch a call's `rows` rows per chunk are, under context windows: ([rows] frame
    indices, total frames); (None, rows) when the call holds the whole batch.

    ComfyUI's own context windows put the window in transformer_options["context_window"] (index_list along
    `dim`; dim 0 is the batch of an image model); AnimateDiff-Evolved puts ad_params {"sub_idxs", "full_length"}.
    A window whose length is not the rows of this call is stale (ComfyUI leaves the last one in the options) and
    ignored."""
    window = options.get("context_window")
    if window is not None and getattr(window, "dim", 0) == 0 and len(window.index_list) == rows:
        total = getattr(window, "total_frames", 0) or max(window.index_list) + 1  # v0.3.x windows have no total
        return list(window.index_list), total
    ad_params = options.get("ad_params") or {}
    if ad_params.get("sub_idxs") is not None and len(ad_params["sub_idxs"]) == rows:
        return list(ad_params["sub_idxs"]), ad_params.get("full_length") or max(ad_params["sub_idxs"]) + 1
    return None, rows


def by_frame(t, frames):
    """Rows of `t` ([frames, ...], one per frame of the whole batch, on the frames' device) for this call's frames."""
    return t if frames is None else t[frames]


class TimestepGate:
    """Inside [start, end]? Decided once per step: ComfyUI passes the same sigmas tensor to every layer and block
    of a step, so the tensor's identity tells a new step, and only then is it read (the one host sync)."""

    def __init__(self, sigma_start, sigma_end):
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self._last = (None, True)  # (sigmas tensor of the current step, active?)

    def active(self, options) -> bool:
        sigmas = options.get("sigmas")
        if sigmas is None:
            return True
        if sigmas is not self._last[0]:
            sigma = float(sigmas.max())
            self._last = (sigmas, self.sigma_end <= sigma <= self.sigma_start)
        return self._last[1]


class ImagePromptEntry:
    """One image prompt applied to a model: tokens, per-layer weights, timestep range, mask, and caches.

    The caches are transparent (they never change a result), so sharing one entry between clones is
    safe: K/V are computed once per device and dtype and reused by every step and by both CFG halves.
    """

    def __init__(self, loaded, prompt, layer_weights, sigma_start, sigma_end, mask=None, swapped=frozenset(),
                 kv_scaling="V only", per_frame=False, frame_weights=None):
        self.loaded = loaded  # LoadedAdapter: weights under ComfyUI's model management
        self.prompt = prompt  # ImagePrompt: cond/uncond tokens [n, T, C], image weights [n]
        self.layer_weights = layer_weights  # {checkpoint index N: weight}; layers absent are not patched
        self.swapped = swapped  # indices N where cond and uncond trade places (the "precise" schedules)
        self.gate = TimestepGate(sigma_start, sigma_end)
        self.mask = mask  # [1 or n, H, W] or None
        self.kv_scaling = kv_scaling
        self.per_frame = per_frame  # image f drives latent frame f
        self.frame_weights = frame_weights  # [n] or None, per_frame only
        self.separate = mask is not None and mask.shape[0] > 1 and not per_frame  # one softmax per image
        self._kv = {}  # (layer index, device, dtype) -> K and V [2, n, T, D]; row 0 cond, row 1 uncond
        self._masks = {}  # (grid, device, dtype) -> [1 or n, L, 1]
        self._frames = (None, None)  # ((window's frame indices, device), their index tensor): every layer reuses it

    def kv(self, site, device, dtype):
        key = (site.index, device, dtype)
        if key not in self._kv:
            if any(k[1:] != key[1:] for k in self._kv):
                self._kv.clear()  # moved to another device or dtype: keep one copy only
            layer = self.loaded.adapter.ip_adapter[str(site.index)]
            tokens = torch.stack([self.prompt.cond, self.prompt.uncond]).to(device, dtype)  # [2, n, T, C]
            to_k_ip, to_v_ip = (w.to(device, dtype) for w in (layer.to_k_ip.weight, layer.to_v_ip.weight))
            ip_k, ip_v = project_image_tokens(tokens, to_k_ip, to_v_ip)
            ip_v = ip_v * self.prompt.image_weights.to(device, dtype).view(1, -1, 1, 1)  # each image's share
            self._kv[key] = (ip_k, ip_v)
        return self._kv[key]

    def rows(self, site, q, extra_options):
        """Per batch chunk: 0 = cond, 1 = uncond (traded at swapped layers); the rows per chunk; and, per frame, which
        frames of the whole animation those rows are ([rows] index tensor on q's device, or None for 0, 1, ...)."""
        chunks = extra_options.get("cond_or_uncond") or [0]
        if site.index in self.swapped:
            chunks = [1 - c for c in chunks]
        per_chunk = q.shape[0] // len(chunks)
        frames, total = window_frames(extra_options, per_chunk)
        if frames is not None:  # one index tensor per window for K, V, frame weights and masks, made once
            key = (tuple(frames), q.device)
            if self._frames[0] != key:
                self._frames = (key, torch.tensor(frames, device=q.device))
            frames = self._frames[1]
        if self.per_frame and self.prompt.count not in (1, total):
            windowed = f" (sampled in context windows of {per_chunk})" if frames is not None else ""
            raise NodeInputError(
                f"Apply IP-Adapter (advanced): per_frame is on with {self.prompt.count} reference images, but the "
                f"latent batch has {total} frames{windowed}. Give one reference image per frame, or turn per_frame off.")
        return chunks, per_chunk, frames

    def batch_kv(self, site, q, chunks, per_chunk, frames=None):
        """K and V for the batch rows: [B, n*T, D] (one softmax over every image), [B, n, T, D] (an attention
        per image, for per-image masks) or [B, T, D] (per frame: row f gets image f)."""
        ip_k, ip_v = self.kv(site, q.device, q.dtype)

        def gather(t):  # t: [2, n, T, D]
            if self.per_frame:
                parts = [t[c].expand(per_chunk, -1, -1) if t.shape[1] == 1 else by_frame(t[c], frames) for c in chunks]
            elif self.separate:
                parts = [t[c:c + 1].expand(per_chunk, -1, -1, -1) for c in chunks]
            else:
                parts = [t[c].flatten(0, 1)[None].expand(per_chunk, -1, -1) for c in chunks]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        return gather(ip_k), gather(ip_v)

    def row_weight(self, site, q, chunks, per_chunk, frames=None):
        """The layer's weight, times each frame's weight in per-frame mode: a number or [B, 1, 1]."""
        weight = self.layer_weights[site.index]
        if self.frame_weights is None:
            return weight
        per_frame = self.frame_weights.to(q.device, q.dtype)
        per_frame = per_frame.expand(per_chunk) if per_frame.shape[0] == 1 else by_frame(per_frame, frames)
        return (weight * per_frame.repeat(len(chunks))).view(-1, 1, 1)

    def token_mask(self, site, q, extra_options, chunks, frames=None):
        """[1, L, 1], [B, L, 1] (per frame) or [n, L, 1] (per image), resized to this layer's token grid."""
        _, _, height, width = extra_options["original_shape"]
        grid = token_grid(height, width, site.downsample)
        key = (grid, q.device, q.dtype)
        if key not in self._masks:
            self._masks[key] = mask_for_tokens(self.mask, grid).to(q.device, q.dtype)
        mask = self._masks[key]
        if self.per_frame and mask.shape[0] > 1:
            mask = by_frame(mask, frames).repeat(len(chunks), 1, 1)
        return mask

    def image_branch(self, site, q, extra_options):
        """weight * Attn(Q, K_img, V_img), masked; None when this step is outside the timestep range."""
        if not self.gate.active(extra_options):
            return None
        chunks, per_chunk, frames = self.rows(site, q, extra_options)
        ip_k, ip_v = self.batch_kv(site, q, chunks, per_chunk, frames)
        heads = extra_options["n_heads"]
        mask = self.token_mask(site, q, extra_options, chunks, frames) if self.mask is not None else None
        k, v, out_scale = scale_image_kv(ip_k, ip_v, self.row_weight(site, q, chunks, per_chunk, frames), self.kv_scaling,
                                         site.hidden_size)
        if self.separate:  # an attention per image, each under its own mask
            out = 0
            for i in range(k.shape[1]):
                out = out + host_attention(q, k[:, i], v[:, i], heads, extra_options) * mask[i]
            return out * out_scale
        out = host_attention(q, k, v, heads, extra_options) * out_scale
        return out if mask is None else out * mask


class IPAttn2Patch:
    """attn2 replacement for one layer: the layer's previous computation plus one entry's image branch."""

    def __init__(self, site, entry, inner=None):
        self.site = site
        self.entry = entry
        self.inner = inner  # the patch that was at this key before, or None for ComfyUI's own attention
        self.added = []  # (callback, kwargs) another pack attached with add(), see there

    def __call__(self, q, k, v, extra_options):
        if self.inner is None:
            out = host_attention(q, k, v, extra_options["n_heads"], extra_options)
        else:
            out = self.inner(q, k, v, extra_options)
        image_out = self.entry.image_branch(self.site, q, extra_options)
        if image_out is not None:
            out = out + image_out
        return self.run_added(out, q, k, v, extra_options) if self.added else out

    def add(self, callback, **kwargs):
        """ComfyUI_IPAdapter_plus, applied after us, calls add() on whatever patch holds a key it wants, assuming
        its own. Accept its adapter instead of crashing: it runs as that pack runs it, adding
        callback(out, q, k, v, extra_options, **kwargs) while sigma_end <= sigma <= sigma_start."""
        self.added.append((callback, kwargs))

    def run_added(self, out, q, k, v, extra_options):
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas[0]) if sigmas is not None else float("inf")
        for callback, kwargs in self.added:
            if kwargs.get("sigma_end", 0.0) <= sigma <= kwargs.get("sigma_start", float("inf")):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def twin(self, inner, added):
        """A new shell on the same entry (weights, caches): patches are never copied whole."""
        twin = IPAttn2Patch(self.site, self.entry, inner)
        twin.added = added
        return twin

    def __deepcopy__(self, memo):
        """ComfyUI deep-copies model_options on every clone. Our entry is shared; a wrapped patch of another
        pack and anything added to us are deep-copied, as ComfyUI would copy them."""
        return self.twin(copy.deepcopy(self.inner, memo), copy.deepcopy(self.added, memo))

    def to(self, device_or_dtype):
        """ComfyUI moves patches with the model; only a wrapped patch of another pack may need it."""
        if hasattr(self.inner, "to"):
            moved = self.inner.to(device_or_dtype)
            if moved is not self.inner:
                return self.twin(moved, self.added)
        return self

    def models(self):
        """Models ComfyUI must load with the UNet: our adapter weights and whatever the wrapped patch needs."""
        return patch_models(self.entry, self.inner)
