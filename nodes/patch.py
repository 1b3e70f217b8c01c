"""The attn2 replace patch ComfyUI calls in each cross-attention layer.

ComfyUI calls `patch(q, k, v, extra_options)` with q/k/v already projected by the layer's own
to_q/to_k/to_v (LoRA included) and applies to_out to what it returns. One `ImagePromptEntry` holds
everything one Apply IP-Adapter node added; one `IPAttn2Patch` per layer adds that entry's image
attention to whatever the layer computed before: ComfyUI's attention, another adapter of ours, or
another pack's patch, which is wrapped rather than replaced.

ComfyUI deep-copies model_options on every clone; a patch then copies only its small shell and shares
its entry, so adapter weights and caches are never copied.
"""

import copy

import comfy.ldm.modules.attention as comfy_attention
import torch

from ..ipadapter_core import project_image_tokens
from ..ipadapter_core.masks import mask_for_tokens, token_grid


def host_attention(q, k, v, heads, extra_options):
    """The attention ComfyUI's CrossAttention would run, with the same arguments."""
    return comfy_attention.optimized_attention(
        q, k, v, heads, attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options
    )


class ImagePromptEntry:
    """One image prompt applied to a model: tokens, weight, timestep range, mask, and caches.

    The caches are transparent (they never change a result), so sharing one entry between clones is
    safe: K/V are computed once per device and dtype and reused by every step and by both CFG halves.
    """

    def __init__(self, loaded, prompt, weight, sigma_start, sigma_end, mask):
        self.loaded = loaded  # LoadedAdapter: weights under ComfyUI's model management
        self.prompt = prompt  # ImagePrompt: cond/uncond tokens [1, T', C]
        self.weight = weight
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self.mask = mask  # [1, H, W] or None
        self._kv = {}  # (layer index, device, dtype) -> [2, T', D] K and V, row 0 cond, row 1 uncond
        self._masks = {}  # (grid, device, dtype) -> [1, h*w, 1]
        self._gate = (None, True)  # (sigmas tensor of the current step, active?)

    def active(self, extra_options) -> bool:
        """Inside [start, end]? Decided once per step: ComfyUI passes the same sigmas tensor to every layer."""
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return True
        if sigmas is not self._gate[0]:
            sigma = float(sigmas.max())  # the one host sync of the step
            self._gate = (sigmas, self.sigma_end <= sigma <= self.sigma_start)
        return self._gate[1]

    def kv(self, site, device, dtype):
        key = (site.index, device, dtype)
        if key not in self._kv:
            if any(k[1:] != key[1:] for k in self._kv):
                self._kv.clear()  # moved to another device or dtype: keep one copy only
            layer = self.loaded.adapter.ip_adapter[str(site.index)]
            tokens = torch.cat([self.prompt.cond, self.prompt.uncond]).to(device, dtype)  # [2, T', C]
            to_k_ip, to_v_ip = (w.to(device, dtype) for w in (layer.to_k_ip.weight, layer.to_v_ip.weight))
            self._kv[key] = project_image_tokens(tokens, to_k_ip, to_v_ip)
        return self._kv[key]

    def batch_kv(self, site, q, extra_options):
        """K and V for the whole batch: each chunk of cond_or_uncond gets the cond or the uncond tokens."""
        ip_k, ip_v = self.kv(site, q.device, q.dtype)
        chunks = extra_options.get("cond_or_uncond") or [0]  # 0 = cond, 1 = uncond
        per_chunk = q.shape[0] // len(chunks)
        if len(chunks) == 1:
            return ip_k[chunks[0]].expand(per_chunk, -1, -1), ip_v[chunks[0]].expand(per_chunk, -1, -1)
        return tuple(torch.cat([t[c:c + 1].expand(per_chunk, -1, -1) for c in chunks]) for t in (ip_k, ip_v))

    def token_mask(self, site, q, extra_options):
        if self.mask is None:
            return None
        _, _, height, width = extra_options["original_shape"]
        grid = token_grid(height, width, site.downsample)
        key = (grid, q.device, q.dtype)
        if key not in self._masks:
            self._masks[key] = mask_for_tokens(self.mask, grid).to(q.device, q.dtype)
        return self._masks[key]

    def image_branch(self, site, q, extra_options):
        """ip_weight * Attn(Q, K_img, V_img), masked; None when this step is outside the timestep range."""
        if self.weight == 0 or not self.active(extra_options):
            return None
        ip_k, ip_v = self.batch_kv(site, q, extra_options)
        out = host_attention(q, ip_k, ip_v, extra_options["n_heads"], extra_options) * self.weight
        mask = self.token_mask(site, q, extra_options)
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

    def __deepcopy__(self, memo):
        """ComfyUI deep-copies model_options on every clone. Our entry (weights, caches) is shared; a wrapped
        patch of another pack and anything added to us are deep-copied, as ComfyUI would copy them."""
        twin = IPAttn2Patch(self.site, self.entry, copy.deepcopy(self.inner, memo))
        twin.added = copy.deepcopy(self.added, memo)
        return twin

    def to(self, device_or_dtype):
        """ComfyUI moves patches with the model; only a wrapped patch of another pack may need it."""
        if hasattr(self.inner, "to"):
            moved = self.inner.to(device_or_dtype)
            if moved is not self.inner:
                twin = IPAttn2Patch(self.site, self.entry, moved)
                twin.added = self.added
                return twin
        return self

    def models(self):
        """Models ComfyUI must load with the UNet: our adapter weights and whatever the wrapped patch needs."""
        inner = self.inner.models() if hasattr(self.inner, "models") else []
        return [self.entry.loaded.patcher] + [m for m in inner if m is not self.entry.loaded.patcher]
