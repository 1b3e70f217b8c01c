"""Beside the real ComfyUI_IPAdapter_plus (cubiq): set CUBIQ_PATH to its checkout to run these.

Either order applies both, as README documents: our Apply IP-Adapter after cubiq's node wraps cubiq's patches;
cubiq's node after ours calls add() on our patches, which accept its adapter (cubiq's own ("middle", 1) key is
never called by ComfyUI, so its middle-block adapter is lost either way).
"""

import asyncio
import os

import pytest
import torch
from comfy_host import boot, build_model
from test_real_host import apply, forward, image_prompt, loaded_adapter, make_inputs, reference_patches
from synthetic import make_checkpoint

CUBIQ_PATH = os.environ.get("CUBIQ_PATH")
pytestmark = pytest.mark.skipif(not CUBIQ_PATH, reason="CUBIQ_PATH is not set: point it at a ComfyUI_IPAdapter_plus checkout")


@pytest.fixture(scope="module")
def cubiq():
    nodes, _, _ = boot()
    if "IPAdapterEmbeds" not in nodes.NODE_CLASS_MAPPINGS:
        assert asyncio.run(nodes.load_custom_node(os.path.abspath(CUBIQ_PATH), ignore=set(nodes.NODE_CLASS_MAPPINGS)))
    return nodes.NODE_CLASS_MAPPINGS["IPAdapterEmbeds"]()


def cubiq_patched(cubiq, model):
    """cubiq's IPAdapter Embeds with a synthetic base adapter narrowed to the 64-channel UNet."""
    state = make_checkpoint("sd15_base", seed=9, dtype=torch.float32, hidden_scale=5)
    g = torch.Generator().manual_seed(4)
    return cubiq.apply_ipadapter(model, state, torch.randn(1, 1024, generator=g), 0.8, "linear", 0.0, 1.0,
                                 neg_embed=torch.zeros(1, 1024))[0]


def test_ours_after_cubiq_wraps_its_patches(cubiq):
    with torch.inference_mode():
        model = build_model("sd15")
        theirs = cubiq_patched(cubiq, model)
        loaded = loaded_adapter("sd15")
        prompt = image_prompt(loaded)
        both = apply(theirs, loaded, prompt, weight=0.7)
        replace = both.model_options["transformer_options"]["patches_replace"]["attn2"]
        wrapped = [p for p in replace.values() if type(getattr(p, "inner", None)).__name__ == "Attn2Replace"]
        assert len(wrapped) == 15  # every cubiq patch ComfyUI calls; ("middle", 1) is never called
        x, sigma, context, _ = make_inputs("sd15")
        got = forward(both, x, sigma, context, (1, 0))
        cubiq_only = forward(theirs, x, sigma, context, (1, 0))
        # reference: cubiq's own patch at each layer plus our image branch, computed by the core
        reference = theirs.clone()
        cubiq_patches = theirs.model_options["transformer_options"]["patches_replace"]["attn2"]
        ours_ref = reference_patches(loaded, prompt, 0.7)
        for site, ref in ours_ref.items():
            inner = cubiq_patches.get(site.patch_key)
            if inner is None:
                reference.set_model_attn2_replace(ref, *site.patch_key)
                continue

            def combined(q, k, v, o, _inner=inner, _ref=ref):
                import ipadapter_core as core
                return _inner(q, k, v, o) + _ref(q, k, v, o) - core.sdpa_attention(q, k, v, o["n_heads"])
            reference.set_model_attn2_replace(combined, *site.patch_key)
        expected = forward(reference, x, sigma, context, (1, 0))
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-5
    assert ((got - cubiq_only).norm() / cubiq_only.norm()).item() > 1e-3


def test_cubiq_after_ours_adds_its_adapter_to_our_patches(cubiq):
    """cubiq calls add() on the patch it finds at its keys; ours accepts it, so both apply, and the model
    cubiq started from is left as it was."""
    with torch.inference_mode():
        model = build_model("sd15")
        loaded = loaded_adapter("sd15")
        ours = apply(model, loaded, image_prompt(loaded))
        ours_options = ours.model_options["transformer_options"]["patches_replace"]["attn2"]
        both = cubiq_patched(cubiq, ours)
        replace = both.model_options["transformer_options"]["patches_replace"]["attn2"]
        kinds = {key: type(p).__name__ for key, p in replace.items()}
        x, sigma, context, _ = make_inputs("sd15")
        got = forward(both, x, sigma, context, (1, 0))
        ours_only = forward(ours, x, sigma, context, (1, 0))
        cubiq_only = forward(cubiq_patched(cubiq, model), x, sigma, context, (1, 0))
    assert sum(1 for k in kinds.values() if k == "IPAttn2Patch") == 16
    assert sum(len(p.added) for p in replace.values() if hasattr(p, "added")) == 15  # cubiq's, at its 15 live keys
    assert all(not p.added for p in ours_options.values())  # the input model of cubiq's node is unchanged
    assert ((got - ours_only).norm() / ours_only.norm()).item() > 1e-3
    assert ((got - cubiq_only).norm() / cubiq_only.norm()).item() > 1e-3
