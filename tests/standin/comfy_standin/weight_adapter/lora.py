"""Stand-in for comfy/weight_adapter/lora.py (v0.8.0): LoRAAdapter(loaded_keys, weights) with weights
(up, down, alpha, mid, dora_scale, reshape); calculate_weight adds strength * alpha/rank * up @ down, where
alpha/rank is 1.0 without an alpha, as the real one does."""

import torch


class WeightAdapterBase:
    name = ""


class LoRAAdapter(WeightAdapterBase):
    name = "lora"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys = loaded_keys
        self.weights = weights

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, intermediate_dtype=torch.float32,
                         original_weight=None):
        up, down, alpha, mid, dora_scale, reshape = self.weights
        if mid is not None or dora_scale is not None or reshape is not None or offset is not None:
            raise NotImplementedError("the stand-in LoRAAdapter only does plain up @ down")
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        if strength_model != 1.0:
            weight = weight * strength_model
        lora = (up.to(weight.device, intermediate_dtype) @ down.to(weight.device, intermediate_dtype)).reshape(weight.shape)
        return weight + (strength * scale * lora).to(weight.dtype)
