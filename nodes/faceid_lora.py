"""The LoRA inside a FaceID file, applied the reference's way through ComfyUI's own weight patches.

The reference merges it at multiplier 1.0 into to_q / to_k / to_v / to_out.0 of every attn1 and attn2
(faceid-kolors.md §1.2). Here it becomes a LoRA weight patch on the returned clone, so ComfyUI applies, offloads and
removes it like any LoRA, and it combines with the user's own LoRAs. `strength` scales it (1.0 = the reference).
"""

import comfy.weight_adapter.lora

from ..ipadapter_core.detect import FAMILY_NAMES
from ..ipadapter_core.faceid import lora_weights
from .common import NodeInputError


def add_faceid_lora(model, adapter, strength: float, node: str):
    """Patch `model` (a clone) with the adapter's LoRA at `strength`; returns the number of weights patched. A LoRA
    that does not fit the model is refused before anything is added."""
    weights = lora_weights(adapter.lora, adapter.spec.family)
    patches = {key: comfy.weight_adapter.lora.LoRAAdapter(set(), (up, down, None, None, None, None))
               for key, (up, down) in weights.items()}
    missing = sorted(set(patches) - set(model.model.state_dict()))  # checked first: nothing is half-applied
    if missing:
        raise NodeInputError(
            f"{node}: the FaceID LoRA of {adapter.spec.label} patches {len(patches)} attention weights, and the model "
            f"has only {len(patches) - len(missing)} of them (missing e.g. {missing[0]}): it is not the "
            f"{FAMILY_NAMES[adapter.spec.family]} UNet the adapter was trained for.")
    return len(model.add_patches(patches, strength_patch=strength, strength_model=1.0))
