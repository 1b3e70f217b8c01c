"""Stand-in for comfy.ldm.modules.diffusionmodules (ComfyUI v0.8.0): only the MMDiT (SD3.5-Large), see mmdit.py."""
