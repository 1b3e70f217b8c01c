"""Stand-in for comfy.ldm.modules.diffusionmodules.mmdit (ComfyUI v0.8.0): the SD3 MMDiT, SD3.5-Large layout.

Written for these tests from the public SD3 architecture (Stability AI, "Scaling Rectified Flow Transformers");
it follows ComfyUI's module names, parameter names and shapes, constructor parameters, forward signatures and
hook protocol, so ComfyUI's own state dicts and key maps (`comfy.utils.mmdit_to_diffusers`) apply:

- `OpenAISignatureMMDITWrapper.forward(x, timesteps, context, y, control, transformer_options)` (what
  `model_base.SD3` builds) -> `MMDiT.forward`: patchify (`x_embedder`, circular padding to the patch size) plus
  the centre crop of the `pos_embed` buffer, `t_embedder(timesteps)` (+ `y_embedder(y)`), `context_embedder`;
- `forward_core_with_concat` calls `patches_replace["dit"][("double_block", i)]` as
  `patch({"img": x, "txt": context, "vec": c_mod, "transformer_options": ...}, {"original_block": block_wrap})`
  and reads back `{"txt", "img"}`; it sets no block_index / block_type (v0.8.0 does not either); ControlNet
  "output" residuals are added to x after each block;
- `_block_mixing`: `context_block.pre_attention(context, c)` and `x_block.pre_attention(x, c)` each return
  `(q, k, v)` with q, k [B, L, H*D] after the per-head `ln_q` / `ln_k` RMSNorm (eps 1e-6) and v [B, L, H, D]
  (not normalised, not flattened), plus the intermediates for `post_attention`; the three are concatenated
  [context; x] along L and go through ONE `optimized_attention(q, k, v, heads=..., transformer_options=...)`
  call (so `optimized_attention_override` sees exactly that), then each stream's `post_attention`. The last
  joint block's context block is `pre_only` (its context output is None).

Only what SD3.5-Large uses exists: qk_norm "rms" (or None), LayerNorm adaLN with shift/scale/gate, GELU(tanh)
MLPs, a `pos_embed` buffer (`num_patches`). SD3.5-Medium's `x_block_self_attn` (a second attention per block),
rmsnorm / scale_mod_only / swiglu blocks, registers and the context processor raise NotImplementedError.

`operations` is ComfyUI's ops namespace (Linear, LayerNorm, Conv2d); None means torch.nn.
"""

import math
from functools import partial
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from einops import rearrange

from ..attention import optimized_attention


def _ops(operations):
    return nn if operations is None else operations


def _not_sd35_large(**flags):
    on = [name for name, value in flags.items() if value]
    if on:
        raise NotImplementedError(f"the stand-in MMDiT implements the SD3.5-Large layout only; not {', '.join(on)}")


def default(x, y):
    return y if x is None else x


def timestep_embedding(timesteps, dim, max_period=10000, repeat_only=False):
    """Sinusoidal embedding [cos | sin] of timesteps [N] (no scaling: SD3 timesteps are sigma * 1000) -> [N, dim]."""
    if repeat_only:
        return timesteps[:, None].expand(-1, dim)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def modulate(x, shift, scale):
    """x [B, L, D] * (1 + scale) + shift, with shift / scale [B, D] (shift None = 0)."""
    if shift is None:
        shift = torch.zeros_like(scale)
    return shift.unsqueeze(1) + x * (1 + scale.unsqueeze(1))


def split_qkv(qkv, head_dim):
    """[B, L, 3*H*D] -> q, k, v each [B, L, H, D]."""
    q, k, v = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, -1, head_dim).unbind(2)
    return q, k, v


