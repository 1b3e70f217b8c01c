"""Animation under ComfyUI's own context windows: each frame keeps its own reference image, weight and mask.

8 frames, 8 references (one per frame), windows of 4 with overlap 2 from ComfyUI's Context Windows (Manual)
node. The same sampling is then done by hand: for each of the windows ComfyUI chose, the frames of that window
are run alone through a model patched with just those frames' references, and the results are fused as the
node's 'flat' fuse method does (averaged where windows overlap). Both must give the same latents.
"""

import os
import re

import pytest
import torch
from comfy_host import COMFYUI_PATH, boot, build_model, pack_module
from test_real_host import loaded_adapter

FRAMES, WINDOW, OVERLAP = 8, 4, 2
WEIGHTS = [1.0, 0.9, 0.8, 0.7, 1.2, 1.1, 0.6, 0.5]



def skip_on_0_3():
    with open(os.path.join(COMFYUI_PATH, "comfyui_version.py")) as f:
        version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)
    if version.startswith("0.3."):
        pytest.skip("ComfyUI 0.3.x context windows fail on image batches (dim 0) before any model call: set_step "
                    "compares the sigmas with the whole per-frame timestep tensor")


def per_frame_prompt(loaded, indices, features, uncond):
    return pack_module("nodes.encode").make_prompt(loaded, features[indices], uncond, torch.ones(len(indices)))


def apply(model, loaded, prompt, weights, masks):
    node = pack_module("nodes.apply").ApplyIPAdapterAdvanced()
    return node.apply(model, loaded, prompt, 0.8, 0.0, 1.0, per_frame=True, attn_mask=masks,
                      frame_weights=", ".join(str(w) for w in weights))[0]


def sample(model, positive, negative, latent):
    import comfy.sample

    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    return comfy.sample.sample(model, noise, 3, 4.0, "euler", "normal", positive, negative, latent, disable_pbar=True,
                               seed=7)


def test_each_frame_keeps_its_reference_under_core_context_windows():
    skip_on_0_3()
    with torch.inference_mode():
        boot()
        import comfy.samplers
        from comfy_extras.nodes_context_windows import ContextWindowsManualNode

        model = build_model("sd15")
        loaded = loaded_adapter("sd15")
        g = torch.Generator().manual_seed(3)
        features = torch.randn(FRAMES, 257, 1280, generator=g)
        uncond = torch.randn(1, 257, 1280, generator=g)
        masks = torch.rand(FRAMES, 96, 160, generator=g) + 0.05
        positive = [[torch.randn(1, 77, 768, generator=g), {}]]
        negative = [[torch.randn(1, 77, 768, generator=g), {}]]
        latent = torch.zeros(FRAMES, 4, 12, 20)

        prompt = per_frame_prompt(loaded, list(range(FRAMES)), features, uncond)
        windowed = ContextWindowsManualNode.execute(
            apply(model, loaded, prompt, WEIGHTS, masks), context_length=WINDOW, context_overlap=OVERLAP,
            context_schedule="standard_static", context_stride=1, closed_loop=False, fuse_method="flat", dim=0,
            freenoise=False).result[0]
        handler = windowed.model_options["context_handler"]
        seen = []
        by_comfyui = sample(windowed, positive, negative, latent)

        def by_hand(args):
            """One step: each window's frames alone, with only their own references; then the flat average."""
            x, sigma, conds = args["input"], args["sigma"], args["conds"]
            windows = [w.index_list for w in handler.get_context_windows(args["model"], x, args["model_options"])]
            seen.append(windows)
            out = [torch.zeros_like(x) for _ in conds]
            count = torch.zeros(x.shape[0], 1, 1, 1)
            for frames in windows:
                alone = apply(model, loaded, per_frame_prompt(loaded, frames, features, uncond),
                              [WEIGHTS[f] for f in frames], masks[frames])
                options = alone.model_options
                results = comfy.samplers.calc_cond_batch(args["model"], conds, x[frames], sigma[frames], options)
                for total, result in zip(out, results):
                    total[frames] += result
                count[frames] += 1
            return [total / count for total in out]

        manual = model.clone()
        manual.model_options["sampler_calc_cond_batch_function"] = by_hand
        by_hand_result = sample(manual, positive, negative, latent)

    assert seen and all(w == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]] for w in seen)
    assert ((by_comfyui - by_hand_result).norm() / by_hand_result.norm()).item() < 1e-5
    # and the references matter: the same windows with every frame steered by frame 0's image differ
    assert not torch.allclose(by_comfyui, sample(ContextWindowsManualNode.execute(
        apply(model, loaded, per_frame_prompt(loaded, [0] * FRAMES, features, uncond), WEIGHTS, masks),
        context_length=WINDOW, context_overlap=OVERLAP, context_schedule="standard_static", context_stride=1,
        closed_loop=False, fuse_method="flat", dim=0, freenoise=False).result[0], positive, negative, latent),
        atol=1e-4)
