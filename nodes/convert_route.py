"""POST /ipadapter_dca/convert: the canvas command's converter (web/convert_plus.js sends the open graph here).

The converter itself is ../converter, shared with the command line; this only adds what the server knows: the
files in models/ipadapter, so unified-loader presets resolve to the user's own files.
"""

import json

import folder_paths

from ..converter import WorkflowError, convert_workflow
from .common import logger

ROUTE = "/ipadapter_dca/convert"


async def convert(request):
    from aiohttp import web  # ComfyUI's server is aiohttp; imported here so the pack loads without a server

    try:
        body = await request.json()
        workflow = body["workflow"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return web.json_response({"error": "expected {\"workflow\": <the graph>}"}, status=400)
    try:
        converted, report = convert_workflow(workflow, {"ipadapter": folder_paths.get_filename_list("ipadapter")})
    except WorkflowError as e:
        return web.json_response({"error": str(e)}, status=400)
    logger.info("converted a ComfyUI_IPAdapter_plus workflow: %d node(s) converted, %d left",
                len(report.converted), len(report.left))
    return web.json_response({"workflow": converted, "report": report.as_dict()})


def register_routes():
    """Add the route to ComfyUI's server; nothing to do where there is none (tests, scripts)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        instance.routes.post(ROUTE)(convert)
