"""The FaceID file's LoRA as ComfyUI weight patches on a clone (stand-in host; tests/integration repeats it on the
real ComfyUI): 128 weights of SD1.5, each W + s * up @ down, nothing else touched, the incoming model unchanged;
a LoRA that does not fit the model is refused, naming what is missing."""

import pytest
import torch
from standin_host import load_pack, model_patcher, pack_module
from synthetic_faceid import lora_state, make_faceid_checkpoint

from ipadapter_core import adapter_from_state_dict
from ipadapter_core.faceid import lora_weights


def faceid_adapter(variant, family):
    adapter = adapter_from_state_dict(make_faceid_checkpoint(variant, dtype=torch.float32, rank=4), f"{variant}.bin")
    adapter.lora = lora_state(family, torch.Generator().manual_seed(5), torch.float32, hidden_scale=5, rank=4)
    return adapter


def test_lora_patches_every_attention_weight_once():
    load_pack()
    model = model_patcher("sd15")
    adapter = faceid_adapter("sd15_faceid", "sd15")
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    clone = model.clone()
    assert pack_module("nodes.faceid_lora").add_faceid_lora(clone, adapter, 0.6, "Apply IP-Adapter") == 128
    assert model.patches == {}
    patched = clone.patched_weights()
    weights = lora_weights(adapter.lora, "sd15")
    for key, (up, down) in weights.items():
        assert torch.allclose(patched[key], before[key] + 0.6 * up @ down, atol=1e-6), key
    assert all(torch.equal(patched[k], v) for k, v in before.items() if k not in weights)


def test_a_lora_for_another_unet_is_refused():
    load_pack()
    adapter = faceid_adapter("sd15_faceid", "sd15")
    adapter.lora = lora_state("sdxl", torch.Generator().manual_seed(5), torch.float32, hidden_scale=5, rank=4)
    adapter.spec = type(adapter.spec)(**{**adapter.spec.__dict__, "family": "sdxl"})
    model = model_patcher("sd15")
    with pytest.raises(ValueError, match=r"^Apply IP-Adapter: the FaceID LoRA of SDXL FaceID IP-Adapter .* patches 560 "
                                         r"attention weights, and the model has only \d+ of them \(missing e\.g\. "
                                         r"diffusion_model\..*\): it is not the SDXL UNet"):
        pack_module("nodes.faceid_lora").add_faceid_lora(model, adapter, 1.0, "Apply IP-Adapter")
    assert model.patches == {}  # nothing half-applied
