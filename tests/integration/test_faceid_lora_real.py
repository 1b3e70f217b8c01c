"""The FaceID file's LoRA through ComfyUI's own weight patches, on a ComfyUI-built SD1.5 UNet (64 channels, the
LoRA narrowed to match): every one of the 128 attention weights becomes W + s * up @ down when the model is patched,
and W again when it is unpatched; the incoming model is never touched."""

import torch
from comfy_host import build_model, pack_module
from synthetic_faceid import lora_state, make_faceid_checkpoint

from ipadapter_core import adapter_from_state_dict
from ipadapter_core.faceid import lora_weights


def test_faceid_lora_is_a_comfyui_weight_patch():
    with torch.inference_mode():
        model = build_model("sd15")
        adapter = adapter_from_state_dict(make_faceid_checkpoint("sd15_faceid", dtype=torch.float32, rank=4),
                                          "ip-adapter-faceid_sd15.bin")
        adapter.lora = lora_state("sd15", torch.Generator().manual_seed(5), torch.float32, hidden_scale=5, rank=4)
        before = {k: v.clone() for k, v in model.model.state_dict().items()}
        clone = model.clone()
        count = pack_module("nodes.faceid_lora").add_faceid_lora(clone, adapter, 0.8, "Apply IP-Adapter")
        assert count == 128 and model.patches == {}
        clone.patch_model()
        patched = clone.model.state_dict()
        for key, (up, down) in lora_weights(adapter.lora, "sd15").items():
            expected = before[key] + 0.8 * (up @ down)
            assert torch.allclose(patched[key], expected, atol=1e-6), key
        untouched = [k for k in before if k not in lora_weights(adapter.lora, "sd15")]
        assert all(torch.equal(patched[k], before[k]) for k in untouched)
        clone.unpatch_model()
        assert all(torch.equal(v, before[k]) for k, v in model.model.state_dict().items())
