"""The InstantX SD3.5-Large IP-Adapter in ComfyUI: a `dit` replace patch per joint block and, inside it, the block's
own joint attention seen through the `optimized_attention_override` slot of the transformer_options handed to that
block (chained to any override already there).

The override receives the joint sequence [context; x] with q, k already through the model's QK RMSNorms (ln_q,
ln_k) and v raw. The adapter wants its own RMSNorms on the raw image q, k; both norms divide by the same rms (eps
1e-6), so norm_ip(q_raw) = q_post * (w_ip / w_ln) exactly, with no recomputation. The image branch is added to the
image rows of the attention output, before the block's output projection.

The resampler depends on the timestep: it runs once per step (and per CFG chunk: uncond rows resample
`zeros_like` features), shared by the 38 blocks; each block then modulates the tokens by the step's embedding.

Shapes: B batch rows, Lc context tokens, Lx image tokens, H heads, d head width, n reference images, T tokens.
"""

import copy

import comfy.patcher_extension
import torch

from ..ipadapter_core.schedules import block_weights
from ..ipadapter_core.masks import mask_for_tokens
from ..ipadapter_core.sd3 import ip_kv
from .common import NodeInputError
from .patch import TimestepGate, patch_models

GRID_KEY = "ipadapter_dca_sd3_grid"


def check_sd3_model(model, loaded, node):
    """The MMDiT's joint blocks, checked against the adapter (depth, width, heads, QK RMSNorm, no second attention)."""
    spec, file_name = loaded.spec, loaded.file_name
    unet = model.get_model_object("diffusion_model")
    if not hasattr(unet, "joint_blocks"):
        kind = "an SD1.5/SDXL UNet" if hasattr(unet, "input_blocks") else f"a {type(unet).__name__}"
        raise NodeInputError(f"{node}: '{file_name}' is an {spec.label}, but the model is {kind}, not SD3.5-Large. "
                             "Use it with SD3.5-Large (or a fine-tune of it).")
    blocks = unet.joint_blocks
    attn = blocks[0].x_block.attn
    problems = []
    if any(getattr(b.x_block, "x_block_self_attn", False) for b in blocks):
        problems.append("the model has a second image self-attention per block (SD3.5-Medium)")
    if not hasattr(getattr(attn, "ln_q", None), "weight"):
        problems.append("the model has no RMS QK-norm (SD3-Medium)")
    if len(blocks) != spec.num_layers:
        problems.append(f"it has {spec.num_layers} blocks, the model {len(blocks)}")
    if attn.qkv.in_features != spec.hidden_size or attn.head_dim != spec.head_dim:
        problems.append(f"its image attention is {spec.hidden_size} wide in heads of {spec.head_dim}, the model "
                        f"{attn.qkv.in_features} in heads of {attn.head_dim}")
    if problems:
        raise NodeInputError(f"{node}: '{file_name}' is an {spec.label}, but the model does not fit it: "
                             f"{'; '.join(problems)}. It needs SD3.5-Large (38 blocks, 2432 wide, heads of 64).")
    tiny = [i for i, b in enumerate(blocks) for ln in (b.x_block.attn.ln_q, b.x_block.attn.ln_k)
            if ln.weight.abs().min() < 1e-6]
    if tiny:
        raise NodeInputError(f"{node}: the model's QK-norm weights are zero in block {tiny[0]}; the adapter's norms "
                             "are computed from them, so this model cannot be used with it.")
    return blocks, attn.num_heads


class SD3PromptEntry:
    """One image prompt on an SD3.5 model: features, per-block weights, timestep range, mask, per-step tokens."""

    def __init__(self, loaded, prompt, weights, heads, model_sampling, sigma_start, sigma_end, mask=None):
        self.loaded, self.prompt, self.weights, self.heads = loaded, prompt, weights, heads
        self.model_sampling = model_sampling
        self.gate = TimestepGate(sigma_start, sigma_end)
        self.mask = mask
        self._step = (None, {})  # (sigmas tensor of the step, {(rows, chunks, device, dtype): tokens, temb, shares})
        self._masks = {}
        self._params = (None, None)  # ((device, dtype), the resampler's weights cast to them)

    def tokens(self, q, options):
        """The resampler's tokens [B, n*T, C], timestep embedding [B, D] and the images' shares [n*T] for this call's
        batch rows: made once per step and batch layout (cond and uncond may come in one call or two), shared by
        every block."""
        sigmas = options.get("sigmas")
        chunks = options.get("cond_or_uncond") or [0]
        rows = q.shape[0]
        key = (rows, tuple(chunks), q.device, q.dtype)
        if self._step[0] is not sigmas or sigmas is None:
            self._step = (sigmas, {})
        made = self._step[1]
        if key not in made:
            per_chunk = rows // len(chunks)
            cond = self.prompt.features.to(q.device, q.dtype)  # [n, N, E]
            uncond = torch.zeros_like(cond) if self.prompt.uncond_features is None else \
                self.prompt.uncond_features.to(q.device, q.dtype).expand_as(cond)
            features = torch.stack([uncond if c else cond for c in chunks for _ in range(per_chunk)])  # [B, n, N, E]
            sigma = (sigmas if sigmas is not None else torch.ones(1)).to(q.device).float().reshape(-1)
            t = self.model_sampling.timestep(sigma.expand(rows) if sigma.shape[0] == 1 else sigma).to(q.dtype)
            n = features.shape[1]
            tokens, temb = torch.func.functional_call(self.loaded.adapter.image_proj, self.resampler_params(q),
                                                      (features.flatten(0, 1), t.repeat_interleave(n)))
            shares = self.prompt.image_weights.to(q.device, q.dtype).repeat_interleave(tokens.shape[1])
            made[key] = (tokens.unflatten(0, (rows, n)).flatten(1, 2), temb[::n], shares)
        return made[key]

    def resampler_params(self, q):
        """The resampler's weights (kept in the file's dtype) on this call's device and dtype, cast once."""
        key = (q.device, q.dtype)
        if self._params[0] != key:
            state = self.loaded.adapter.image_proj.state_dict()
            self._params = (key, {k: v.to(q.device, q.dtype) for k, v in state.items()})
        return self._params[1]

    def token_mask(self, options, rows, q):
        grid = options.get(GRID_KEY)
        if self.mask is None or grid is None:
            return None
        key = (grid, q.device, q.dtype)
        if key not in self._masks:
            self._masks[key] = mask_for_tokens(self.mask, grid)[:1, :rows].to(q.device, q.dtype)
        return self._masks[key]


