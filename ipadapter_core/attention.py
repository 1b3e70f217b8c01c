"""Decoupled cross-attention (Ye et al. 2023, §3.2.2, eq. 5):

    out = Attn(Q, K_text, V_text) + ip_weight * Attn(Q, K_img, V_img)

with K_img = image_tokens @ to_k_ip^T and V_img = image_tokens @ to_v_ip^T, split into the layer's own
heads. The query is the UNet's (already projected by its frozen to_q), so the image branch adds only
the two small projections and one attention over T image tokens.

The attention function is injected: `attention_fn(q, k, v, heads) -> out`, all [B, tokens, heads*dim_head].
This is the signature of ComfyUI's `optimized_attention`; `sdpa_attention` is the default here.

Shapes: B batch, L query tokens, S text tokens, T image tokens, C cross-attention width, D = heads*dim_head.
"""

import torch.nn.functional as F


def sdpa_attention(q, k, v, heads):
    """softmax(Q K^T / sqrt(d)) V per head, [B, L, D] in and out (PyTorch's SDPA)."""
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # [B, H, len, d]
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2).to(q.dtype)  # [B, L, D]


def project_image_tokens(image_tokens, to_k_ip, to_v_ip):
    """K_img, V_img for one layer: [B, T, C] -> two [B, T, D].

    Separate from the attention call so a host can compute it once per run and reuse it every step.
    """
    return F.linear(image_tokens, to_k_ip), F.linear(image_tokens, to_v_ip)


def image_attention(q, ip_k, ip_v, heads, attention_fn=sdpa_attention):
    """Attn(Q, K_img, V_img): the image branch alone, [B, L, D]."""
    return attention_fn(q, ip_k, ip_v, heads)


def decoupled_attention(q, k, v, ip_k, ip_v, heads, ip_weight=1.0, attention_fn=sdpa_attention):
    """Text attention plus the weighted image attention, merged heads, before the layer's to_out."""
    return attention_fn(q, k, v, heads) + ip_weight * image_attention(q, ip_k, ip_v, heads, attention_fn)


KV_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")


def scale_image_kv(ip_k, ip_v, ip_weight, mode, hidden_size):
    """Where the weight enters the image branch: (K, V, output multiplier).

    "V only" is the paper's lambda (scaling the output equals scaling V). "K+V" also scales K, which sharpens or
    flattens the softmax. The "C penalty" modes first multiply the weight by D/1280 (D = the layer's width in the
    full-size model), damping the high-resolution layers; "K+mean(V)" scales only the token mean of V, so high
    weights shift the image branch without amplifying its detail (Fooocus' channel penalty). `ip_weight` is a
    number or a tensor broadcastable to [B, 1, 1].
    """
    if mode == "V only":
        return ip_k, ip_v, ip_weight
    if mode not in KV_SCALING:
        raise ValueError(f"unknown K/V scaling {mode!r}; expected one of {', '.join(KV_SCALING)}")
    w = ip_weight * hidden_size / 1280 if "C penalty" in mode else ip_weight
    if mode == "K+mean(V) w/ C penalty":
        mean = ip_v.mean(dim=1, keepdim=True)  # [B, 1, D]: the token mean of V
        return ip_k * w, ip_v - mean + mean * w, 1.0
    return ip_k * w, ip_v * w, 1.0
