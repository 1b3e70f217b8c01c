"""Several reference images in one image prompt.

"concat" keeps every image's tokens (they are concatenated in the attention, one softmax over all of them;
a per-image weight scales that image's values). The other modes merge the encoder features of the images
into one before the projection, as weighted sums:

    average       sum_i w_i e_i / sum_i w_i
    norm average  the average of the unit vectors e_i / |e_i|, rescaled to the mean length of the e_i
                  (per token for hidden states), so no image dominates by its norm
    add           sum_i w_i e_i
    subtract      w_0 e_0 - mean_{i>0} w_i e_i   (the first image minus what the others have)
"""

import torch

COMBINE_MODES = ("concat", "average", "norm average", "add", "subtract")


def combine_features(features: torch.Tensor, mode: str, image_weights: torch.Tensor) -> torch.Tensor:
    """[n, ...] features and [n] weights -> [n, ...] for concat, else [1, ...]."""
    if mode not in COMBINE_MODES:
        raise ValueError(f"unknown combine mode {mode!r}; expected one of {', '.join(COMBINE_MODES)}")
    if mode == "concat":
        return features
    w = image_weights.to(features.dtype).view(-1, *[1] * (features.ndim - 1))
    if mode == "add":
        return (features * w).sum(0, keepdim=True)
    if mode == "subtract":
        if features.shape[0] < 2:
            raise ValueError("'subtract' needs at least two images: the first, and what to take away from it")
        return features[:1] * w[:1] - (features[1:] * w[1:]).mean(0, keepdim=True)
    total = w.sum()
    if total.abs() < 1e-8:
        raise ValueError("the image weights add up to 0, so they cannot be averaged")
    if mode == "average":
        return (features * w).sum(0, keepdim=True) / total
    norms = features.norm(dim=-1, keepdim=True)  # norm average
    unit = features / norms.clamp_min(1e-8)
    return (unit * w).sum(0, keepdim=True) / total * norms.mean(0, keepdim=True)
