"""The InstantX SD3.5 adapter at core level: detection from content and the timestep-aware resampler against
diffusers' IPAdapterTimeImageProjection loaded from the same original keys by diffusers' own converter."""

import pytest
import torch
from synthetic_sd3 import sd3_state_dict

from ipadapter_core import AdapterFileError, load_adapter


def save(tmp_path, sd, name="ip-adapter.bin"):
    path = tmp_path / name
    torch.save(sd, str(path))
    return str(path)


def test_detected_from_content(tmp_path):
    adapter = load_adapter(save(tmp_path, sd3_state_dict(), "renamed.bin"))
    spec = adapter.spec
    assert (spec.family, spec.num_tokens, spec.num_layers, spec.hidden_size, spec.head_dim) == ("sd3", 4, 2, 32, 8)
    assert (spec.encoder.output, spec.encoder.width, spec.uncond) == ("penultimate_hidden_states", 1152, "zero features")
    assert "SD3.5-Large InstantX IP-Adapter (4 tokens" in spec.label


def test_resampler_equals_diffusers(tmp_path):
    from diffusers import SD3Transformer2DModel

    sd = sd3_state_dict()
    adapter = load_adapter(save(tmp_path, sd))
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                  num_attention_heads=4, joint_attention_dim=16, caption_projection_dim=32,
                                  pooled_projection_dim=16, out_channels=4, qk_norm="rms_norm", pos_embed_max_size=16)
    reference = model._convert_ip_adapter_image_proj_to_diffusers(sd["image_proj"], low_cpu_mem_usage=False)
    features, t = torch.randn(3, 20, 1152), torch.tensor([999.0, 500.0, 3.0])
    tokens, temb = adapter.image_proj(features, t)
    expected_tokens, expected_temb = reference(features, t)
    assert (tokens - expected_tokens).norm() / expected_tokens.norm() < 1e-6
    assert (temb - expected_temb).norm() / expected_temb.norm() < 1e-6


def test_gaps_in_the_blocks_are_refused(tmp_path):
    sd = sd3_state_dict(blocks=3)
    for k in [k for k in sd["ip_adapter"] if k.startswith("1.")]:
        del sd["ip_adapter"][k]
    with pytest.raises(AdapterFileError, match=r"looks like an SD3.5 IP-Adapter, but its ip_adapter blocks are numbered"):
        load_adapter(save(tmp_path, sd))
