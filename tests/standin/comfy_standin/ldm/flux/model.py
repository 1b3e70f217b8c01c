"""Stand-in for comfy.ldm.flux.model (v0.8.0): FluxParams and the Flux transformer (FLUX.1 path only).

Written for these tests from the public FLUX.1 architecture (Black Forest Labs); it follows ComfyUI's module
names, parameters, forward signatures and hook protocol:

- `forward` runs the `WrappersMP.DIFFUSION_MODEL` wrappers of `transformer_options` around `_forward`;
- `_forward` patchifies (`process_img`, img_ids (index, row, col); Kontext `ref_latents` appended), makes zero
  txt_ids and calls `forward_orig`;
- `forward_orig` sets `transformer_options["total_blocks"]`, `["block_type"]` ("double" / "single") and
  `["block_index"]`, and calls `patches_replace["dit"][("double_block", i)]` / `[("single_block", i)]` as
  `patch(args, {"original_block": block_wrap})` with ComfyUI's args dicts; `post_input` patches and
  ControlNet residuals ("input" / "output") are applied where ComfyUI applies them.
"""

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from ... import patcher_extension
from .layers import (
    DoubleStreamBlock,
    EmbedND,
    LastLayer,
    MLPEmbedder,
    SingleStreamBlock,
    timestep_embedding,
)


@dataclass
class FluxParams:
    in_channels: int
    out_channels: int
    vec_in_dim: int
    context_in_dim: int
    hidden_size: int
    mlp_ratio: float
    num_heads: int
    depth: int
    depth_single_blocks: int
    axes_dim: list
    theta: int
    patch_size: int
    qkv_bias: bool
    guidance_embed: bool
    txt_ids_dims: list
    global_modulation: bool = False
    mlp_silu_act: bool = False
    ops_bias: bool = True
    default_ref_method: str = "offset"
    ref_index_scale: float = 1.0
    yak_mlp: bool = False
    txt_norm: bool = False


def _pad_to_patch_size(x, patch_size):
    """Circular padding of H and W up to multiples of the patch size (ComfyUI's common_dit.pad_to_patch_size)."""
    pad_h = (patch_size - x.shape[-2] % patch_size) % patch_size
    pad_w = (patch_size - x.shape[-1] % patch_size) % patch_size
    if pad_h or pad_w:
        x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="circular")
    return x


