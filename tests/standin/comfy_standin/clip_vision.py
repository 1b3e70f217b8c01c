"""Stand-in for comfy.clip_vision: ClipVisionModel.encode_image and the model call it makes.

The vision model is tiny and random, but its outputs have the real widths: ViT-H gives image_embeds
[B, 1024] and penultimate_hidden_states [B, 257, 1280]; ViT-bigG gives [B, 1280] and [B, 257, 1664]; ViT-L/14
gives [B, 768] and [B, 257, 1024].

"siglip-384" stands in for SigLIP so400m-patch14-384 as ComfyUI v0.8.0 loads it (clip_vision_siglip_384.json,
CLIPVisionModelProjection): 384 px, patch 14, 729 tokens and no class token, mean = std = 0.5, hidden_act
gelu_pytorch_tanh, no visual projection and no attention-pooling head. encode_image gives last_hidden_state =
post_layernorm(sequence) [B, 729, 1152] (torch's default LayerNorm eps 1e-5, as ComfyUI's), image_embeds = the
same post-layernorm sequence (ComfyUI's pooled_output for SigLIP is the whole sequence and its projection is the
identity), penultimate_hidden_states = the second-last layer's output [B, 729, 1152] (before post_layernorm) and
all_hidden_states = every layer's output [B, layers, 729, 1152]. Its state-dict keys are a subset of ComfyUI's
(vision_model.embeddings.*, vision_model.encoder.layers.N.{layer_norm1,mlp.fc1,mlp.fc2}.*,
vision_model.post_layernorm.*); the inner MLP width is 16 instead of 4304 and there is no self-attention, so it stays
tiny.
"""

import torch
import torch.nn.functional as F
from torch import nn

from . import model_management, model_patcher

CONFIGS = {"vit-h": dict(width=1280, projection=1024), "vit-bigg": dict(width=1664, projection=1280),
           "vit-l": dict(width=1024, projection=768)}
SIGLIP_CONFIGS = {"siglip-384": dict(width=1152, image_size=384, patch_size=14, layers=3, inner=16)}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


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


class TinySiglipLayer(nn.Module):
    """Pre-norm residual MLP (gelu tanh) with a token-mean mixing term, under ComfyUI's CLIPLayer names."""

    def __init__(self, width, inner):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, inner)
        self.mlp.fc2 = nn.Linear(inner, width)

    def forward(self, x):
        h = self.mlp.fc1(self.layer_norm1(x))
        h = F.gelu(h + h.mean(dim=1, keepdim=True), approximate="tanh")
        return x + self.mlp.fc2(h)


class TinySiglipVision(nn.Module):
    def __init__(self, width, image_size, patch_size, layers, inner):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.patch_embedding = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=True)
        self.embeddings.position_embedding = nn.Embedding((image_size // patch_size) ** 2, width)
        with torch.no_grad():
            self.embeddings.position_embedding.weight.mul_(0.02)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(TinySiglipLayer(width, inner) for _ in range(layers))
        self.post_layernorm = nn.LayerNorm(width)  # eps 1e-5, as ComfyUI's
        with torch.no_grad():  # not the ones/zeros init: files of different encoders must differ here
            self.post_layernorm.weight.add_(torch.randn(width) * 0.1)
            self.post_layernorm.bias.add_(torch.randn(width) * 0.1)

    def forward(self, pixel_values, attention_mask=None, intermediate_output=None):
        x = self.embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [B, 729, width], no class token
        x = x + self.embeddings.position_embedding.weight.to(x.dtype)
        hidden = []
        for layer in self.encoder.layers:
            x = layer(x)
            hidden.append(x)
        if intermediate_output == "all":
            intermediate = torch.stack(hidden, dim=1)  # [B, layers, 729, width]
        elif intermediate_output is not None:
            intermediate = hidden[intermediate_output].clone()
        else:
            intermediate = None
        x = self.post_layernorm(x)
        return x, intermediate, x  # SigLIP: pooled_output is the whole post-layernorm sequence


class TinySiglipVisionModel(nn.Module):
    """ComfyUI's CLIPVisionModelProjection for siglip_vision_model: visual_projection is the identity."""

    def __init__(self, **config):
        super().__init__()
        self.vision_model = TinySiglipVision(**config)

    def forward(self, *args, **kwargs):
        x = self.vision_model(*args, **kwargs)
        return x[0], x[1], x[2], None


class Output:
    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, item):
        setattr(self, key, item)


class ClipVisionModel:
    """kind: "vit-h", "vit-bigg", "vit-l" or "siglip-384"; random weights from `seed`, or `state_dict` loaded on top
    of them (strict=False, as ComfyUI's load_sd: extra keys such as vision_model.head.* are ignored)."""

    def __init__(self, kind="vit-h", seed=0, state_dict=None):
        torch.manual_seed(seed)
        self.kind = kind
        self.load_device = model_management.text_encoder_device()
        if kind in SIGLIP_CONFIGS:
            config = SIGLIP_CONFIGS[kind]
            self.image_size = config["image_size"]
            self.image_mean, self.image_std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
            self.return_all_hidden_states = True
            self.model = TinySiglipVisionModel(**config).eval().requires_grad_(False)
        else:
            self.image_size = 224
            self.image_mean, self.image_std = list(CLIP_MEAN), list(CLIP_STD)
            self.return_all_hidden_states = False
            self.model = TinyVisionModel(**CONFIGS[kind]).eval().requires_grad_(False)
        if state_dict is not None:
            self.load_sd(state_dict)
        self.patcher = model_patcher.ModelPatcher(self.model, load_device=self.load_device, offload_device=self.load_device)

    def load_sd(self, sd):
        return self.model.load_state_dict(sd, strict=False)

    def get_sd(self):
        return self.model.state_dict()

    def encode_image(self, image, crop=True):
        model_management.load_model_gpu(self.patcher)
        pixel_values = clip_preprocess(image.to(self.load_device), size=self.image_size, mean=self.image_mean,
                                       std=self.image_std, crop=crop).float()
        out = self.model(pixel_values=pixel_values, intermediate_output="all" if self.return_all_hidden_states else -2)
        outputs = Output()
        outputs["last_hidden_state"] = out[0].to(model_management.intermediate_device())
        outputs["image_embeds"] = out[2].to(model_management.intermediate_device())
        if self.return_all_hidden_states:
            all_hs = out[1].to(model_management.intermediate_device())
            outputs["penultimate_hidden_states"] = all_hs[:, -2]
            outputs["all_hidden_states"] = all_hs
        else:
            outputs["penultimate_hidden_states"] = out[1].to(model_management.intermediate_device())
        outputs["mm_projected"] = out[3]
        return outputs


def load_clipvision_from_sd(sd):
    """The stand-in kind whose state dict this is (by the post_layernorm width), loaded with it; None if none."""
    if "vision_model.post_layernorm.weight" in sd:
        kind = "siglip-384" if sd["vision_model.post_layernorm.weight"].shape[0] == 1152 else None
    else:
        widths = {c["width"]: k for k, c in CONFIGS.items()}
        kind = widths.get(sd["post_layernorm.weight"].shape[0]) if "post_layernorm.weight" in sd else None
    return None if kind is None else ClipVisionModel(kind, state_dict=sd)


def load(ckpt_path):
    """comfy.clip_vision.load for the stand-in's own .safetensors files (what get_sd() wrote)."""
    import safetensors.torch

    return load_clipvision_from_sd(safetensors.torch.load_file(ckpt_path))
