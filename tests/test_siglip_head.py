"""SiglipPoolingHead against transformers' SiglipVisionModel: our head on HF's last_hidden_state is HF's pooler_output."""

import pytest
import torch
import transformers

from ipadapter_core.siglip import (HEAD_KEYS, HEAD_PREFIX, LAYER_NORM_EPS, SiglipHeadError, SiglipPoolingHead,
                                   head_from_state_dict)

WIDTH, HEADS, INNER = 32, 4, 64


@pytest.fixture(scope="module")
def hf_model():
    config = transformers.SiglipVisionConfig(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS,
                                             image_size=28, patch_size=14, intermediate_size=INNER)
    torch.manual_seed(0)
    model = transformers.SiglipVisionModel(config).eval()
    with torch.no_grad():  # move away from the init (zero biases, unit LayerNorms) so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def hf_out(hf_model):
    torch.manual_seed(1)
    with torch.no_grad():
        return hf_model(pixel_values=torch.rand(3, 3, 28, 28) * 2 - 1)


def checkpoint_sd(model):
    """The keys a hub checkpoint has: transformers 5 saves SiglipVisionModel without the `vision_model.` prefix
    (base_model_prefix), google/siglip-so400m-patch14-384's model.safetensors has it."""
    return {f"vision_model.{k}": v for k, v in model.state_dict().items()}


def assert_close(ours, theirs):
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-6 * max(1.0, theirs.abs().max().item())


def test_config_facts(hf_model):
    assert hf_model.config.layer_norm_eps == LAYER_NORM_EPS
    assert hf_model.config.hidden_act == "gelu_pytorch_tanh"
    assert hf_model.head.attention.num_heads == HEADS
    assert hf_model.head.layernorm.eps == LAYER_NORM_EPS


def test_parameter_names_are_the_checkpoint_keys(hf_model):
    head = SiglipPoolingHead(WIDTH, HEADS, INNER)
    hf_head = {k[len(HEAD_PREFIX):]: v.shape for k, v in checkpoint_sd(hf_model).items() if k.startswith(HEAD_PREFIX)}
    assert {k: v.shape for k, v in head.state_dict().items()} == hf_head
    assert set(HEAD_KEYS) == set(hf_head)


def test_head_equals_pooler_output(hf_model, hf_out):
    head = SiglipPoolingHead(WIDTH, HEADS, INNER)
    head.load_state_dict(hf_model.head.state_dict())
    with torch.no_grad():
        pooled = head(hf_out.last_hidden_state)
    assert pooled.shape == (3, WIDTH) and pooled.dtype == torch.float32
    assert_close(pooled, hf_out.pooler_output)


def test_head_from_checkpoint_keys(hf_model, hf_out):
    sd = checkpoint_sd(hf_model)  # the whole checkpoint: non-head keys are ignored
    head = head_from_state_dict(sd, "model.safetensors", num_heads=HEADS)
    for k in HEAD_KEYS:  # built around the given tensors, no copies
        assert head.state_dict()[k].data_ptr() == sd[HEAD_PREFIX + k].data_ptr()
    assert not any(p.requires_grad for p in head.parameters()) and not head.training
    with torch.no_grad():
        assert_close(head(hf_out.last_hidden_state), hf_out.pooler_output)
    relative = {k[len(HEAD_PREFIX):]: v for k, v in sd.items() if k.startswith(HEAD_PREFIX)}
    with torch.no_grad():  # keys without the prefix work too
        assert_close(head_from_state_dict(relative, "head", num_heads=HEADS)(hf_out.last_hidden_state), hf_out.pooler_output)


def test_keeps_dtype_and_computes_in_the_input_dtype(hf_model, hf_out):
    sd = {k: v.half() for k, v in checkpoint_sd(hf_model).items()}
    head = head_from_state_dict(sd, "fp16.safetensors", num_heads=HEADS)
    assert all(p.dtype == torch.float16 for p in head.parameters())
    with torch.no_grad():
        pooled = head(hf_out.last_hidden_state)
    assert pooled.dtype == torch.float32
    assert (pooled - hf_out.pooler_output).abs().max() < 2e-2 * hf_out.pooler_output.abs().max()


def test_default_heads_for_so400m():
    head = SiglipPoolingHead(1152, 16, 4304, device="meta")
    sd = {HEAD_PREFIX + k: torch.empty_like(v, device="meta") for k, v in head.state_dict().items()}
    built = head_from_state_dict(sd, "siglip.safetensors")
    assert (built.hidden_size, built.num_heads, built.intermediate_size) == (1152, 16, 4304)
    assert built.state_dict()["attention.in_proj_weight"].shape == (3456, 1152)


def test_missing_keys_name_the_file(hf_model):
    sd = checkpoint_sd(hf_model)
    without_head = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIX)}
    with pytest.raises(SiglipHeadError, match=r"'sigclip\.safetensors' has no complete SigLIP attention-pooling head"):
        head_from_state_dict(without_head, "sigclip.safetensors", num_heads=HEADS)
    partial = {k: v for k, v in sd.items() if k != HEAD_PREFIX + "mlp.fc2.bias"}
    with pytest.raises(SiglipHeadError, match=r"'part\.safetensors'.*vision_model\.head\.mlp\.fc2\.bias"):
        head_from_state_dict(partial, "part.safetensors", num_heads=HEADS)
    assert issubclass(SiglipHeadError, ValueError)


def test_misshaped_keys_name_the_file(hf_model):
    sd = dict(checkpoint_sd(hf_model))
    sd[HEAD_PREFIX + "attention.in_proj_weight"] = torch.zeros(2 * WIDTH, WIDTH)
    with pytest.raises(SiglipHeadError, match=r"'bad\.safetensors'.*in_proj_weight \[64, 32\] \(expected \[96, 32\]\)"):
        head_from_state_dict(sd, "bad.safetensors", num_heads=HEADS)
    relative = {k[len(HEAD_PREFIX):]: v for k, v in checkpoint_sd(hf_model).items() if k.startswith(HEAD_PREFIX)}
    with pytest.raises(SiglipHeadError, match="unexpected"):
        head_from_state_dict({**relative, "extra.weight": torch.zeros(1)}, "x", num_heads=HEADS)
    with pytest.raises(SiglipHeadError, match="not a known one"):  # width 32: heads cannot be guessed
        head_from_state_dict(relative, "x")
