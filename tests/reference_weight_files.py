"""One small synthetic file per kind of adapter whose reference weight differs, for the route and browser checks of
web/reference_weight.js; and the weight each one's reference uses (dit-families.md §1.4, §2.4, §3.5; the authors'
IPAdapter.generate(scale=1.0))."""

import torch
from safetensors.torch import save_file
from synthetic import flatten, make_checkpoint
from synthetic_flux import instantx_state_dict, xlabs_state_dict
from synthetic_sd3 import sd3_state_dict

REFERENCE_WEIGHTS = {"sd15_base.safetensors": 1.0, "xlabs_v1.safetensors": 1.0, "flux_instantx.bin": 0.7,
                     "sd35_large.bin": 0.5}
BROKEN = "broken.safetensors"  # not an adapter: the route says why, the canvas leaves the weight alone


def write_family_files(folder):
    save_file(flatten(make_checkpoint("sd15_base")), f"{folder}/sd15_base.safetensors")
    save_file(xlabs_state_dict(), f"{folder}/xlabs_v1.safetensors")
    torch.save(instantx_state_dict(), f"{folder}/flux_instantx.bin")
    torch.save(sd3_state_dict(), f"{folder}/sd35_large.bin")
    with open(f"{folder}/{BROKEN}", "wb") as f:
        f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    return dict(REFERENCE_WEIGHTS)


# what frontend_browser.reference_weights_as_a_user_sees_them must report, with the stand-in and the real server
STEPS = {
    "new node": 1.0,
    "connected to SD3.5": 0.5,
    "file changed to SD1.5": 1.0,
    "file changed to InstantX Flux": 0.7,
    "set by the user, then the file changed": 0.8,
    "asked after the user set it": 0,
    "advanced node connected to SD3.5": 0.5,
    "connected through a Reroute": 0.5,
    "a Reroute linked to the loader last": 0.5,
    "connected to a file that is not an adapter": 1.0,
    "asked when the workflow was opened": 0,
    "opened from a workflow, then the file changed": [0.8, 0.5, 0.5, 0.5, 1.0],
}
CANVAS_FILES = {"sd35": "sd35_large.bin", "sd15": "sd15_base.safetensors", "instantx": "flux_instantx.bin",
                "broken": BROKEN}
