"""Stand-in for comfy.ldm.modules.attention: optimized_attention with ComfyUI's signature.

On CPU the real host picks attention_sub_quad; any exact attention is equivalent to it up to float
rounding, so SDPA stands in here.

Like every backend of the real module, it is wrapped by `wrap_attn`: when the call's
`transformer_options` holds an `optimized_attention_override`, that function is called instead, as
`override(func, *args, **kwargs)` with `_inside_attn_wrapper=True` among the kwargs, so the override can run
the backend itself (`func(*args, **kwargs)`) without being entered again.
"""

import functools

import torch.nn.functional as F


def wrap_attn(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if "_inside_attn_wrapper" in kwargs:  # called from an override (or a nested backend): run the backend
            return func(*args, **kwargs)
        kwargs["_inside_attn_wrapper"] = True
        try:
            transformer_options = kwargs.get("transformer_options", None)
            if transformer_options is not None and "optimized_attention_override" in transformer_options:
                return transformer_options["optimized_attention_override"](func, *args, **kwargs)
            return func(*args, **kwargs)
        finally:
            del kwargs["_inside_attn_wrapper"]
    return wrapper


@wrap_attn
def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    """q, k, v [B, L, H*D] (or [B, H, L, D] with skip_reshape); returns [B, L, H*D] (or [B, H, L, D] with
    skip_output_reshape). A mask [L, L'] or [B, L, L'] gets batch and head dimensions, as in the real host."""
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, dim_head = q.shape
        dim_head //= heads
        q, k, v = (t.reshape(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention
