"""Stand-in for comfy.patcher_extension (v0.8.0): the wrapper registry and executor, same names and layout.

Wrappers live in a dict `{wrapper_type: {key: [wrapper, ...]}}`, in `transformer_options["wrappers"]` (or in a
ModelPatcher's `wrappers`, which the sampler merges into `transformer_options["wrappers"]` before sampling,
see `merge_nested_dicts`). A wrapper is called `wrapper(executor, *args, **kwargs)` and continues the chain with
`executor(*args, **kwargs)`; the last link is the wrapped function itself.
"""

from __future__ import annotations

from typing import Callable


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    PREPARE_SAMPLING = "prepare_sampling"
    SAMPLER_SAMPLE = "sampler_sample"
    PREDICT_NOISE = "predict_noise"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"

    @classmethod
    def init_wrappers(cls) -> dict:
        return {}


def _options(transformer_options, is_model_options, create):
    if not is_model_options:
        return transformer_options
    if create:
        return transformer_options.setdefault("transformer_options", {})
    return transformer_options.get("transformer_options", {})


def add_wrapper(wrapper_type: str, wrapper: Callable, transformer_options: dict, is_model_options=False):
    add_wrapper_with_key(wrapper_type, None, wrapper, transformer_options, is_model_options)


def add_wrapper_with_key(wrapper_type: str, key: str, wrapper: Callable, transformer_options: dict, is_model_options=False):
    registry = _options(transformer_options, is_model_options, True).setdefault("wrappers", {})
    registry.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)


def get_wrappers_with_key(wrapper_type: str, key: str, transformer_options: dict, is_model_options=False):
    registry = _options(transformer_options, is_model_options, False).get("wrappers", {})
    return list(registry.get(wrapper_type, {}).get(key, []))


def get_all_wrappers(wrapper_type: str, transformer_options: dict, is_model_options=False):
    registry = _options(transformer_options, is_model_options, False).get("wrappers", {})
    found = []
    for wrappers in registry.get(wrapper_type, {}).values():  # keys in insertion order, each key's list in order
        found.extend(wrappers)
    return found


class WrapperExecutor:
    """One link of a wrapper chain around `original`; `class_obj` is the instance a wrapped method belongs to."""

    def __init__(self, original: Callable, class_obj: object, wrappers: list, idx: int):
        self.original = original
        self.class_obj = class_obj
        self.wrappers = list(wrappers)
        self.idx = idx
        self.is_last = idx == len(wrappers)

    def __call__(self, *args, **kwargs):
        """What a wrapper calls to continue: the next wrapper, or the original after the last one."""
        return self._create_next_executor().execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        """Starts the chain (the host calls this; a wrapper calls the executor instead)."""
        args, kwargs = list(args), dict(kwargs)
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    def _create_next_executor(self) -> "WrapperExecutor":
        idx = self.idx + 1
        if idx > len(self.wrappers):
            raise Exception("Wrapper idx exceeded available wrappers; something went very wrong.")
        if self.class_obj is None:
            return WrapperExecutor.new_executor(self.original, self.wrappers, idx)
        return WrapperExecutor.new_class_executor(self.original, self.class_obj, self.wrappers, idx)

    @classmethod
    def new_executor(cls, original: Callable, wrappers: list, idx=0):
        return cls(original, class_obj=None, wrappers=wrappers, idx=idx)

    @classmethod
    def new_class_executor(cls, original: Callable, class_obj: object, wrappers: list, idx=0):
        return cls(original, class_obj, wrappers, idx=idx)


def copy_nested_dicts(input_dict: dict):
    out = dict(input_dict)
    for key, value in input_dict.items():
        if isinstance(value, dict):
            out[key] = copy_nested_dicts(value)
        elif isinstance(value, list):
            out[key] = list(value)
    return out


def merge_nested_dicts(dict1: dict, dict2: dict, copy_dict1=True):
    """dict2 merged into dict1 (or a copy of it): nested dicts merged, lists extended, other values replaced."""
    merged = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for key, value in dict2.items():
        if isinstance(value, dict):
            merged[key] = merge_nested_dicts(merged.setdefault(key, {}), value)
        elif isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value
    return merged
