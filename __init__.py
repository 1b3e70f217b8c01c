"""IP-Adapter nodes for ComfyUI. ComfyUI imports this file; it registers the nodes, the frontend extension in web/
(the canvas command that converts ComfyUI_IPAdapter_plus workflows; new Apply nodes taking the adapter's reference
weight) and its server routes."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.routes import register_routes

WEB_DIRECTORY = "./web"
register_routes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
