"""A tiny UNet with ComfyUI's structure and patch protocol (not a ComfyUI module; the stand-in's model).

It mirrors comfy/ldm/modules/diffusionmodules/openaimodel.py and comfy/ldm/modules/attention.py where
the pack relies on them: `input_blocks` / `middle_block` / `output_blocks` numbered as ComfyUI numbers
them, SpatialTransformers holding `transformer_blocks` with `attn2.to_q/to_k/to_v/to_out`, and the attn2
replace lookup ((block, id, index) first, then (block, id)) with the same `extra_options`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .ldm.modules.attention import optimized_attention
from .model_sampling import ModelSamplingDiscrete

# per layout: channel multipliers, transformer depth per input level, middle depth, context width, head width
LAYOUTS = {
    "sd15": dict(mult=[1, 2, 4, 4], depth=[1, 1, 1, 0], middle=1, context=768, heads=8, head_channels=None),
    "sdxl": dict(mult=[1, 2, 4], depth=[0, 2, 10], middle=10, context=2048, heads=None, head_channels=32),
}


class CrossAttention(nn.Module):
    def __init__(self, dim, context_dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, context=None, value=None, transformer_options={}):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context if value is None else value)
        return self.to_out(optimized_attention(q, k, v, self.heads, transformer_options=transformer_options))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, context_dim, heads):
        super().__init__()
        self.n_heads, self.d_head, self.attn_precision = heads, dim // heads, None
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, dim, heads)
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, context=None, transformer_options={}):
        # as comfy's BasicTransformerBlock.forward: extra_options = transformer_options minus the patch dicts
        extra_options = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
        extra_options.update(n_heads=self.n_heads, dim_head=self.d_head, attn_precision=self.attn_precision)
        block = transformer_options.get("block", None)
        block_index = transformer_options.get("block_index", 0)
        replace = transformer_options.get("patches_replace", {}).get("attn2", {})

        x = self.attn1(self.norm1(x), transformer_options=transformer_options) + x
        n = self.norm2(x)
        key = (block[0], block[1], block_index) if block is not None else None
        if key not in replace:
            key = block
        if key in replace:
            q, k, v = self.attn2.to_q(n), self.attn2.to_k(context), self.attn2.to_v(context)
            n = self.attn2.to_out(replace[key](q, k, v, extra_options))
        else:
            n = self.attn2(n, context=context, transformer_options=transformer_options)
        x = n + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels, depth, context_dim, heads):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(channels, context_dim, heads) for _ in range(depth))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, context=None, transformer_options={}):
        b, c, h, w = x.shape
        transformer_options["activations_shape"] = list(x.shape)
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for i, block in enumerate(self.transformer_blocks):
            transformer_options["block_index"] = i
            tokens = block(tokens, context=context, transformer_options=transformer_options)
        return self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w) + x


class ResBlock(nn.Module):
    def __init__(self, channels_in, channels):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels_in)
        self.conv = nn.Conv2d(channels_in, channels, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels, 1) if channels_in != channels else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.conv(F.silu(self.norm(x)))


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)  # sizes round up, as ComfyUI's

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, output_shape=None):
        size = output_shape[2:4] if output_shape is not None else (x.shape[2] * 2, x.shape[3] * 2)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    pass


class TinyUNet(nn.Module):
    def __init__(self, layout, channels=64):
        super().__init__()
        cfg = LAYOUTS[layout]

        def heads(ch):
            return cfg["heads"] or ch // cfg["head_channels"]

        def stage(ch_in, ch, depth):
            layers = [ResBlock(ch_in, ch)]
            if depth:
                layers.append(SpatialTransformer(ch, depth, cfg["context"], heads(ch)))
            return layers

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(4, channels, 3, padding=1))])
        skips, ch = [channels], channels
        for level, (mult, depth) in enumerate(zip(cfg["mult"], cfg["depth"])):
            for _ in range(2):
                self.input_blocks.append(TimestepEmbedSequential(*stage(ch, channels * mult, depth)))
                ch = channels * mult
                skips.append(ch)
            if level < len(cfg["mult"]) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skips.append(ch)
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, ch), SpatialTransformer(ch, cfg["middle"], cfg["context"], heads(ch)), ResBlock(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(cfg["mult"]))):
            for j in range(3):
                layers = stage(ch + skips.pop(), channels * cfg["mult"][level], cfg["depth"][level])
                ch = channels * cfg["mult"][level]
                if level and j == 2:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, 4, 3, padding=1))

    def run(self, module, h, context, transformer_options, output_shape=None):
        for layer in module:  # as forward_timestep_embed
            if isinstance(layer, SpatialTransformer):
                h = layer(h, context, transformer_options)
                transformer_options["transformer_index"] += 1
            elif isinstance(layer, Upsample):
                h = layer(h, output_shape)
            else:
                h = layer(h)
        return h

    def forward(self, x, timesteps=None, context=None, y=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        hs, h = [], x
        for block_id, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", block_id)
            h = self.run(module, h, context, transformer_options)
            hs.append(h)
        transformer_options["block"] = ("middle", 0)
        h = self.run(self.middle_block, h, context, transformer_options)
        for block_id, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", block_id)
            h = torch.cat([h, hs.pop()], dim=1)
            h = self.run(module, h, context, transformer_options, hs[-1].shape if hs else None)
        return self.out(h)


class TinyModel(nn.Module):
    """Plays comfy.model_base.BaseModel: diffusion_model, model_sampling, apply_model."""

    def __init__(self, layout, channels=64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layout = layout
        self.diffusion_model = TinyUNet(layout, channels).eval()
        self.model_sampling = ModelSamplingDiscrete()

    def get_dtype(self):
        return torch.float32

    def apply_model(self, x, t, c_crossattn=None, transformer_options={}, y=None, **kwargs):
        return self.diffusion_model(x, t, context=c_crossattn, y=y, transformer_options=transformer_options.copy())
