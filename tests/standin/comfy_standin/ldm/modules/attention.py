"""Stand-in for comfy.ldm.modules.attention: optimized_attention with ComfyUI's signature.

On CPU the real host picks attention_sub_quad; any exact attention is equivalent to it up to float
rounding, so SDPA stands in here.
"""

import torch.nn.functional as F


def optimized_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    b = q.shape[0]
    if not skip_reshape:
        q, k, v = (t.reshape(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[3])


optimized_attention_masked = optimized_attention
