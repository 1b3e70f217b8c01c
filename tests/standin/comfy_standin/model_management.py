"""Stand-in for comfy.model_management on a CPU-only machine (ComfyUI started with --cpu)."""

import weakref

import torch

current_loaded_models = []  # weak references, as the real LoadedModel keeps: a dropped clone is freed


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def text_encoder_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False):
    """Like the real one: the models plus every model their patches report (model_patches_models) get loaded."""
    wanted = set()
    for m in models:
        wanted.add(m)
        wanted.update(m.model_patches_models())
    current_loaded_models[:] = [ref for ref in current_loaded_models if ref() is not None]
    for m in wanted:
        m.model_patches_to(m.load_device)
        m.model_patches_to(m.model_dtype())
        if all(ref() is not m for ref in current_loaded_models):
            current_loaded_models.append(weakref.ref(m))


def load_model_gpu(model):
    return load_models_gpu([model])


def throw_exception_if_processing_interrupted():
    pass
