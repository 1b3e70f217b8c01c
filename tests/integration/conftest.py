"""The real-ComfyUI suite: runs when COMFYUI_PATH points at a ComfyUI checkout, skips with the reason otherwise.

Run it in its own pytest process with a Python that has ComfyUI's requirements (torch, torchvision ...):
    COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests/integration
"""

import os
import sys

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def pytest_collection_modifyitems(config, items):
    reason = None
    if not COMFYUI_PATH:
        reason = "COMFYUI_PATH is not set: point it at a ComfyUI checkout to run the real-host suite"
    elif not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_patcher.py")):
        reason = f"COMFYUI_PATH={COMFYUI_PATH} is not a ComfyUI checkout (no comfy/model_patcher.py)"
    elif "comfy" in sys.modules and not getattr(sys.modules["comfy"], "__file__", "").startswith(os.path.abspath(COMFYUI_PATH)):
        reason = "another 'comfy' (the stand-in host) is already imported: run tests/integration in its own pytest process"
    if reason:
        for item in items:
            if "integration" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))
