"""A UNet with a FaceID adapter equals the authors' (ip-adapter 0.1.0: MLPProjModel, LoRAAttnProcessor,
LoRAIPAttnProcessor) on the same synthetic weights: their LoRA inside every attention processor, ours merged into
the UNet's own weights through our map to ComfyUI's weight names (what ComfyUI's weight patches do), with the
decoupled image attention of the core on the attn2 layers."""

import copy
import re

import pytest
import torch
from reference_impl import comfy_key_of, import_authors, small_unet
from synthetic_faceid import make_faceid_checkpoint
from test_reference import OurProcessor, rel_err

from ipadapter_core import adapter_from_state_dict, project_image_tokens
from ipadapter_core.faceid import faceid_tokens, lora_weights
from ipadapter_core.layers import LAYERS


def comfy_weight_name(processor_name, linear):
    """ComfyUI's state-dict name of `linear` (to_q, to_k, to_v, to_out.0) of a diffusers attention processor."""
    attn = re.search(r"attn(\d)\.processor$", processor_name).group(1)
    block, block_id, t = comfy_key_of(processor_name.replace(f"attn{attn}.processor", "attn2.processor"))
    prefix = {"input": f"input_blocks.{block_id}.1", "output": f"output_blocks.{block_id}.1",
              "middle": "middle_block.1"}[block]
    return f"diffusion_model.{prefix}.transformer_blocks.{t}.attn{attn}.{linear}.weight"


@pytest.mark.parametrize("layout,variant", [("sd15", "sd15_faceid"), ("sdxl", "sdxl_faceid")])
def test_unet_with_faceid_equals_the_authors_processors(layout, variant):
    _, attention_processor, _ = import_authors()
    import ip_adapter.attention_processor_faceid as faceid_processors
    import ip_adapter.ip_adapter_faceid as faceid_models

    torch.manual_seed(0)
    full = make_faceid_checkpoint(variant, seed=7, dtype=torch.float32, rank=4)  # projection and spec
    narrow = make_faceid_checkpoint(variant, seed=7, dtype=torch.float32, rank=4, hidden_scale=10)  # the small UNet's
    adapter = adapter_from_state_dict(full, f"{variant}.bin")
    c = adapter.spec.cross_attention_dim
    gen = torch.Generator().manual_seed(4)
    face = torch.nn.functional.normalize(torch.randn(2, 512, generator=gen), dim=-1)
    latents, text, t = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 77, c, generator=gen), torch.tensor([500.0, 20.0])
    weight = 0.7

    unet = small_unet(layout)
    base = copy.deepcopy(unet)  # the same frozen UNet for ours
    with torch.no_grad():
        plain = unet(latents, t, text).sample
        projection = faceid_models.MLPProjModel(cross_attention_dim=c, id_embeddings_dim=512, num_tokens=4)
        projection.load_state_dict(full["image_proj"])
        procs = {}
        for name in unet.attn_processors:
            hidden = unet.get_submodule(name[: -len(".processor")]).to_q.out_features
            if name.endswith("attn1.processor"):
                procs[name] = faceid_processors.LoRAAttnProcessor(hidden_size=hidden, rank=4)
            else:
                procs[name] = faceid_processors.LoRAIPAttnProcessor(hidden_size=hidden, cross_attention_dim=c, rank=4,
                                                                    scale=weight, num_tokens=4)
        unet.set_attn_processor(procs)
        torch.nn.ModuleList(unet.attn_processors.values()).load_state_dict(narrow["ip_adapter"], strict=True)
        reference = unet(latents, t, torch.cat([text, projection(face)], dim=1)).sample

        # ours: the LoRA merged as ComfyUI's weight patch merges it (W + 1.0 * up @ down), by our name map
        patches = lora_weights({k: v for k, v in narrow["ip_adapter"].items() if "_lora." in k}, layout)
        unet = base
        merged = 0
        for name in unet.attn_processors:
            attn = unet.get_submodule(name[: -len(".processor")])
            for linear, module in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out.0", attn.to_out[0])):
                up, down = patches[comfy_weight_name(name, linear)]
                module.weight += up @ down
                merged += 1
        assert merged == len(patches) == 8 * len(LAYERS[layout])
        tokens = faceid_tokens(adapter, face)
        sites = {s.patch_key if len(s.patch_key) == 3 else s.patch_key + (0,): s for s in LAYERS[layout]}
        procs = {}
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                procs[name] = attention_processor.AttnProcessor2_0()
            else:
                index = str(sites[comfy_key_of(name)].index)
                ip_k, ip_v = project_image_tokens(tokens, narrow["ip_adapter"][f"{index}.to_k_ip.weight"],
                                                  narrow["ip_adapter"][f"{index}.to_v_ip.weight"])
                procs[name] = OurProcessor(ip_k, ip_v, weight)
        unet.set_attn_processor(procs)
        ours = unet(latents, t, text).sample
    assert rel_err(reference, plain) > 1e-3
    assert rel_err(ours, reference) <= 1e-5
