"""The pack's two server routes.

POST /ipadapter_dca/convert: the canvas command's converter (web/convert_plus.js sends the open graph here). The
converter itself is ../converter, shared with the command line; this only adds what the server knows: the files in
models/ipadapter, so unified-loader presets resolve to the user's own files.

GET /ipadapter_dca/adapter?file=NAME: what a file in models/ipadapter is and the weight its reference uses, read
from its content; web/reference_weight.js gives a new Apply node that weight.
"""

import asyncio
import json
import os

import folder_paths

from ..converter import WorkflowError, convert_workflow
from ..ipadapter_core import AdapterFileError, load_adapter
from .common import logger
from .loader import FOLDER

CONVERT_ROUTE = "/ipadapter_dca/convert"
ADAPTER_ROUTE = "/ipadapter_dca/adapter"


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


_described: dict = {}  # full path -> (mtime, answer); the adapter itself is not kept (a run loads it)


def describe_adapter_file(path: str) -> dict:
    mtime = os.path.getmtime(path)
    hit = _described.get(path)
    if not hit or hit[0] != mtime:
        spec = load_adapter(path).spec
        hit = (mtime, {"label": spec.label, "weight": spec.reference_weight})
        _described[path] = hit
    return hit[1]


async def adapter(request):
    from aiohttp import web

    name = request.query.get("file", "")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        return web.json_response({"error": f"no file '{name}' in models/{FOLDER}"}, status=404)
    try:  # reading a file takes a moment: not on the server's event loop
        answer = await asyncio.get_running_loop().run_in_executor(None, describe_adapter_file, path)
    except AdapterFileError as e:
        return web.json_response({"error": str(e)}, status=400)
    return web.json_response({"file": name, **answer})


def register_routes():
    """Add the routes to ComfyUI's server; nothing to do where there is none (tests, scripts)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        instance.routes.post(CONVERT_ROUTE)(convert)
        instance.routes.get(ADAPTER_ROUTE)(adapter)
