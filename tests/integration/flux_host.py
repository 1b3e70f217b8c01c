"""The tiny FLUX.1 twin (tests/flux_twin.py) with the REAL ComfyUI Flux: built the way ComfyUI builds a Flux
checkpoint (`comfy.supported_models.Flux(unet_config).get_model({})` -> `model_base.Flux` around
`comfy.ldm.flux.model.Flux`) and loaded from the diffusers weights through ComfyUI's own diffusers key map
(`comfy.model_detection.convert_diffusers_mmdit`, which applies `comfy.utils.flux_to_diffusers`).

Flux detection (`model_detection.detect_unet_config`) hard-codes the released num_heads (24) and axes_dim
([16, 56, 56]), so the unet_config is given explicitly, from the diffusers config. Needs COMFYUI_PATH (see
comfy_host.boot) and diffusers in ComfyUI's Python.
"""

import torch
from comfy_host import boot

import flux_twin
from flux_twin import forward, make_diffusers, make_inputs, rel_l2, run_comfy, run_diffusers, velocity  # noqa: F401


def unet_config(diffusers_model):
    """ComfyUI's Flux unet_config (what detection would give for this checkpoint, with its true heads and axes),
    keeping the FluxParams fields this ComfyUI has (v0.3.64 has no txt_ids_dims)."""
    boot()
    import dataclasses

    import comfy.ldm.flux.model

    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    params = {k: v for k, v in flux_twin.comfy_params(diffusers_model).items() if k in fields}
    return dict(image_model="flux", **params)


def comfy_state_dict(diffusers_model):
    """The diffusers weights in ComfyUI's names, converted by ComfyUI itself (on a copy: the converter pops keys
    and rewrites the final adaLN in place, reference dit-families.md §8)."""
    boot()
    import comfy.model_detection

    sd = {k: v.detach().clone() for k, v in diffusers_model.state_dict().items()}
    return comfy.model_detection.convert_diffusers_mmdit(sd, "")


def build_flux(diffusers_model):
    """A real ModelPatcher around model_base.Flux holding the diffusers model's weights (fp32, eval)."""
    boot()
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.Flux(unet_config(diffusers_model))
    model = config.get_model({})
    model.diffusion_model.load_state_dict(comfy_state_dict(diffusers_model), strict=True)
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def make_pair(seed=0, double=2, single=2, **config):
    """(diffusers FluxTransformer2DModel, real ModelPatcher) with the same seeded weights; the ComfyUI Flux itself
    is `patcher.get_model_object("diffusion_model")`."""
    model = make_diffusers(seed=seed, double=double, single=single, **config)
    return model, build_flux(model)


__all__ = ["build_flux", "comfy_state_dict", "forward", "make_diffusers", "make_inputs", "make_pair", "rel_l2",
           "run_comfy", "run_diffusers", "unet_config", "velocity"]
