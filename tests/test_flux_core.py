"""Flux IP-Adapters at core level: detection from content, loading without copies, the projections against
diffusers' ImageProjection and the InstantX spec, RoPE inversion, per-block weights."""

import pytest
import torch
from safetensors.torch import save_file
from synthetic_flux import instantx_state_dict, xlabs_state_dict

from ipadapter_core import AdapterFileError, load_adapter
from ipadapter_core.flux import image_kv, rope, unrope
from ipadapter_core.schedules import block_weights


def save_xlabs(tmp_path, name="flux-ip-adapter.safetensors", **kw):
    path = tmp_path / name
    save_file(xlabs_state_dict(**kw), str(path))
    return str(path)


def save_instantx(tmp_path, name="ip-adapter.bin", sd=None, **kw):
    path = tmp_path / name
    torch.save(sd or instantx_state_dict(**kw), str(path))
    return str(path)


@pytest.mark.parametrize("tokens", [4, 16])
def test_xlabs_v1_and_v2_are_detected_from_content(tmp_path, tokens):
    adapter = load_adapter(save_xlabs(tmp_path, "renamed.safetensors", tokens=tokens, doubles=3))
    spec = adapter.spec
    assert (spec.family, spec.projection, spec.num_tokens, spec.num_layers) == ("flux", "xlabs", tokens, 3)
    assert (spec.cross_attention_dim, spec.hidden_size, spec.encoder.output, spec.encoder.width) == (24, 32, "image_embeds", 768)
    assert spec.uncond == "black image"
    assert f"({tokens} tokens, needs ViT-L/14)" in spec.label


def test_instantx_is_detected_from_a_weights_only_bin(tmp_path):
    adapter = load_adapter(save_instantx(tmp_path, tokens=8, layers=5))
    spec = adapter.spec
    assert (spec.family, spec.projection, spec.num_tokens, spec.num_layers) == ("flux", "instantx", 8, 5)
    assert (spec.encoder.output, spec.encoder.width, spec.uncond) == ("siglip_pooled", 1152, "none")


def test_file_dtypes_are_kept_and_nothing_is_copied(tmp_path):
    sd = instantx_state_dict()
    sd["ip_adapter"] = {k: v.half() for k, v in sd["ip_adapter"].items()}
    from ipadapter_core import adapter_from_state_dict
    from ipadapter_core.checkpoint import split_prefixed

    nested = split_prefixed(sd, "x")
    adapter = adapter_from_state_dict(nested, "x")
    assert adapter.ip_adapter["3"].to_k_ip.weight.dtype == torch.float16
    assert adapter.ip_adapter["3"].to_k_ip.weight.data_ptr() == nested["ip_adapter"]["3.to_k_ip.weight"].data_ptr()
    assert adapter.image_proj.proj[0].weight.dtype == torch.float32


def test_xlabs_projection_equals_diffusers_image_projection(tmp_path):
    from diffusers.models.embeddings import ImageProjection

    sd = xlabs_state_dict(tokens=16)
    adapter = load_adapter(save_xlabs(tmp_path, tokens=16))
    reference = ImageProjection(image_embed_dim=768, cross_attention_dim=24, num_image_text_embeds=16)
    reference.load_state_dict({k.replace("ip_adapter_proj_model.", "").replace("proj", "image_embeds"): v
                               for k, v in sd.items() if k.startswith("ip_adapter_proj_model.")})
    embeds = torch.randn(3, 768)
    from ipadapter_core import image_tokens

    ours = image_tokens(adapter, embeds)
    expected = reference(embeds)
    assert ours.shape == (3, 16, 24)
    assert (ours - expected).norm() / expected.norm() < 1e-6


