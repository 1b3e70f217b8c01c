"""Stand-in for comfy.ldm.flux (ComfyUI v0.8.0): the FLUX.1 transformer, see model.py."""
