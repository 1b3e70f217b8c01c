"""Load the pack against the stand-in host (tests/standin), the way ComfyUI's loader imports it."""

import importlib.util
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "standin"))


def _install_standin():
    """Make `comfy` and its submodules the stand-in's (tests/standin/comfy_standin), as the real ones would be."""
    import comfy_standin
    import comfy_standin.clip_vision  # noqa: F401  (imports the rest)
    import comfy_standin.model_patcher  # noqa: F401
    import comfy_standin.tiny_unet  # noqa: F401
    import comfy_standin.weight_adapter.lora  # noqa: F401

    for name in [m for m in sys.modules if m == "comfy_standin" or m.startswith("comfy_standin.")]:
        sys.modules["comfy" + name[len("comfy_standin"):]] = sys.modules[name]


_install_standin()

import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import folder_paths  # noqa: E402
from comfy.clip_vision import ClipVisionModel  # noqa: E402
from comfy.tiny_unet import TinyModel  # noqa: E402

PACK_NAME = "ipadapter_dca_pack"


def load_pack():
    """Import the repo root as a package (ComfyUI's load_custom_node does the same with spec_from_file_location)."""
    if PACK_NAME not in sys.modules:
        # the tests import ipadapter_core top-level; let the pack's relative imports find that same module,
        # so classes (errors, layer sites) are one and the same on both sides
        import ipadapter_core.masks  # noqa: F401

        for name in [m for m in sys.modules if m == "ipadapter_core" or m.startswith("ipadapter_core.")]:
            sys.modules[f"{PACK_NAME}.{name}"] = sys.modules[name]
        spec = importlib.util.spec_from_file_location(PACK_NAME, os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_NAME]


def pack_module(name):
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")


def model_patcher(layout, seed=0):
    model = TinyModel(layout, seed=seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def loaded_adapter(variant, seed=0):
    """A LoadedAdapter around a synthetic adapter narrowed to the tiny UNet (64 channels = 320 / 5)."""
    from synthetic import reduced_adapter

    adapter = reduced_adapter(variant, seed=seed, hidden_scale=5)
    patcher = comfy.model_patcher.ModelPatcher(adapter, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    return pack_module("nodes.loader").LoadedAdapter(adapter, patcher, f"{variant}.safetensors")


def forward(patcher, x, sigma, context, cond_or_uncond=(0,)):
    """One UNet call as comfy.samplers.calc_cond_batch makes it: model_options' transformer_options plus
    cond_or_uncond, uuids and the step's sigmas, after loading the model and what its patches need."""
    comfy.model_management.load_models_gpu([patcher])
    transformer_options = dict(patcher.model_options["transformer_options"])
    transformer_options.update(cond_or_uncond=list(cond_or_uncond), uuids=[None] * len(cond_or_uncond), sigmas=sigma)
    return patcher.model.apply_model(x, sigma.repeat(x.shape[0] // sigma.shape[0]), c_crossattn=context,
                                     transformer_options=transformer_options)


__all__ = ["ClipVisionModel", "folder_paths", "forward", "load_pack", "loaded_adapter", "model_patcher", "pack_module"]
