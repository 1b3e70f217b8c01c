"""FaceID through the nodes inside the real ComfyUI, on ComfyUI-built SD1.5 and SDXL UNets (64 channels, the adapter
narrowed to match): Encode Image Prompt on faces, then Apply IP-Adapter (advanced) with its LoRA, equals the same UNet
with the LoRA merged by hand (W + s * up @ down) and the core's decoupled attention on the projected face tokens."""

import copy

import numpy as np
import pytest
import torch
from comfy_host import boot, build_model, forward, pack_module
from synthetic_faceid import narrow_faceid_adapter
from test_real_host import make_inputs, reference_patches

from ipadapter_core import faces as backend
from ipadapter_core.faceid import faceid_tokens, lora_weights

VARIANT = {"sd15": "sd15_faceid", "sdxl": "sdxl_faceid"}


def face_batch(count, seed=3):
    """What Embed Faces hands on, with random identities (the face models are tested on their own)."""
    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(count):
        embedding = rng.standard_normal(512).astype(np.float32) * 20
        faces.append(backend.Face(True, (10.0, 10.0, 90.0, 90.0), np.zeros((5, 2), np.float32), 0.9, embedding,
                                  embedding / np.linalg.norm(embedding), "w600k_r50.onnx",
                                  np.zeros((224, 224, 3), np.uint8)))
    return pack_module("nodes.faces").FaceBatch(tuple(faces), "w600k_r50.onnx", "synthetic", 224)


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_faceid_apply_equals_the_lora_merged_by_hand_and_the_core_attention(layout):
    with torch.inference_mode():
        boot()
        import comfy.model_management
        import comfy.model_patcher

        model = build_model(layout)
        adapter = narrow_faceid_adapter(VARIANT[layout])
        loaded = pack_module("nodes.loader").LoadedAdapter(
            adapter, comfy.model_patcher.ModelPatcher(adapter, load_device=comfy.model_management.get_torch_device(),
                                                      offload_device=comfy.model_management.unet_offload_device()),
            f"{VARIANT[layout]}.bin")
        faces = face_batch(2)
        (prompt,) = pack_module("nodes.encode").EncodeImagePrompt().encode(loaded, faces=faces)
        normed = torch.stack([torch.from_numpy(f.normed_embedding) for f in faces.faces])
        assert torch.allclose(prompt.cond, faceid_tokens(adapter, normed), atol=1e-6, rtol=0)

        before = copy.deepcopy(model.model.state_dict())
        (patched,) = pack_module("nodes.apply").ApplyIPAdapterAdvanced().apply(model, loaded, prompt, 0.7, 0.0, 1.0,
                                                                                 lora_strength=0.8)
        x, sigma, context, y = make_inputs(layout)
        got = forward(patched, x, sigma, context, (1, 0), y)
        comfy.model_management.unload_all_models()  # unpatches: the shared UNet gets its own weights back

        reference = build_model(layout)  # the same seed: the same weights, then the LoRA merged by hand
        merged = reference.model.state_dict()
        weights = lora_weights(adapter.lora, layout)
        assert len(weights) == {"sd15": 128, "sdxl": 560}[layout]
        for key, (up, down) in weights.items():
            merged[key].copy_(before[key] + 0.8 * up @ down)
        for site, patch in reference_patches(loaded, prompt, 0.7).items():
            reference.set_model_attn2_replace(patch, *site.patch_key)
        expected = forward(reference, x, sigma, context, (1, 0), y)
        assert all(torch.equal(v, before[k]) for k, v in model.model.state_dict().items())  # the input is untouched
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-5
