"""No leaks: repeated applies leave the model and shared state as they were, repeated runs keep memory flat."""

import copy
import ctypes
import gc
import os

import psutil
import torch
from safetensors.torch import save_file
from standin_host import ClipVisionModel, folder_paths, forward, load_pack, model_patcher, pack_module
from synthetic import flatten, make_checkpoint


def rss():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS, so only live memory counts
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def test_a_thousand_applies_leave_no_trace():
    from standin_host import loaded_adapter

    apply = load_pack().NODE_CLASS_MAPPINGS["ApplyIPAdapter"]().apply
    Entry = pack_module("nodes.patch").ImagePromptEntry
    model = model_patcher("sd15")
    loaded = loaded_adapter("sd15_plus")
    prompt = pack_module("nodes.encode").make_prompt(loaded, torch.rand(1, 257, 1280), torch.rand(1, 257, 1280),
                                                     torch.ones(1))
    options = copy.deepcopy(model.model_options)
    weights = {k: v.clone() for k, v in loaded.adapter.state_dict().items()}
    unet = {k: v.clone() for k, v in model.model.state_dict().items()}
    x, sigma, context = torch.randn(2, 4, 8, 8), torch.tensor([2.0]), torch.randn(2, 77, 768)
    gc.collect()
    alive = len([o for o in gc.get_objects() if isinstance(o, Entry)])  # other tests may still hold theirs
    with torch.inference_mode():
        for i in range(1000):
            (patched,) = apply(model, loaded, prompt, 0.5 + (i % 3) * 0.1, 0.0, 1.0)
            if i % 250 == 0:
                forward(patched, x, sigma, context, (1, 0))
            del patched
    gc.collect()
    assert model.model_options == options
    assert len([o for o in gc.get_objects() if isinstance(o, Entry)]) == alive  # every patch set we made was freed
    assert all(torch.equal(v, weights[k]) for k, v in loaded.adapter.state_dict().items())
    assert all(torch.equal(v, unet[k]) for k, v in model.model.state_dict().items())


def test_memory_stays_flat_over_200_runs_of_a_workflow():
    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    load, encode, apply = nodes["LoadIPAdapter"]().load, nodes["EncodeImagePrompt"]().encode, nodes["ApplyIPAdapter"]().apply
    folder = os.path.join(folder_paths.models_dir, "ipadapter")
    os.makedirs(folder, exist_ok=True)
    save_file(flatten(make_checkpoint("sd15_base")), os.path.join(folder, "leak-check.safetensors"))
    model, vit_h = model_patcher("sd15"), ClipVisionModel("vit-h")
    from standin_host import loaded_adapter

    narrow = loaded_adapter("sd15_base")  # the tiny UNet needs the narrowed K/V; the file exercises the loader
    image = torch.rand(2, 96, 128, 3)
    x, sigma, context = torch.randn(2, 4, 8, 8), torch.tensor([2.0]), torch.randn(2, 77, 768)

    def run():
        (from_file,) = load("leak-check.safetensors")
        encode(from_file, vit_h, image, "pad")
        (prompt,) = encode(narrow, vit_h, image, "center crop")
        (patched,) = apply(model, narrow, prompt, 0.8, 0.0, 1.0, torch.ones(64, 64))
        forward(patched, x, sigma, context, (1, 0))

    with torch.inference_mode():
        for _ in range(20):
            run()
        start = rss()
        for _ in range(180):
            run()
        grown = rss() - start
    assert grown < 16 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 180 runs"
