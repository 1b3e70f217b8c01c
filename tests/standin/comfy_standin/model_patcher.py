"""Stand-in for comfy.model_patcher.ModelPatcher (v0.8.0): what the pack and its tests use, same semantics.

clone() shares the model and deep-copies model_options, exactly as the real clone does; attn2 replace
patches are stored under (block_name, number[, transformer_index]) without mutating a parent's dicts.
"""

import copy


from . import patcher_extension, utils


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    to = model_options["transformer_options"].copy()
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"][name] = dict(to["patches_replace"].get(name, {}))
    block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    to["patches_replace"][name][block] = patch
    model_options["transformer_options"] = to
    return model_options


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.weight_inplace_update = weight_inplace_update
        self.patches = {}
        self.object_patches = {}
        self.model_options = {"transformer_options": {}}
        self.parent = None
        # {wrapper_type: {key: [wrapper, ...]}}, as the real one: the sampler merges it into
        # model_options["transformer_options"]["wrappers"] when sampling starts (sampler_helpers.prepare_model_patcher)
        self.wrappers = patcher_extension.WrappersMP.init_wrappers()

    def model_size(self):
        return sum(t.nbytes for t in self.model.state_dict().values())

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size, self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.parent = self
        n.wrappers = {t: {k: w[:] for k, w in by_key.items()} for t, by_key in self.wrappers.items()}
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                             transformer_index=transformer_index)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def add_wrapper_with_key(self, wrapper_type: str, key: str, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        """Weight patches (what LoRA loaders add), applied when the model is used. As the real one: keys the model
        does not have are skipped, and the keys patched are returned."""
        model_sd = self.model.state_dict()
        applied = []
        for key, value in patches.items():
            if key in model_sd:
                self.patches.setdefault(key, []).append((strength_patch, value, strength_model, None, None))
                applied.append(key)
        return applied

    def get_model_object(self, name: str):
        if name in self.object_patches:
            return self.object_patches[name]
        return utils.get_attr(self.model, name)

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()

    def _replace_patches(self):
        return self.model_options["transformer_options"].get("patches_replace", {})

    def model_patches_to(self, device):
        for patches in self._replace_patches().values():
            for k in patches:
                if hasattr(patches[k], "to"):
                    patches[k] = patches[k].to(device)

    def model_patches_models(self):
        models = []
        for patches in self._replace_patches().values():
            for patch in patches.values():
                if hasattr(patch, "models"):
                    models += patch.models()
        return models

    def patched_weights(self):
        """The model's weights with the weight patches applied, as patch_model computes them (LoRAAdapter values)."""
        sd = {k: v.clone() for k, v in self.model.state_dict().items()}
        for key, entries in self.patches.items():
            for strength_patch, value, strength_model, offset, function in entries:
                sd[key] = value.calculate_weight(sd[key], key, strength_patch, strength_model, offset, function)
        return sd
