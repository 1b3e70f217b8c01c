"""Decoupled attention against a naive per-head computation, and the seams the host relies on."""

import subprocess
import sys

import torch

from ipadapter_core import decoupled_attention, project_image_tokens, sdpa_attention


def naive_attention(q, k, v, heads):
    b, l, d = q.shape
    q, k, v = (t.reshape(b, -1, heads, d // heads).permute(0, 2, 1, 3) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return (weights @ v).permute(0, 2, 1, 3).reshape(b, l, d)


def test_decoupled_attention_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 64, 80, generator=g), torch.randn(2, 77, 80, generator=g), torch.randn(2, 77, 80, generator=g)
    image_tokens = torch.randn(2, 4, 768, generator=g)
    to_k_ip, to_v_ip = torch.randn(80, 768, generator=g) / 28, torch.randn(80, 768, generator=g) / 28
    ip_k, ip_v = project_image_tokens(image_tokens, to_k_ip, to_v_ip)
    assert ip_k.shape == ip_v.shape == (2, 4, 80)
    expected = naive_attention(q, k, v, 8) + 0.6 * naive_attention(q, image_tokens @ to_k_ip.T, image_tokens @ to_v_ip.T, 8)
    got = decoupled_attention(q, k, v, ip_k, ip_v, heads=8, ip_weight=0.6)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_weight_zero_is_text_attention_exactly():
    g = torch.Generator().manual_seed(1)
    q, k, v, ip_k, ip_v = (torch.randn(1, n, 64, generator=g) for n in (16, 77, 77, 4, 4))
    assert torch.equal(decoupled_attention(q, k, v, ip_k, ip_v, heads=4, ip_weight=0.0), sdpa_attention(q, k, v, 4))


def test_injected_attention_function_is_used_for_both_branches():
    calls = []

    def host_attention(q, k, v, heads):
        calls.append((k.shape[1], heads))
        return naive_attention(q, k, v, heads)

    g = torch.Generator().manual_seed(2)
    q, k, v, ip_k, ip_v = (torch.randn(1, n, 64, generator=g) for n in (16, 77, 77, 16, 16))
    decoupled_attention(q, k, v, ip_k, ip_v, heads=4, attention_fn=host_attention)
    assert calls == [(77, 4), (16, 4)]


def test_core_imports_without_comfy():
    code = "import sys, ipadapter_core; print(sorted(m for m in sys.modules if m.split('.')[0] == 'comfy'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.stdout.strip() == "[]"
