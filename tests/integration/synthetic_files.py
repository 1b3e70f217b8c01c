"""Full-size model files with random weights, built with ComfyUI's own classes, so workflows run end to end.

Nothing is downloaded: each file has the real key names and shapes, so ComfyUI's loaders detect it as the real
thing (an SD1.5 checkpoint, a ViT-H CLIP vision model, an SD1.5 ControlNet, a LoRA, FLUX.1-dev's separate files).
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
# what comfy/model_detection.py detects for flux1-dev.safetensors (19 double, 38 single blocks)
FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[], yak_mlp=False,
                txt_norm=False)
FLUX_VAE = dict(SD_VAE, z_channels=16)  # ae.safetensors: the SD VAE layout with 16 latent channels, no quant convs


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


def _save(sd, path, dtype=torch.float16):
    save_file({k: v.detach().to(dtype).contiguous() for k, v in sd.items() if v.is_floating_point()}, path)


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


def _clip_vision(config_name, seed):
    """The state dict of ComfyUI's CLIP vision model for one of its configs (comfy/clip_vision_*.json)."""
    import comfy.clip_vision

    config = os.path.join(os.path.dirname(comfy.clip_vision.__file__), config_name)
    encoder = comfy.clip_vision.ClipVisionModel(config)
    return randomize(encoder.model, seed).state_dict()


def clip_vision_vit_h(path):
    _save(_clip_vision("clip_vision_config_h.json", 4), path)


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


def flux_unet(path, double=1, single=1):
    """A FLUX.1-dev diffusion model (models/diffusion_models, bf16 as released) that UNETLoader detects as Flux:
    full width (hidden 3072, 24 heads, T5 context 4096, CLIP vec 768, 16 latent channels in 2x2 patches, guidance
    embedding), but `double` + `single` blocks instead of 19 + 38: 0.55 B parameters, not 12 B."""
    import comfy.model_detection
    import comfy.supported_models

    config = dict(FLUX_DEV, depth=double, depth_single_blocks=single)
    model = comfy.supported_models.Flux(dict(config, dtype=torch.bfloat16)).get_model({})
    randomize(model.diffusion_model, 7)
    sd = model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(7)
    for name, p in sd.items():  # the QK RMSNorm scales: near 1, as for norm weights (randomize gives them ~0.02)
        if name.endswith(".scale"):
            p.copy_(1 + 0.05 * torch.randn(p.shape, generator=g))
    detected = comfy.model_detection.detect_unet_config(sd, "")
    assert detected == config, f"ComfyUI detects {detected}, not {config}"
    _save(sd, path, torch.bfloat16)


def clip_l(path):
    """clip_l.safetensors for DualCLIPLoader: ComfyUI's CLIP-L text model (sd1_clip_config.json), fp16."""
    import comfy.sd1_clip

    encoder = comfy.sd1_clip.SDClipModel(dtype=torch.float16, return_projected_pooled=False)
    _save(randomize(encoder.transformer, 8).state_dict(), path)


def t5xxl(path):
    """t5xxl_fp16.safetensors: ComfyUI's T5-XXL encoder (t5_config_xxl.json, 24 blocks, d_model 4096), fp16:
    4.76 B parameters, a 9.5 GB file. Full size because ComfyUI builds this config whatever the file holds."""
    import comfy.text_encoders.sd3_clip

    encoder = comfy.text_encoders.sd3_clip.T5XXLModel(dtype=torch.float16)
    _save(randomize(encoder.transformer, 9).state_dict(), path)


def flux_vae(path):
    """ae.safetensors: the Flux autoencoder (16 latent channels, no quant convs), fp32 as released; VAELoader builds
    an AutoencodingEngine from decoder.conv_in's 16 input channels."""
    import comfy.ldm.models.autoencoder

    def part(name):
        return {"target": f"comfy.ldm.modules.diffusionmodules.model.{name}", "params": FLUX_VAE}

    vae = comfy.ldm.models.autoencoder.AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config=part("Encoder"), decoder_config=part("Decoder"))
    _save(randomize(vae, 10).state_dict(), path, torch.float32)


def clip_vision_vit_l(path):
    """clip-vit-large-patch14.safetensors: CLIP ViT-L/14 vision (24 layers, 257 positions, projection 768)."""
    _save(_clip_vision("clip_vision_config_vitl.json", 11), path)


class _SiglipHead(torch.nn.Module):
    """transformers' SiglipMultiheadAttentionPoolingHead: the `vision_model.head.*` tensors of Google's file."""

    def __init__(self, width=1152, heads=16, intermediate=4304):
        super().__init__()
        self.probe = torch.nn.Parameter(torch.empty(1, 1, width))
        self.attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.layernorm = torch.nn.LayerNorm(width, eps=1e-6)
        self.mlp = torch.nn.Module()
        self.mlp.fc1 = torch.nn.Linear(width, intermediate)
        self.mlp.fc2 = torch.nn.Linear(intermediate, width)


