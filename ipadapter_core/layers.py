"""Where the IP-Adapter cross-attention layers sit in the UNet.

A checkpoint numbers its image K/V projections `ip_adapter.N.to_k_ip.weight` by N, the position of the
layer's processor in diffusers' `unet.attn_processors` (attn1 and attn2 interleaved, so attn2 layers are
the odd N). That walk visits the down blocks, then the up blocks, then the middle block. ComfyUI names the
same layers by the key of its attn2 replace patch: `(block_name, block_id)` or
`(block_name, block_id, transformer_index)`. This module is the one place that ties the two together.
"""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LayerSite:
    """One cross-attention layer that gets an image branch."""

    index: int  # N in "ip_adapter.N.to_k_ip.weight"
    block_name: str  # "input" | "middle" | "output"
    block_id: int  # ComfyUI's block number; the middle block is 0
    transformer_index: int  # position of the transformer block inside its SpatialTransformer
    hidden_size: int  # D, the layer's width in the full-size model: to_k_ip is [D, C]
    downsample: int  # latent pixels per token side at this layer (1, 2, 4 or 8)
    patch_key: tuple  # the key ComfyUI looks up in patches_replace["attn2"]
    spatial_index: int = 0  # the SpatialTransformer's place in execution order (input, middle, output blocks):
    #                         ComfyUI's transformer_index, which per-layer weight schedules are written against


def _walk(blocks, keyed_by_transformer):
    """Number the attn2 layers in diffusers' processor order: N = 1, 3, 5, ...

    SD1.5 transformers have depth 1 and are keyed by the 2-tuple, as other packs do, so an existing
    patch at that key is found and wrapped; SDXL needs the 3-tuple to reach each of its 2 or 10 blocks.
    """
    sites = []
    for block_name, block_id, depth, hidden_size, downsample in blocks:
        for transformer_index in range(depth):
            index = 2 * len(sites) + 1
            key = (block_name, block_id, transformer_index) if keyed_by_transformer else (block_name, block_id)
            sites.append(LayerSite(index, block_name, block_id, transformer_index, hidden_size, downsample, key))
    order = {"input": 0, "middle": 1, "output": 2}
    spatial = sorted({(order[s.block_name], s.block_id) for s in sites})
    return tuple(replace(s, spatial_index=spatial.index((order[s.block_name], s.block_id))) for s in sites)


# (block_name, block_id, transformer depth, hidden size D, downsampling) in diffusers' walk order:
# down blocks, up blocks, then the middle block, which diffusers registers last.
SD15_LAYERS = _walk(
    [("input", 1, 1, 320, 1), ("input", 2, 1, 320, 1),
     ("input", 4, 1, 640, 2), ("input", 5, 1, 640, 2),
     ("input", 7, 1, 1280, 4), ("input", 8, 1, 1280, 4)]
    + [("output", i, 1, 1280, 4) for i in (3, 4, 5)]
    + [("output", i, 1, 640, 2) for i in (6, 7, 8)]
    + [("output", i, 1, 320, 1) for i in (9, 10, 11)]
    + [("middle", 0, 1, 1280, 8)],
    keyed_by_transformer=False,
)

SDXL_LAYERS = _walk(
    [("input", 4, 2, 640, 2), ("input", 5, 2, 640, 2),
     ("input", 7, 10, 1280, 4), ("input", 8, 10, 1280, 4)]
    + [("output", i, 10, 1280, 4) for i in (0, 1, 2)]
    + [("output", i, 2, 640, 2) for i in (3, 4, 5)]
    + [("middle", 0, 10, 1280, 4)],
    keyed_by_transformer=True,
)

LAYERS = {"sd15": SD15_LAYERS, "sdxl": SDXL_LAYERS}
