"""Full-size model files with random weights, built with ComfyUI's own classes, so workflows run end to end.

Nothing is downloaded: each file has the real key names and shapes, so ComfyUI's loaders detect it as the real
thing (an SD1.5 checkpoint, a ViT-H CLIP vision model, an SD1.5 ControlNet, a LoRA).
"""

import os

import torch
from safetensors.torch import save_file

SD15_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                 use_linear_in_transformer=False, context_dim=768, num_heads=8,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_temporal_attention=False,
                 use_temporal_resblock=False)
SDXL_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                 transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_temporal_attention=False,
                 use_temporal_resblock=False)
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def randomize(module, seed=0):
    """ComfyUI's layers skip weight init (weights come from files); give every tensor sane random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.state_dict().items():
            if not p.is_floating_point():
                continue
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return module


def _save(sd, path):
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in sd.items() if v.is_floating_point()}, path)


def sd15_checkpoint(path):
    """A checkpoint CheckpointLoaderSimple detects as SD1.5: UNet, CLIP-L text encoder and VAE."""
    import comfy.supported_models

    _checkpoint(comfy.supported_models.SD15(dict(SD15_UNET, dtype=torch.float16)), path)


def sdxl_checkpoint(path):
    """An SDXL base checkpoint: UNet, CLIP-L and OpenCLIP-bigG text encoders, VAE (about 7 GB)."""
    import comfy.supported_models

    _checkpoint(comfy.supported_models.SDXL(dict(SDXL_UNET, dtype=torch.float16)), path)


def _checkpoint(config, path):
    import comfy.ldm.models.autoencoder
    import comfy.sd

    model = config.get_model({})
    randomize(model.diffusion_model, 1)
    clip = comfy.sd.CLIP(target=config.clip_target({}))
    randomize(clip.cond_stage_model, 2)
    vae = randomize(comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD_VAE, embed_dim=4), 3)
    _save(model.state_dict_for_saving(clip.get_sd(), vae.state_dict(), None), path)


def clip_vision_vit_h(path):
    import comfy.clip_vision

    config = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")
    encoder = comfy.clip_vision.ClipVisionModel(config)
    _save(randomize(encoder.model, 4).state_dict(), path)


def sd15_controlnet(path):
    """A ControlNet (canny-style: RGB hint) in the original cldm layout."""
    import comfy.cldm.cldm

    keys = ("image_size", "in_channels", "model_channels", "num_res_blocks", "transformer_depth", "channel_mult",
            "transformer_depth_middle", "use_linear_in_transformer", "context_dim", "num_heads", "use_checkpoint",
            "legacy", "use_spatial_transformer", "adm_in_channels")
    cfg = {k: SD15_UNET[k] for k in keys}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float32, **cfg)
    randomize(net, 5)
    sd = {k: v for k, v in net.state_dict().items()}
    torch.save({k: v.to(torch.float16) for k, v in sd.items() if v.is_floating_point()}, path)


def sd15_lora(path):
    """A small LoRA on the first cross-attention's to_k and to_v (kohya key names)."""
    g = torch.Generator().manual_seed(6)
    sd = {}
    for proj in ("to_k", "to_v"):
        base = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_{proj}"
        sd[f"{base}.lora_down.weight"] = torch.randn(4, 768, generator=g) * 0.05
        sd[f"{base}.lora_up.weight"] = torch.randn(320, 4, generator=g) * 0.05
        sd[f"{base}.alpha"] = torch.tensor(4.0)
    save_file(sd, path)
