"""The independent references: the authors' `ip_adapter` package (PyPI ip-adapter==0.1.0) and diffusers.

ip-adapter 0.1.0 imports `MultiControlNetModel` from `diffusers.pipelines.controlnet`, which diffusers
0.42 no longer exports there; alias it before importing. The authors' code itself is unchanged.
"""

import re

import pytest


def import_authors():
    try:
        import diffusers.pipelines.controlnet as controlnet_pipelines
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
    except ImportError as e:  # pragma: no cover - CI installs both
        pytest.skip(f"diffusers is not installed ({e}); install requirements-dev.txt")
    if not hasattr(controlnet_pipelines, "MultiControlNetModel"):
        controlnet_pipelines.MultiControlNetModel = MultiControlNetModel
    import ip_adapter.attention_processor as attention_processor
    import ip_adapter.ip_adapter as ip_adapter
    import ip_adapter.resampler as resampler

    return ip_adapter, attention_processor, resampler


def small_unet(layout: str):
    """A diffusers UNet2DConditionModel with the SD1.5 or SDXL block layout and 1/10 of the channels."""
    from diffusers import UNet2DConditionModel

    if layout == "sd15":
        config = dict(
            block_out_channels=(32, 64, 128, 128),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=8,  # 8 heads, as SD1.5's config
            cross_attention_dim=768,
        )
    else:
        config = dict(
            block_out_channels=(32, 64, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(1, 2, 4),  # heads; SDXL's (5, 10, 20) give 64-wide heads at full size
            use_linear_projection=True,
            cross_attention_dim=2048,
        )
    return UNet2DConditionModel(sample_size=16, layers_per_block=2, norm_num_groups=32, **config).eval()


def comfy_key_of(processor_name: str):
    """ComfyUI's (block_name, block_id, transformer_index) for a diffusers attn2 processor name.

    The LDM/ComfyUI numbering: down_blocks.i.attentions.j is input block 3i+1+j, up_blocks.i.attentions.j
    is output block 3i+j, the mid block is ("middle", 0) (ComfyUI's openaimodel.py).
    """
    m = re.match(r"(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn2",
                 processor_name)
    kind, i, j, k = m.group(1), int(m.group(2) or 0), int(m.group(3)), int(m.group(4))
    if kind == "down_blocks":
        return ("input", 3 * i + 1 + j, k)
    if kind == "up_blocks":
        return ("output", 3 * i + j, k)
    return ("middle", 0, k)