class Mlp(nn.Module):
    """fc1 -> act -> fc2 (dropouts and the optional norm are identities at inference)."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, norm_layer=None,
                 bias=True, drop=0., use_conv=False, dtype=None, device=None, operations=None):
        super().__init__()
        ops = _ops(operations)
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        layer = partial(ops.Conv2d, kernel_size=1) if use_conv else ops.Linear
        self.fc1 = layer(in_features, hidden_features, bias=bias, dtype=dtype, device=device)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = layer(hidden_features, out_features, bias=bias, dtype=dtype, device=device)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> Conv2d(kernel = stride = patch) -> tokens [B, (H/p)(W/p), D], rows major."""

    def __init__(self, img_size: Optional[int] = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 norm_layer=None, flatten: bool = True, bias: bool = True, strict_img_size: bool = True,
                 dynamic_img_pad: bool = True, padding_mode="circular", conv3d=False, dtype=None, device=None,
                 operations=None):
        super().__init__()
        _not_sd35_large(conv3d=conv3d)
        self.patch_size = tuple(patch_size) if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
        self.padding_mode = padding_mode
        self.flatten = flatten
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.proj = _ops(operations).Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias,
                                            dtype=dtype, device=device)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        if self.dynamic_img_pad:
            pad_h = (self.patch_size[0] - x.shape[-2] % self.patch_size[0]) % self.patch_size[0]
            pad_w = (self.patch_size[1] - x.shape[-1] % self.patch_size[1]) % self.patch_size[1]
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=self.padding_mode)
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)
        return self.norm(x)


class TimestepEmbedder(nn.Module):
    """timesteps [N] -> sinusoid(256) -> Linear -> SiLU -> Linear -> [N, hidden]."""

    def __init__(self, hidden_size, frequency_embedding_size=256, output_size=None, dtype=None, device=None,
                 operations=None):
        super().__init__()
        ops = _ops(operations)
        output_size = default(output_size, hidden_size)
        self.mlp = nn.Sequential(
            ops.Linear(frequency_embedding_size, hidden_size, bias=True, dtype=dtype, device=device),
            nn.SiLU(),
            ops.Linear(hidden_size, output_size, bias=True, dtype=dtype, device=device),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t, dtype, **kwargs):
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(dtype))


class VectorEmbedder(nn.Module):
    """The pooled text vector y [N, input_dim] -> Linear -> SiLU -> Linear -> [N, hidden]."""

    def __init__(self, input_dim: int, hidden_size: int, dtype=None, device=None, operations=None):
        super().__init__()
        ops = _ops(operations)
        self.mlp = nn.Sequential(
            ops.Linear(input_dim, hidden_size, bias=True, dtype=dtype, device=device),
            nn.SiLU(),
            ops.Linear(hidden_size, hidden_size, bias=True, dtype=dtype, device=device),
        )

    def forward(self, x):
        return self.mlp(x)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) (* weight when elementwise_affine), over the last dimension."""

    def __init__(self, dim: int, elementwise_affine: bool = False, eps: float = 1e-6, device=None, dtype=None,
                 **kwargs):
        super().__init__()
        self.eps = eps
        self.learnable_scale = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def forward(self, x):
        out = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return out if self.weight is None else out * self.weight.to(x)


class SelfAttention(nn.Module):
    """One stream's projections: qkv (3*dim rows: q | k | v), per-head ln_q / ln_k, output proj (unless pre_only)."""

    ATTENTION_MODES = ("xformers", "torch", "torch-hb", "math", "debug")

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 proj_drop: float = 0.0, attn_mode: str = "xformers", pre_only: bool = False,
                 qk_norm: Optional[str] = None, rmsnorm: bool = False, dtype=None, device=None, operations=None):
        super().__init__()
        ops = _ops(operations)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = ops.Linear(dim, dim * 3, bias=qkv_bias, dtype=dtype, device=device)
        if not pre_only:
            self.proj = ops.Linear(dim, dim, dtype=dtype, device=device)
            self.proj_drop = nn.Dropout(proj_drop)
        assert attn_mode in self.ATTENTION_MODES
        self.attn_mode = attn_mode
        self.pre_only = pre_only
        if qk_norm == "rms":
            self.ln_q = RMSNorm(self.head_dim, elementwise_affine=True, eps=1.0e-6, dtype=dtype, device=device)
            self.ln_k = RMSNorm(self.head_dim, elementwise_affine=True, eps=1.0e-6, dtype=dtype, device=device)
        elif qk_norm is None:
            self.ln_q = nn.Identity()
            self.ln_k = nn.Identity()
        else:
            raise NotImplementedError(f"the stand-in MMDiT has qk_norm 'rms' or None only, not {qk_norm!r}")

    def pre_attention(self, x):
        """x [B, L, dim] -> (q [B, L, H*D] after ln_q, k [B, L, H*D] after ln_k, v [B, L, H, D])."""
        q, k, v = split_qkv(self.qkv(x), self.head_dim)
        q = self.ln_q(q).reshape(q.shape[0], q.shape[1], -1)
        k = self.ln_k(k).reshape(k.shape[0], k.shape[1], -1)
        return q, k, v

    def post_attention(self, x):
        assert not self.pre_only
        return self.proj_drop(self.proj(x))

    def forward(self, x):
        q, k, v = self.pre_attention(x)
        return self.post_attention(optimized_attention(q, k, v, heads=self.num_heads))