def clip_vision_siglip_384(path):
    """siglip-so400m-patch14-384.safetensors: SigLIP so400m vision as ComfyUI loads it (clip_vision_siglip_384.json:
    27 layers, width 1152, 729 positions) plus the attention-pooling head ComfyUI drops and the pack reads."""
    sd = _clip_vision("clip_vision_siglip_384.json", 12)
    head = randomize(_SiglipHead(), 13)
    sd.update({f"vision_model.head.{k}": v for k, v in head.state_dict().items()})
    _save(sd, path)


def _half(sd):
    return {k: v.to(torch.float16).contiguous() for k, v in sd.items()}


def flux_xlabs_adapter(path, doubles=1):
    """flux-ip-adapter.safetensors (XLabs v1: 4 tokens from CLIP ViT-L's 768 embedding), for a Flux with `doubles`
    double blocks at full width, fp16."""
    from synthetic_flux import xlabs_state_dict

    save_file(_half(xlabs_state_dict(tokens=4, doubles=doubles, hidden=3072, cross_dim=4096, seed=14)), path)


def flux_instantx_adapter(path, layers=2):
    """instantx-flux1-dev-ip-adapter.bin (nested torch.save), one layer per block of a Flux with `layers` blocks,
    at full width but 8 tokens through a 64-wide projection (released: 128 tokens via 2304; 1.2 B parameters)."""
    from synthetic_flux import instantx_state_dict

    sd = instantx_state_dict(tokens=8, layers=layers, hidden=3072, cross_dim=4096, inner_dim=64, seed=15)
    torch.save({part: _half(tensors) for part, tensors in sd.items()}, path)


# what comfy/model_detection.py detects for sd3.5_large.safetensors (38 joint blocks, width 64 * 38 = 2432)
SD35_LARGE = dict(in_channels=16, patch_size=2, out_channels=16, depth=38, input_size=None, adm_in_channels=2048,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": 4096, "out_features": 2432}},
                  num_patches=36864, pos_embed_max_size=192, qk_norm="rms", pos_embed_scaling_factor=None,
                  x_block_self_attn_layers=[])


def sd35_large_checkpoint(path, depth=2):
    """sd3.5_large.safetensors for CheckpointLoaderSimple: the SD3.5-Large MMDiT (QK RMSNorm, pos_embed 192x192,
    pooled 2048, T5 context 4096, 16 latent channels) and the SD3 VAE (16 channels, under first_stage_model.), no
    text encoders (the workflow's TripleCLIPLoader gives them), fp16.

    ComfyUI's checkpoint detection reads the depth from x_embedder (width // 64) and builds that many joint blocks:
    it sets no `num_blocks` from the file, so fewer blocks than depth cannot load. The model is therefore `depth`
    blocks of width 64 * depth (2 blocks, 128 wide, 2 heads of 64: the real head width), not 2432."""
    import comfy.ldm.models.autoencoder
    import comfy.model_detection
    import comfy.supported_models

    width = 64 * depth
    config = dict(SD35_LARGE, depth=depth, context_embedder_config={
        "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": width}})
    model = comfy.supported_models.SD3(dict(config, dtype=torch.float16)).get_model({})
    randomize(model.diffusion_model, 16)
    g = torch.Generator().manual_seed(16)
    for name, p in model.diffusion_model.state_dict().items():  # QK RMSNorm weights near 1 (the pack divides by them)
        if ".ln_q." in name or ".ln_k." in name:
            p.copy_(1 + 0.05 * torch.randn(p.shape, generator=g))
    detected = comfy.model_detection.detect_unet_config(model.diffusion_model.state_dict(), "")
    assert detected == config, f"ComfyUI detects {detected}, not {config}"

    def part(name):
        return {"target": f"comfy.ldm.modules.diffusionmodules.model.{name}", "params": FLUX_VAE}

    vae = comfy.ldm.models.autoencoder.AutoencodingEngine(  # the SD3 VAE: Flux's layout, 16 channels, no quant convs
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config=part("Encoder"), decoder_config=part("Decoder"))
    _save(model.state_dict_for_saving(None, randomize(vae, 17).state_dict(), None), path)


def clip_g(path):
    """clip_g.safetensors for TripleCLIPLoader: ComfyUI's OpenCLIP bigG text model (clip_config_bigg.json, 32 layers,
    width 1280, text projection), as in SDXL; fp16, 1.4 GB."""
    import comfy.sdxl_clip

    encoder = comfy.sdxl_clip.SDXLClipG(dtype=torch.float16)
    _save(randomize(encoder.transformer, 18).state_dict(), path)


def sd35_instantx_adapter(path, blocks=2, hidden=128):
    """instantx-sd3.5-large-ip-adapter.bin (nested torch.save): the released resampler (64 tokens, 1280 wide, 4 layers,
    SigLIP's 1152 in), one layer per joint block of the checkpoint above, writing its width in heads of 64; fp16."""
    from synthetic_sd3 import sd3_state_dict

    sd = sd3_state_dict(tokens=64, blocks=blocks, hidden=hidden, head_dim=64, dim=1280, seed=19)
    torch.save({part: _half(tensors) for part, tensors in sd.items()}, path)
