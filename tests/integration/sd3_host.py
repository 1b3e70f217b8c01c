"""The tiny SD3.5-Large twin (tests/sd3_twin.py) with the REAL ComfyUI MMDiT: built the way ComfyUI builds an SD3
checkpoint (`comfy.supported_models.SD3(unet_config).get_model({})` -> `model_base.SD3` around
`comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper`, ModelSamplingDiscreteFlow shift 3.0) and
loaded from the diffusers weights through ComfyUI's own diffusers key map
(`comfy.model_detection.convert_diffusers_mmdit`, which applies `comfy.utils.mmdit_to_diffusers`).

The unet_config is given explicitly (`sd3_twin.unet_config`, fp32 as ComfyUI's loader sets it);
tests/integration/test_sd3_twin_real.py checks that ComfyUI's detection gives the same. ComfyUI's converter swaps
the pre_only context adaLN of block `depth - 1` (reference dit-families.md §8), so with a block count other than
the depth use `converter="ours"`. Needs COMFYUI_PATH (see comfy_host.boot) and diffusers in ComfyUI's Python.
"""

import torch
from comfy_host import boot

import sd3_twin
from sd3_twin import forward, make_diffusers, make_inputs, rel_l2, run_comfy, run_diffusers, velocity  # noqa: F401


def unet_config(diffusers_model):
    """ComfyUI's SD3 unet_config for this checkpoint, weights in fp32."""
    return dict(sd3_twin.unet_config(diffusers_model), dtype=torch.float32)


def comfy_state_dict(diffusers_model):
    """The diffusers weights in ComfyUI's names, converted by ComfyUI itself (on a copy: the converter pops keys
    and applies its scale/shift swaps in place, reference dit-families.md §8)."""
    boot()
    import comfy.model_detection

    sd = {k: v.detach().clone() for k, v in diffusers_model.state_dict().items()}
    return comfy.model_detection.convert_diffusers_mmdit(sd, "")


def build_sd3(diffusers_model, converter="comfy"):
    """A real ModelPatcher around model_base.SD3 holding the diffusers model's weights (fp32, eval).
    `converter`: "comfy" (convert_diffusers_mmdit) or "ours" (sd3_twin.diffusers_to_comfy)."""
    boot()
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD3(unet_config(diffusers_model))
    model = config.get_model({})
    if converter == "comfy":
        sd = comfy_state_dict(diffusers_model)
    else:
        sd = sd3_twin.diffusers_to_comfy(diffusers_model.state_dict(), diffusers_model.config.num_layers)
    model.diffusion_model.load_state_dict(sd, strict=True)
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def make_pair(seed=0, blocks=2, heads=None, converter="comfy", **config):
    """(diffusers SD3Transformer2DModel, real ModelPatcher) with the same seeded weights; the ComfyUI MMDiT itself
    is `patcher.get_model_object("diffusion_model")`."""
    model = make_diffusers(seed=seed, blocks=blocks, heads=heads, **config)
    return model, build_sd3(model, converter=converter)


__all__ = ["build_sd3", "comfy_state_dict", "forward", "make_diffusers", "make_inputs", "make_pair", "rel_l2",
           "run_comfy", "run_diffusers", "unet_config", "velocity"]