class SD3BlockPatch:
    """`dit` replacement for one joint block: the block as it was plus one entry's image branch."""

    def __init__(self, index, entry, block, inner=None):
        self.index, self.entry, self.inner = index, entry, inner
        self.block = block  # the model's joint block, read only: its QK-norm weights

    def __call__(self, args, extra):
        options = args["transformer_options"]
        run = self.inner if self.inner is not None else (lambda a, _: extra["original_block"](a))
        if not self.entry.gate.active(options):
            return run(args, extra)
        context_len = args["txt"].shape[1]
        previous = options.get("optimized_attention_override")
        entry, layer = self.entry, self.entry.loaded.adapter.ip_adapter[str(self.index)]
        block = self.block
        armed = [True]  # only the block's first (joint) attention

        def override(func, q, k, v, *rest, **kwargs):
            out = previous(func, q, k, v, *rest, **kwargs) if previous is not None else func(q, k, v, *rest, **kwargs)
            if not armed[0]:
                return out
            armed[0] = False
            heads = entry.heads
            b = q.shape[0]
            qx = q[:, context_len:].reshape(b, -1, heads, q.shape[-1] // heads).transpose(1, 2)  # [B, H, Lx, d]
            kx = k[:, context_len:].reshape(b, -1, heads, k.shape[-1] // heads).transpose(1, 2)
            vx = v[:, context_len:].reshape(b, -1, heads, qx.shape[-1]).transpose(1, 2)
            attn = block.x_block.attn
            q_ip = qx * ratio(layer.norm_q.weight, attn.ln_q.weight, qx)  # = norm_q(q_raw), see the docstring
            k_ip = kx * ratio(layer.norm_k.weight, attn.ln_k.weight, kx)
            tokens, temb, shares = entry.tokens(q, options)
            ip_k, ip_v = ip_kv(layer, tokens, temb, heads)
            ip_v = ip_v * shares.view(1, 1, -1, 1)
            o = torch.nn.functional.scaled_dot_product_attention(
                q_ip, torch.cat([k_ip, ip_k.to(q_ip.dtype)], 2), torch.cat([vx, ip_v.to(q_ip.dtype)], 2))
            o = o.transpose(1, 2).flatten(2) * entry.weights[self.index]
            mask = entry.token_mask(options, o.shape[1], o)
            if mask is not None:
                o = o * mask
            out[:, context_len:] += o
            return out

        return run(dict(args, transformer_options=dict(options, optimized_attention_override=override)), extra)

    def __deepcopy__(self, memo):
        """ComfyUI deep-copies model_options on every clone: share the entry and the model's block, copy the rest."""
        return SD3BlockPatch(self.index, self.entry, self.block, copy.deepcopy(self.inner, memo))

    def models(self):
        return patch_models(self.entry, self.inner)


def ratio(adapter_weight, model_weight, like):
    """w_ip / w_ln on the tensor's device and dtype (the model's weights may sit elsewhere when offloaded)."""
    return (adapter_weight.to(like.device, torch.float32) / model_weight.to(like.device, torch.float32)).to(like.dtype)


def record_grid(patch_size):
    """An APPLY_MODEL wrapper noting the image-token grid of each call (MMDiT has no DIFFUSION_MODEL wrapper)."""
    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        transformer_options[GRID_KEY] = tuple((side + patch_size // 2) // patch_size for side in x.shape[-2:])
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    return wrapper


def apply_sd3(model, loaded, prompt, weight, sigmas, mask, layer_weights, node):
    blocks, heads = check_sd3_model(model, loaded, node)
    if mask is not None and mask.shape[0] > 1:
        raise NodeInputError(f"{node}: 'attn_mask' holds {mask.shape[0]} masks; with SD3.5 give one mask (the reference "
                             "images share one attention).")
    names = [f"block {i}" for i in range(len(blocks))]
    try:
        weights = block_weights(layer_weights, names, weight, kinds=("block",))
    except ValueError as e:
        raise NodeInputError(f"{node}: {e}") from None
    entry = SD3PromptEntry(loaded, prompt, dict(enumerate(weights)), heads, model.get_model_object("model_sampling"),
                           *sigmas, mask=mask)
    patched = model.clone()
    existing = patched.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for i, block in enumerate(blocks):
        if weights[i] == 0.0:
            continue
        patched.set_model_patch_replace(SD3BlockPatch(i, entry, block, existing.get(("double_block", i))), "dit",
                                        "double_block", i)
    if mask is not None:
        patch_size = getattr(model.get_model_object("diffusion_model"), "patch_size", 2)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "ipadapter_dca_sd3_grid",
                                     record_grid(patch_size))
    return patched