class DismantledBlock(nn.Module):
    """One stream of a joint block, adaLN-Zero: adaLN_modulation(c) -> (shift, scale, gate) for attention and MLP;
    a pre_only block (the last context block) has (shift, scale) and no attention output, norm2 or MLP."""

    ATTENTION_MODES = ("xformers", "torch", "torch-hb", "math", "debug")

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attn_mode: str = "xformers",
                 qkv_bias: bool = False, pre_only: bool = False, rmsnorm: bool = False, scale_mod_only: bool = False,
                 swiglu: bool = False, qk_norm: Optional[str] = None, x_block_self_attn: bool = False, dtype=None,
                 device=None, operations=None, **block_kwargs):
        super().__init__()
        _not_sd35_large(rmsnorm=rmsnorm, scale_mod_only=scale_mod_only, swiglu=swiglu,
                        x_block_self_attn=x_block_self_attn)
        assert attn_mode in self.ATTENTION_MODES
        ops = _ops(operations)
        self.norm1 = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        self.attn = SelfAttention(dim=hidden_size, num_heads=num_heads, qkv_bias=qkv_bias, attn_mode=attn_mode,
                                  pre_only=pre_only, qk_norm=qk_norm, rmsnorm=rmsnorm, dtype=dtype, device=device,
                                  operations=operations)
        self.x_block_self_attn = False
        if not pre_only:
            self.norm2 = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
            self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio),
                           act_layer=lambda: nn.GELU(approximate="tanh"), drop=0, dtype=dtype, device=device,
                           operations=operations)
        self.scale_mod_only = scale_mod_only
        n_mods = 2 if pre_only else 6
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), ops.Linear(hidden_size, n_mods * hidden_size, bias=True, dtype=dtype, device=device))
        self.pre_only = pre_only

    def pre_attention(self, x, c):
        """-> (q, k, v) of the modulated norm1(x), and the intermediates post_attention takes (None if pre_only)."""
        if self.pre_only:
            shift_msa, scale_msa = self.adaLN_modulation(c).chunk(2, dim=1)
            return self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa)), None
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        qkv = self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa))
        return qkv, (x, gate_msa, shift_mlp, scale_mlp, gate_mlp)

    def post_attention(self, attn, x, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        """attn [B, L, H*D] (this stream's rows of the joint attention) -> the block's output stream."""
        assert not self.pre_only
        x = x + gate_msa.unsqueeze(1) * self.attn.post_attention(attn)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

    def forward(self, x, c):
        assert not self.pre_only
        qkv, intermediates = self.pre_attention(x, c)
        attn = optimized_attention(qkv[0], qkv[1], qkv[2], heads=self.attn.num_heads)
        return self.post_attention(attn, *intermediates)


def block_mixing(*args, use_checkpoint=True, **kwargs):
    if use_checkpoint:
        return torch.utils.checkpoint.checkpoint(_block_mixing, *args, use_reentrant=False, **kwargs)
    return _block_mixing(*args, **kwargs)


def _block_mixing(context, x, context_block, x_block, c, transformer_options={}):
    """One joint attention over [context; x]: -> (context out or None for a pre_only context block, x out)."""
    context_qkv, context_intermediates = context_block.pre_attention(context, c)
    x_qkv, x_intermediates = x_block.pre_attention(x, c)
    q, k, v = (torch.cat((context_qkv[i], x_qkv[i]), dim=1) for i in range(3))
    attn = optimized_attention(q, k, v, heads=x_block.attn.num_heads, transformer_options=transformer_options)
    txt_len = context_qkv[0].shape[1]
    context_attn, x_attn = attn[:, :txt_len], attn[:, txt_len:]
    context = None if context_block.pre_only else context_block.post_attention(context_attn, *context_intermediates)
    return context, x_block.post_attention(x_attn, *x_intermediates)


class JointBlock(nn.Module):
    """context_block (pre_only in the last block) and x_block, mixed by one joint attention."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        pre_only = kwargs.pop("pre_only")
        qk_norm = kwargs.pop("qk_norm", None)
        x_block_self_attn = kwargs.pop("x_block_self_attn", False)
        self.context_block = DismantledBlock(*args, pre_only=pre_only, qk_norm=qk_norm, **kwargs)
        self.x_block = DismantledBlock(*args, pre_only=False, qk_norm=qk_norm, x_block_self_attn=x_block_self_attn,
                                       **kwargs)

    def forward(self, *args, **kwargs):
        return block_mixing(*args, context_block=self.context_block, x_block=self.x_block, **kwargs)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) over norm_final(x), then linear to patch^2 * out_channels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, total_out_channels: Optional[int] = None,
                 dtype=None, device=None, operations=None):
        super().__init__()
        ops = _ops(operations)
        self.norm_final = ops.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        out = patch_size * patch_size * out_channels if total_out_channels is None else total_out_channels
        self.linear = ops.Linear(hidden_size, out, bias=True, dtype=dtype, device=device)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), ops.Linear(hidden_size, 2 * hidden_size, bias=True, dtype=dtype, device=device))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class MMDiT(nn.Module):
    """The SD3 MMDiT. As in ComfyUI, the width is fixed by `depth`: hidden_size = 64 * depth, num_heads = depth
    (head dim 64); `num_blocks` (default depth) is the number of joint blocks, the last with a pre_only context
    block."""

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, depth: int = 28,
                 mlp_ratio: float = 4.0, learn_sigma: bool = False, adm_in_channels: Optional[int] = None,
                 context_embedder_config: Optional[Dict] = None, compile_core: bool = False,
                 use_checkpoint: bool = False, register_length: int = 0, attn_mode: str = "torch",
                 rmsnorm: bool = False, scale_mod_only: bool = False, swiglu: bool = False,
                 out_channels: Optional[int] = None, pos_embed_scaling_factor: Optional[float] = None,
                 pos_embed_offset: Optional[float] = None, pos_embed_max_size: Optional[int] = None,
                 num_patches=None, qk_norm: Optional[str] = None, qkv_bias: bool = True,
                 context_processor_layers=None, x_block_self_attn: bool = False,
                 x_block_self_attn_layers: Optional[List[int]] = [], context_size=4096, num_blocks=None,
                 final_layer=True, skip_blocks=False, dtype=None, device=None, operations=None):
        super().__init__()
        _not_sd35_large(compile_core=compile_core, register_length=register_length > 0,
                        context_processor_layers=context_processor_layers is not None,
                        x_block_self_attn=x_block_self_attn or bool(x_block_self_attn_layers),
                        skip_blocks=skip_blocks, no_final_layer=not final_layer)
        ops = _ops(operations)
        self.dtype = dtype
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = default(out_channels, in_channels * 2 if learn_sigma else in_channels)
        self.patch_size = patch_size
        self.pos_embed_scaling_factor = pos_embed_scaling_factor
        self.pos_embed_offset = pos_embed_offset
        self.pos_embed_max_size = pos_embed_max_size
        self.x_block_self_attn_layers = x_block_self_attn_layers

        self.hidden_size = 64 * depth
        num_heads = depth
        num_blocks = default(num_blocks, depth)
        self.depth = depth
        self.num_heads = num_heads

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, self.hidden_size, bias=True,
                                     strict_img_size=pos_embed_max_size is None, dtype=dtype, device=device,
                                     operations=operations)
        self.t_embedder = TimestepEmbedder(self.hidden_size, dtype=dtype, device=device, operations=operations)
        self.y_embedder = None
        if adm_in_channels is not None:
            assert isinstance(adm_in_channels, int)
            self.y_embedder = VectorEmbedder(adm_in_channels, self.hidden_size, dtype=dtype, device=device,
                                             operations=operations)
        self.context_processor = None
        self.context_embedder = nn.Identity()
        if context_embedder_config is not None and context_embedder_config["target"] == "torch.nn.Linear":
            self.context_embedder = ops.Linear(**context_embedder_config["params"], dtype=dtype, device=device)
        self.register_length = register_length
        if num_patches is not None:
            self.register_buffer("pos_embed", torch.empty(1, num_patches, self.hidden_size, dtype=dtype, device=device))
        else:
            self.pos_embed = None
        self.use_checkpoint = use_checkpoint
        self.joint_blocks = nn.ModuleList(
            JointBlock(self.hidden_size, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, attn_mode=attn_mode,
                       pre_only=(i == num_blocks - 1), rmsnorm=rmsnorm, scale_mod_only=scale_mod_only, swiglu=swiglu,
                       qk_norm=qk_norm, x_block_self_attn=False, dtype=dtype, device=device, operations=operations)
            for i in range(num_blocks))
        self.final_layer = FinalLayer(self.hidden_size, patch_size, self.out_channels, dtype=dtype, device=device,
                                      operations=operations)

    def cropped_pos_embed(self, hw, device=None):
        """The centre h x w window (in patches) of the pos_embed grid (max_size x max_size) -> [1, h*w, hidden]."""
        p = self.x_embedder.patch_size[0]
        h, w = (hw[0] + 1) // p, (hw[1] + 1) // p
        if self.pos_embed is None:
            raise NotImplementedError("the stand-in MMDiT needs a pos_embed buffer (num_patches), as SD3.5 has")
        size = self.pos_embed_max_size
        assert size is not None
        assert h <= size, (h, size)
        assert w <= size, (w, size)
        top, left = (size - h) // 2, (size - w) // 2
        grid = rearrange(self.pos_embed, "1 (h w) c -> 1 h w c", h=size, w=size)
        return rearrange(grid[:, top:top + h, left:left + w, :], "1 h w c -> 1 (h w) c")

    def unpatchify(self, x, hw=None):
        """tokens [N, (H/p)(W/p), p*p*C] in (p q c) order -> [N, C, H, W]."""
        c = self.out_channels
        p = self.x_embedder.patch_size[0]
        if hw is None:
            h = w = int(x.shape[1] ** 0.5)
        else:
            h, w = (hw[0] + 1) // p, (hw[1] + 1) // p
        assert h * w == x.shape[1]
        return rearrange(x, "n (h w) (p q c) -> n c (h p) (w q)", h=h, w=w, p=p, q=p, c=c)

    def forward_core_with_concat(self, x, c_mod, context=None, control=None, transformer_options={}):
        patches_replace = transformer_options.get("patches_replace", {})
        blocks_replace = patches_replace.get("dit", {})
        blocks = len(self.joint_blocks)
        for i in range(blocks):
            if ("double_block", i) in blocks_replace:
                def block_wrap(args):
                    out = {}
                    out["txt"], out["img"] = self.joint_blocks[i](args["txt"], args["img"], c=args["vec"],
                                                                  transformer_options=args["transformer_options"])
                    return out

                out = blocks_replace[("double_block", i)](
                    {"img": x, "txt": context, "vec": c_mod, "transformer_options": transformer_options},
                    {"original_block": block_wrap})
                context = out["txt"]
                x = out["img"]
            else:
                context, x = self.joint_blocks[i](context, x, c=c_mod, use_checkpoint=self.use_checkpoint,
                                                  transformer_options=transformer_options)
            if control is not None:
                control_o = control.get("output")
                if i < len(control_o):
                    add = control_o[i]
                    if add is not None:
                        x += add
        return self.final_layer(x, c_mod)  # [N, T, patch^2 * out_channels]

    def forward(self, x, t, y=None, context=None, control=None, transformer_options={}):
        """x [N, C, H, W], t [N] (the model timestep, sigma * 1000 for SD3), y [N, adm] pooled, context [N, T, ctx]."""
        hw = x.shape[-2:]
        x = self.x_embedder(x) + self.cropped_pos_embed(hw, device=x.device).to(x)
        c = self.t_embedder(t, dtype=x.dtype)
        if y is not None and self.y_embedder is not None:
            c = c + self.y_embedder(y)
        if context is not None:
            context = self.context_embedder(context)
        x = self.forward_core_with_concat(x, c, context, control, transformer_options)
        x = self.unpatchify(x, hw=hw)
        return x[:, :, :hw[-2], :hw[-1]]


class OpenAISignatureMMDITWrapper(MMDiT):
    """What comfy.model_base.SD3 builds: the (x, timesteps, context, y, ...) signature of the UNet call."""

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):
        return super().forward(x, timesteps, context=context, y=y, control=control,
                               transformer_options=transformer_options)
