"""Attention masks for the image branch: where in the picture the image prompt applies.

The query tokens of a cross-attention layer are the latent's pixels downsampled `downsample` times
(each step a stride-2 convolution with padding 1, so sizes round up). The grid is derived from the
actual latent height and width, never guessed from the token count, so any aspect ratio works.
"""

import torch
import torch.nn.functional as F


def token_grid(latent_height: int, latent_width: int, downsample: int) -> tuple[int, int]:
    """(h, w) of the query tokens at a layer that sees the latent downsampled `downsample` times."""
    h, w = latent_height, latent_width
    while downsample > 1:
        h, w, downsample = -(-h // 2), -(-w // 2), downsample // 2
    return h, w


def mask_for_tokens(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[M, H, W] soft mask (0..1) -> [M, h*w, 1], resized bilinearly to the layer's token grid."""
    resized = F.interpolate(mask[:, None].float(), size=grid, mode="bilinear", align_corners=False)
    return resized.flatten(1)[..., None]
