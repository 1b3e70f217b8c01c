"""Boot the real ComfyUI headless on CPU, as main.py does, and load this pack through its custom-node loader."""

import asyncio
import logging
import os
import sys

import torch

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
PACK_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_state = {}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def boot():
    """Import ComfyUI (CPU, no server) and load the pack; returns (nodes module, pack module, warnings)."""
    if _state:
        return _state["nodes"], _state["pack"], _state["warnings"]
    sys.argv = [os.path.join(COMFYUI_PATH, "main.py"), "--cpu"]
    sys.path.insert(0, COMFYUI_PATH)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    import utils.extra_config  # noqa: F401  before nodes: nodes.py puts comfy/ first on sys.path

    import nodes

    # the built-in extras (FluxGuidance, EmptySD3LatentImage, ...), as main.py loads them; no other custom nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        ok = asyncio.run(nodes.load_custom_node(PACK_DIR, ignore=set(nodes.NODE_CLASS_MAPPINGS), module_parent="custom_nodes"))
    finally:
        logging.getLogger().removeHandler(records)
    assert ok, "ComfyUI's loader did not load the pack"
    pack = sys.modules[PACK_DIR.replace(".", "_x_")]
    _state.update(nodes=nodes, pack=pack, warnings=records.records)
    return nodes, pack, records.records


def pack_module(name):
    """A submodule of the pack as ComfyUI imported it (e.g. 'nodes.apply')."""
    boot()
    import importlib

    return importlib.import_module(PACK_DIR.replace(".", "_x_") + "." + name)  # loaded already, or now


def unet_config(layout, channels=64):
    """ComfyUI's own SD1.5 / SDXL UNet configs (comfy/model_detection.py), with fewer channels."""
    base = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                dtype=torch.float32, in_channels=4, model_channels=channels, use_temporal_attention=False,
                use_temporal_resblock=False)
    if layout == "sd15":
        return dict(base, adm_in_channels=None, num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                    channel_mult=[1, 2, 4, 4], transformer_depth_middle=1, use_linear_in_transformer=False,
                    context_dim=768, num_heads=8, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    return dict(base, num_classes="sequential", adm_in_channels=2816, num_res_blocks=[2, 2, 2],
                transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4], transformer_depth_middle=10,
                use_linear_in_transformer=True, context_dim=2048, num_head_channels=32,
                transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10])


def build_model(layout, channels=64, seed=0):
    """A ModelPatcher around a ComfyUI-built UNet with random weights."""
    boot()
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    torch.manual_seed(seed)
    # the model classes ComfyUI picks for these checkpoints; model_detection only matches full-size configs
    config_class = comfy.supported_models.SD15 if layout == "sd15" else comfy.supported_models.SDXL
    config = config_class(unet_config(layout, channels))
    model = config.get_model({})
    model.diffusion_model.eval()
    with torch.no_grad():  # ComfyUI skips weight init (weights come from files): give them sane random values
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.normal_(1, 0.1)
            else:
                p.normal_(0, 0.02)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def forward(patcher, x, sigma, context, cond_or_uncond=(0,), y=None):
    """One UNet call the way comfy.samplers.calc_cond_batch makes it."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    transformer_options = dict(patcher.model_options["transformer_options"])
    transformer_options.update(cond_or_uncond=list(cond_or_uncond), uuids=[None] * len(cond_or_uncond), sigmas=sigma)
    kwargs = {"c_crossattn": context, "transformer_options": transformer_options}
    if y is not None:
        kwargs["y"] = y
    return patcher.model.apply_model(x, sigma.repeat(x.shape[0] // sigma.shape[0]), **kwargs)