class Flux(nn.Module):
    """Transformer model for flow matching on sequences."""

    def __init__(self, image_model=None, final_layer=True, dtype=None, device=None, operations=None, **kwargs):
        super().__init__()
        self.dtype = dtype
        params = FluxParams(**kwargs)
        for flag in ("global_modulation", "mlp_silu_act", "yak_mlp", "txt_norm"):
            if getattr(params, flag):
                raise NotImplementedError(f"the stand-in Flux implements FLUX.1 only (got {flag}=True)")
        self.params = params
        self.patch_size = params.patch_size
        self.in_channels = params.in_channels * params.patch_size * params.patch_size
        self.out_channels = params.out_channels * params.patch_size * params.patch_size
        if params.hidden_size % params.num_heads != 0:
            raise ValueError(f"Hidden size {params.hidden_size} must be divisible by num_heads {params.num_heads}")
        pe_dim = params.hidden_size // params.num_heads
        if sum(params.axes_dim) != pe_dim:
            raise ValueError(f"Got {params.axes_dim} but expected positional dim {pe_dim}")
        self.hidden_size = params.hidden_size
        self.num_heads = params.num_heads
        ops = nn if operations is None else operations
        factory = dict(dtype=dtype, device=device)
        bias = params.ops_bias

        self.pe_embedder = EmbedND(dim=pe_dim, theta=params.theta, axes_dim=params.axes_dim)
        self.img_in = ops.Linear(self.in_channels, self.hidden_size, bias=bias, **factory)
        self.time_in = MLPEmbedder(in_dim=256, hidden_dim=self.hidden_size, bias=bias, operations=operations, **factory)
        self.vector_in = (MLPEmbedder(params.vec_in_dim, self.hidden_size, operations=operations, **factory)
                          if params.vec_in_dim is not None else None)
        self.guidance_in = (MLPEmbedder(in_dim=256, hidden_dim=self.hidden_size, bias=bias, operations=operations, **factory)
                            if params.guidance_embed else nn.Identity())
        self.txt_in = ops.Linear(params.context_in_dim, self.hidden_size, bias=bias, **factory)
        self.txt_norm = None
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(self.hidden_size, self.num_heads, mlp_ratio=params.mlp_ratio, qkv_bias=params.qkv_bias,
                              proj_bias=bias, operations=operations, **factory)
            for _ in range(params.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(self.hidden_size, self.num_heads, mlp_ratio=params.mlp_ratio, bias=bias,
                              operations=operations, **factory)
            for _ in range(params.depth_single_blocks))
        if final_layer:
            self.final_layer = LastLayer(self.hidden_size, 1, self.out_channels, bias=bias, operations=operations, **factory)

    def forward_orig(self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor, timesteps: Tensor, y: Tensor,
                     guidance: Tensor = None, control=None, transformer_options={}, attn_mask: Tensor = None) -> Tensor:
        patches = transformer_options.get("patches", {})
        patches_replace = transformer_options.get("patches_replace", {})
        if img.ndim != 3 or txt.ndim != 3:
            raise ValueError("Input img and txt tensors must have 3 dimensions.")

        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.params.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        if self.vector_in is not None:
            if y is None:
                y = torch.zeros((img.shape[0], self.params.vec_in_dim), device=img.device, dtype=img.dtype)
            vec = vec + self.vector_in(y[:, :self.params.vec_in_dim])
        txt = self.txt_in(txt)
        vec_orig = vec

        for p in patches.get("post_input", []):
            out = p({"img": img, "txt": txt, "img_ids": img_ids, "txt_ids": txt_ids})
            img, txt, img_ids, txt_ids = out["img"], out["txt"], out["img_ids"], out["txt_ids"]

        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)) if img_ids is not None else None

        blocks_replace = patches_replace.get("dit", {})
        transformer_options["total_blocks"] = len(self.double_blocks)
        transformer_options["block_type"] = "double"
        for i, block in enumerate(self.double_blocks):
            transformer_options["block_index"] = i
            if ("double_block", i) in blocks_replace:
                def block_wrap(args):
                    out = {}
                    out["img"], out["txt"] = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                                                   attn_mask=args.get("attn_mask"),
                                                   transformer_options=args.get("transformer_options"))
                    return out

                out = blocks_replace[("double_block", i)](
                    {"img": img, "txt": txt, "vec": vec, "pe": pe, "attn_mask": attn_mask,
                     "transformer_options": transformer_options},
                    {"original_block": block_wrap})
                txt = out["txt"]
                img = out["img"]
            else:
                img, txt = block(img=img, txt=txt, vec=vec, pe=pe, attn_mask=attn_mask,
                                 transformer_options=transformer_options)

            if control is not None:  # ControlNet, added after any replace patch
                control_i = control.get("input")
                if i < len(control_i) and control_i[i] is not None:
                    add = control_i[i]
                    img[:, :add.shape[1]] += add

        if img.dtype == torch.float16:
            img = torch.nan_to_num(img, nan=0.0, posinf=65504, neginf=-65504)

        img = torch.cat((txt, img), 1)

        transformer_options["total_blocks"] = len(self.single_blocks)
        transformer_options["block_type"] = "single"
        for i, block in enumerate(self.single_blocks):
            transformer_options["block_index"] = i
            if ("single_block", i) in blocks_replace:
                def block_wrap(args):
                    return {"img": block(args["img"], vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                                         transformer_options=args.get("transformer_options"))}

                out = blocks_replace[("single_block", i)](
                    {"img": img, "vec": vec, "pe": pe, "attn_mask": attn_mask, "transformer_options": transformer_options},
                    {"original_block": block_wrap})
                img = out["img"]
            else:
                img = block(img, vec=vec, pe=pe, attn_mask=attn_mask, transformer_options=transformer_options)

            if control is not None:
                control_o = control.get("output")
                if i < len(control_o) and control_o[i] is not None:
                    add = control_o[i]
                    img[:, txt.shape[1]:txt.shape[1] + add.shape[1], ...] += add

        img = img[:, txt.shape[1]:, ...]
        return self.final_layer(img, vec_orig)  # [B, L_img, patch^2 * out_channels]

    def process_img(self, x, index=0, h_offset=0, w_offset=0, transformer_options={}):
        """Latent [B, C, H, W] -> tokens [B, (H/p)(W/p), C*p*p] in (c ph pw) order and ids [B, L, 3] = (index, row, col)."""
        bs, c, h, w = x.shape
        p = self.patch_size
        x = _pad_to_patch_size(x, p)
        img = rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=p, pw=p)
        h_len = (h + p // 2) // p
        w_len = (w + p // 2) // p
        h_offset = (h_offset + p // 2) // p
        w_offset = (w_offset + p // 2) // p
        steps_h, steps_w = h_len, w_len

        rope_options = transformer_options.get("rope_options", None)
        if rope_options is not None:
            h_len = (h_len - 1.0) * rope_options.get("scale_y", 1.0) + 1.0
            w_len = (w_len - 1.0) * rope_options.get("scale_x", 1.0) + 1.0
            index += rope_options.get("shift_t", 0.0)
            h_offset += rope_options.get("shift_y", 0.0)
            w_offset += rope_options.get("shift_x", 0.0)

        img_ids = torch.zeros((steps_h, steps_w, len(self.params.axes_dim)), device=x.device, dtype=torch.float32)
        img_ids[:, :, 0] = index
        img_ids[:, :, 1] = torch.linspace(h_offset, h_len - 1 + h_offset, steps=steps_h, device=x.device,
                                          dtype=torch.float32).unsqueeze(1)
        img_ids[:, :, 2] = torch.linspace(w_offset, w_len - 1 + w_offset, steps=steps_w, device=x.device,
                                          dtype=torch.float32).unsqueeze(0)
        return img, repeat(img_ids, "h w c -> b (h w) c", b=bs)

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None, transformer_options={}, **kwargs):
        wrappers = patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options)
        return patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)

    def _ref_offsets(self, ref_latents, h_len, w_len, method):
        """(index, h_offset, w_offset) per reference latent, for the methods ComfyUI knows (offset, index, uxo)."""
        p = self.patch_size
        h = w = 0
        index = 0
        for ref in ref_latents:
            if method == "index":
                index += self.params.ref_index_scale
                h_offset = w_offset = 0
            elif method == "uxo":
                index = 0
                h_offset, w_offset = h_len * p + h, w_len * p + w
                h += ref.shape[-2]
                w += ref.shape[-1]
            else:
                index = 1
                h_offset = w_offset = 0
                if ref.shape[-2] + h > ref.shape[-1] + w:
                    w_offset = w
                else:
                    h_offset = h
                h = max(h, ref.shape[-2] + h_offset)
                w = max(w, ref.shape[-1] + w_offset)
            yield ref, index, h_offset, w_offset

    def _forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None, transformer_options={}, **kwargs):
        bs, c, h_orig, w_orig = x.shape
        p = self.patch_size
        h_len = (h_orig + p // 2) // p
        w_len = (w_orig + p // 2) // p
        img, img_ids = self.process_img(x, transformer_options=transformer_options)
        img_tokens = img.shape[1]
        if ref_latents is not None:
            method = kwargs.get("ref_latents_method", self.params.default_ref_method)
            for ref, index, h_offset, w_offset in self._ref_offsets(ref_latents, h_len, w_len, method):
                kontext, kontext_ids = self.process_img(ref, index=index, h_offset=h_offset, w_offset=w_offset)
                img = torch.cat([img, kontext], dim=1)
                img_ids = torch.cat([img_ids, kontext_ids], dim=1)

        txt_ids = torch.zeros((bs, context.shape[1], len(self.params.axes_dim)), device=x.device, dtype=torch.float32)
        for i in self.params.txt_ids_dims:
            txt_ids[:, :, i] = torch.linspace(0, context.shape[1] - 1, steps=context.shape[1], device=x.device,
                                              dtype=torch.float32)

        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, y, guidance, control, transformer_options,
                                attn_mask=kwargs.get("attention_mask", None))
        out = out[:, :img_tokens]
        return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h_len, w=w_len, ph=p, pw=p)[:, :, :h_orig, :w_orig]
