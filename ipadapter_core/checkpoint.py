"""Reading IP-Adapter files into the nested {"image_proj": ..., "ip_adapter": ...} form.

Two layouts exist (reference-spec §1.3):
* `.safetensors`: one flat namespace, keys prefixed `image_proj.` and `ip_adapter.` (training
  checkpoints use `adapter_modules.` for the latter);
* `.bin`: a `torch.save` of the nested dict. It is read with `weights_only=True`, so a pickle that
  tries to run code is refused before anything in it runs.
"""

import os
import pickle
import re
import zipfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

# training checkpoints (accelerate's save_state) use image_proj_model. and adapter_modules.
PREFIXES = {
    "image_proj.": "image_proj",
    "image_proj_model.": "image_proj",
    "ip_adapter.": "ip_adapter",
    "adapter_modules.": "ip_adapter",
}


class AdapterFileError(ValueError):
    """An IP-Adapter file that cannot be used; the message names the file and says why."""


def read_state_dict(path: str) -> dict:
    """Read a file as {"image_proj": {key: tensor}, "ip_adapter": {key: tensor}}.

    Tensors keep the file's dtypes (mixed fp16/fp32 is fine) and safetensors stay memory-mapped.
    """
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise AdapterFileError(f"IP-Adapter file '{path}' does not exist.")
    if os.path.getsize(path) == 0:
        raise AdapterFileError(f"IP-Adapter file '{name}' is empty (0 bytes). Download it again.")
    if path.lower().endswith((".safetensors", ".sft")):
        flat = _read_safetensors(path, name)
    else:
        flat = _read_torch_pickle(path, name)
    return split_prefixed(flat, name)


def _read_safetensors(path, name):
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFileError(
            f"IP-Adapter file '{name}' is not a readable .safetensors file ({e}). "
            "It is probably truncated or corrupt: download it again."
        ) from None


def _read_torch_pickle(path, name):
    try:
        # mmap needs the zip format of torch>=1.6; the old tar format is read plainly.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        # torch's own text advises weights_only=False, which would run the code: never show it
        wants = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        reason = f"it asks to run {wants.group(1)}" if wants else "it is damaged, or carries more than tensors"
        raise AdapterFileError(
            f"IP-Adapter file '{name}' was refused: it is not a plain tensor file ({reason}). Only tensors are "
            "loaded, never code hidden in a pickle. Download it again, or use the .safetensors version of this model."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise AdapterFileError(
            f"IP-Adapter file '{name}' could not be read as a PyTorch file ({str(e).splitlines()[0]}). "
            "It is probably truncated or corrupt: download it again."
        ) from None


def split_prefixed(data, name: str) -> dict:
    """Turn a loaded object into the nested form, whichever layout the file used.

    Keys with no known prefix are kept under "other", only so that errors can say what the file is.
    """
    if not isinstance(data, dict):
        raise AdapterFileError(
            f"IP-Adapter file '{name}' holds a {type(data).__name__}, not a dictionary of tensors."
        )
    if "image_proj" in data and isinstance(data["image_proj"], dict):
        inner = data.get("ip_adapter", data.get("adapter_modules"))
        if not isinstance(inner, dict):
            found = ", ".join(sorted(map(str, data)))
            raise AdapterFileError(
                f"IP-Adapter file '{name}' has 'image_proj' but no 'ip_adapter' weights (top-level keys: {found}). "
                "The file is incomplete: download it again."
            )
        return {"image_proj": dict(data["image_proj"]), "ip_adapter": dict(inner), "other": {}}
    nested = {"image_proj": {}, "ip_adapter": {}, "other": {}}
    for key, tensor in data.items():
        prefix = next((p for p in PREFIXES if isinstance(key, str) and key.startswith(p)), None)
        if prefix:
            nested[PREFIXES[prefix]][key[len(prefix):]] = tensor
        else:
            nested["other"][key] = tensor
    return nested
