"""Stand-in for comfy.clip_vision: ClipVisionModel.encode_image and the model call it makes.

The vision model is tiny and random, but its outputs have the real widths: ViT-H gives image_embeds
[B, 1024] and penultimate_hidden_states [B, 257, 1280]; ViT-bigG gives [B, 1280] and [B, 257, 1664].
"""

import torch
import torch.nn.functional as F
from torch import nn

from . import model_management, model_patcher

CONFIGS = {"vit-h": dict(width=1280, projection=1024), "vit-bigg": dict(width=1664, projection=1280)}


def clip_preprocess(image, size=224, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711), crop=True):
    """As ComfyUI's: drop alpha, resize the short side (bicubic, antialias), center-crop, quantise, normalise."""
    image = image[..., :3].movedim(-1, 1)
    if image.shape[2:] != (size, size):
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            new_size = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            new_size = (size, size)
        image = F.interpolate(image, size=new_size, mode="bicubic", antialias=True)
        top, left = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
        image = image[:, :, top:top + size, left:left + size]
    image = torch.clip(255.0 * image, 0, 255).round() / 255.0
    mean, std = (torch.tensor(v, dtype=image.dtype, device=image.device).view(3, 1, 1) for v in (mean, std))
    return (image - mean) / std


class TinyVisionModel(nn.Module):
    def __init__(self, width, projection, layers=3):
        super().__init__()
        self.patch = nn.Conv2d(3, width, 14, stride=14)
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width)) for _ in range(layers))
        self.post_layernorm = nn.LayerNorm(width)
        self.visual_projection = nn.Linear(width, projection, bias=False)

    def forward(self, pixel_values=None, intermediate_output=None):
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)  # [B, 256, width]
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1)  # [B, 257, width]
        hidden = []
        for layer in self.layers:
            x = x + torch.tanh(layer(x) + layer(x).mean(dim=1, keepdim=True))
            hidden.append(x)
        intermediate = hidden[intermediate_output] if intermediate_output is not None else None
        embeds = self.visual_projection(self.post_layernorm(x[:, 0]))
        return x, intermediate, embeds, None


class Output:
    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, item):
        setattr(self, key, item)


class ClipVisionModel:
    def __init__(self, kind="vit-h", seed=0):
        torch.manual_seed(seed)
        self.image_size = 224
        self.image_mean = [0.48145466, 0.4578275, 0.40821073]
        self.image_std = [0.26862954, 0.26130258, 0.27577711]
        self.load_device = model_management.text_encoder_device()
        self.model = TinyVisionModel(**CONFIGS[kind]).eval().requires_grad_(False)
        self.patcher = model_patcher.ModelPatcher(self.model, load_device=self.load_device, offload_device=self.load_device)

    def encode_image(self, image, crop=True):
        model_management.load_model_gpu(self.patcher)
        pixel_values = clip_preprocess(image.to(self.load_device), size=self.image_size, mean=self.image_mean,
                                       std=self.image_std, crop=crop).float()
        out = self.model(pixel_values=pixel_values, intermediate_output=-2)
        outputs = Output()
        outputs["last_hidden_state"] = out[0].to(model_management.intermediate_device())
        outputs["image_embeds"] = out[2].to(model_management.intermediate_device())
        outputs["penultimate_hidden_states"] = out[1].to(model_management.intermediate_device())
        outputs["mm_projected"] = out[3]
        return outputs
