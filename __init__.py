"""IP-Adapter nodes for ComfyUI. ComfyUI imports this file; it registers the nodes, the frontend extension in web/
(the canvas command that converts ComfyUI_IPAdapter_plus workflows) and its server route."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.convert_route import register_routes

WEB_DIRECTORY = "./web"
register_routes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
