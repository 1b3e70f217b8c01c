"""A synthetic InstantX SD3.5-Large IP-Adapter: the released file's original key names (dit-families.md §3.1), random
values, any width and depth. Released: 64 tokens, resampler 1280 wide (20 heads of 64), 4 layers, 38 blocks, width
2432 in heads of 64. diffusers' converter fixes the resampler's depth at 4 and its heads at 64 wide, so tests keep those."""

import torch


def sd3_state_dict(tokens=4, blocks=2, hidden=32, head_dim=8, dim=128, depth=4, embed_dim=1152, timestep_dim=320, seed=0):
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)

    def norm(n):
        return 1 + w(n, scale=0.1), w(n, scale=0.02)

    proj = {"latents": w(1, tokens, dim, scale=dim ** -0.5), "proj_in.weight": w(dim, embed_dim), "proj_in.bias": w(dim, scale=0.02),
            "proj_out.weight": w(hidden, dim), "proj_out.bias": w(hidden, scale=0.02),
            "time_embedding.linear_1.weight": w(dim, timestep_dim), "time_embedding.linear_1.bias": w(dim, scale=0.02),
            "time_embedding.linear_2.weight": w(dim, dim), "time_embedding.linear_2.bias": w(dim, scale=0.02)}
    proj["norm_out.weight"], proj["norm_out.bias"] = norm(hidden)
    for layer in range(depth):
        p = f"layers.{layer}."
        for n in ("0.norm1", "0.norm2", "1.0"):
            proj[p + n + ".weight"], proj[p + n + ".bias"] = norm(dim)
        proj[p + "0.to_q.weight"] = w(dim, dim)
        proj[p + "0.to_kv.weight"] = w(2 * dim, dim)
        proj[p + "0.to_out.weight"] = w(dim, dim)
        proj[p + "1.1.weight"] = w(4 * dim, dim)
        proj[p + "1.3.weight"] = w(dim, 4 * dim)
        proj[p + "2.1.weight"], proj[p + "2.1.bias"] = w(4 * dim, dim, scale=0.02), w(4 * dim, scale=0.02)
    ip = {}
    for i in range(blocks):
        ip[f"{i}.norm_ip.linear.weight"] = w(2 * hidden, dim, scale=0.05)
        ip[f"{i}.norm_ip.linear.bias"] = w(2 * hidden, scale=0.02)
        ip[f"{i}.to_k_ip.weight"], ip[f"{i}.to_v_ip.weight"] = w(hidden, hidden), w(hidden, hidden)
        for n in ("norm_q", "norm_k", "norm_ip_k"):
            ip[f"{i}.{n}.weight"] = 1 + w(head_dim, scale=0.1)
    return {"image_proj": proj, "ip_adapter": ip}
