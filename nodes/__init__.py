"""ComfyUI nodes of the pack: thin glue between ComfyUI's objects and ipadapter_core."""

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