def test_instantx_projection_follows_the_spec(tmp_path):
    """dit-families.md §2.3 step 1: c = LayerNorm(reshape(W2 GELU(W1 e + b1) + b2, [B, 128, C]))."""
    sd = instantx_state_dict(tokens=8)
    adapter = load_adapter(save_instantx(tmp_path, sd=sd))
    p = sd["image_proj"]
    e = torch.randn(2, 1152)
    hidden = torch.nn.functional.gelu(e @ p["proj.0.weight"].T + p["proj.0.bias"])
    tokens = (hidden @ p["proj.2.weight"].T + p["proj.2.bias"]).reshape(2, 8, 24)
    expected = torch.nn.functional.layer_norm(tokens, (24,), p["norm.weight"], p["norm.bias"], eps=1e-5)
    from ipadapter_core import image_tokens

    ours = image_tokens(adapter, e)
    assert (ours - expected).norm() / expected.norm() < 1e-6


def test_instantx_keys_are_rms_normalised_and_values_are_not():
    tokens = torch.randn(2, 8, 24)
    to_k, to_v = torch.randn(32, 24), torch.randn(32, 24)
    k, v = image_kv(tokens, to_k, None, to_v, None, heads=2, normalize_k=True)
    raw_k = (tokens @ to_k.T).reshape(2, 8, 2, 16).transpose(1, 2)
    expected_k = raw_k / raw_k.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    assert torch.allclose(k, expected_k, atol=1e-6)
    assert torch.allclose(v, (tokens @ to_v.T).reshape(2, 8, 2, 16).transpose(1, 2), atol=1e-6)


def test_unrope_inverts_rope():
    angles = torch.rand(1, 1, 10, 8) * 6.28
    cos, sin = angles.cos(), angles.sin()
    pe = torch.stack([cos, -sin, sin, cos], -1).reshape(1, 1, 10, 8, 2, 2)  # ComfyUI's rotation matrices
    x = torch.randn(2, 3, 10, 16)
    rotated = rope(x, pe)
    # the pair (x0, x1) turns by its angle: x0' = cos x0 - sin x1
    assert torch.allclose(rotated[..., 0], cos[..., 0] * x[..., 0] - sin[..., 0] * x[..., 1], atol=1e-6)
    assert torch.allclose(unrope(rotated, pe), x, atol=1e-5)


def test_block_weights_text():
    names = [f"double {i}" for i in range(3)] + [f"single {i}" for i in range(2)]
    assert block_weights("", names, 0.7) == [0.7] * 5
    assert block_weights("all = 0, double 1 = 1, single = 0.5", names, 2.0) == [0, 2.0, 0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"layer_weights entry 1 'single 7 = 1': this adapter patches double 0 to 2, "
                                         r"single 0 to 1; there is no single 7\."):
        block_weights("single 7 = 1", names, 1.0)
    with pytest.raises(ValueError, match=r"layer_weights entry 2 'input 4 = 1': expected 'BLOCK = VALUE'"):
        block_weights("all = 1; input 4 = 1", names, 1.0)


def test_xlabs_file_with_another_encoder_width_is_refused(tmp_path):
    with pytest.raises(AdapterFileError, match=r"'flux-ip-adapter.safetensors' looks like a Flux IP-Adapter, but its "
                                               r"projection is \[96, 1024\] \(expected \[T\*24, 768\] from CLIP ViT-L\)"):
        load_adapter(save_xlabs(tmp_path, embed_dim=1024))


def test_instantx_with_missing_layer_is_refused(tmp_path):
    sd = instantx_state_dict(layers=4)
    del sd["ip_adapter"]["2.to_k_ip.weight"], sd["ip_adapter"]["2.to_v_ip.weight"]
    with pytest.raises(AdapterFileError, match=r"its ip_adapter layers are numbered \[0, 1, 3\]"):
        load_adapter(save_instantx(tmp_path, sd=sd))


def test_instantx_with_a_half_layer_is_refused(tmp_path):
    sd = instantx_state_dict(layers=4)
    del sd["ip_adapter"]["2.to_v_ip.weight"]
    with pytest.raises(AdapterFileError, match=r"its tensors do not match \(missing ip_adapter.2.to_v_ip.weight"):
        load_adapter(save_instantx(tmp_path, sd=sd))
