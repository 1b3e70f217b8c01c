"""A stand-in for ComfyUI's web server, for the browser check in CI: it serves the real frontend package
(`comfyui-frontend-package`, the version ComfyUI v0.8.0 pins) and answers the routes the frontend calls with
the responses recorded from the real server (tests/fixtures/frontend_recording.json, written by
tests/integration/test_frontend_real.py).

The recording holds the node definitions (`/api/object_info`) of the core nodes the workflows use and of every
node of this pack, so the frontend builds exactly the widgets the real server would make it build. A route the
recording does not hold answers 404 and is listed in `unrecorded`, so a frontend that starts asking for
something new is noticed.
"""

import asyncio
import json
import os
import threading

from aiohttp import web

# image previews of LoadImage nodes (with a random query): the stand-in has no images and answers 404
UNRECORDED = {"/api/view"}
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "frontend_recording.json")
WEB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web")  # the pack's extension files
CONVERT_ROUTE = "/ipadapter_dca/convert"
ADAPTER_ROUTE = "/ipadapter_dca/adapter"  # answered by the pack's own handlers, never recorded


def own_extension_file(path):
    """The pack's web/ file a /extensions/<pack folder>/<file> request asks for, or None."""
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "extensions" and parts[2] != "core":
        file = os.path.join(WEB, parts[3])
        return file if os.path.isfile(file) else None
    return None


def frontend_static_dir():
    import comfyui_frontend_package

    return os.path.join(os.path.dirname(comfyui_frontend_package.__file__), "static")


def frontend_version():
    from importlib.metadata import version

    return version("comfyui-frontend-package")


def load_recording(path=FIXTURE):
    with open(path) as f:
        return json.load(f)


class StandinServer:
    """`with StandinServer() as server:` ... `server.url`; runs an aiohttp server on 127.0.0.1 in a thread."""

    def __init__(self, recording=None):
        self.recording = recording or load_recording()
        self.static = frontend_static_dir()
        self.unrecorded = []
        self.settings = dict(self.recording["routes"].get("/api/settings", {}).get("body") or {})

    async def _answer(self, request):
        key = request.path_qs
        if request.method == "GET":
            if request.path == "/":
                return web.FileResponse(os.path.join(self.static, "index.html"))
            if request.path == "/api/settings":
                return web.json_response(self.settings)
            entry = self.recording["routes"].get(key)
            if entry is not None:
                if entry.get("body") is None:
                    return web.Response(status=entry["status"])
                return web.json_response(entry["body"], status=entry["status"])
            file = os.path.normpath(os.path.join(self.static, request.path.lstrip("/")))
            if file.startswith(self.static + os.sep) and os.path.isfile(file):
                return web.FileResponse(file)
            if own_extension_file(request.path):
                return web.FileResponse(own_extension_file(request.path))
            if request.path in (ADAPTER_ROUTE, "/api" + ADAPTER_ROUTE):
                return await self.pack_route("adapter", request)
        elif request.method == "POST" and request.path.startswith("/api/settings/"):
            self.settings[request.path.rsplit("/", 1)[1]] = await request.json()
            return web.json_response({})
        elif request.method == "POST" and request.path in (CONVERT_ROUTE, "/api" + CONVERT_ROUTE):  # ComfyUI serves both
            return await self.pack_route("convert", request)
        if request.path not in UNRECORDED:
            self.unrecorded.append(f"{request.method} {key}")
        return web.Response(status=404)

    @staticmethod
    async def pack_route(handler, request):
        """The pack's own route handler, run against the stand-in host's models folders."""
        from standin_host import pack_module

        return await getattr(pack_module("nodes.routes"), handler)(request)

    async def _websocket(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                        "sid": "standin"}})
        async for _ in ws:
            pass
        return ws

    def __enter__(self):
        started = threading.Event()
        self.loop = asyncio.new_event_loop()

        async def start():
            app = web.Application()
            app.router.add_get("/ws", self._websocket)
            app.router.add_route("*", "/{tail:.*}", self._answer)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            started.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not started.wait(30):
            raise RuntimeError("the stand-in frontend server did not start")
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def recording_from_responses(responses, base_url, keep_classes, comfyui_version):
    """The fixture from what the frontend asked a real server for: every same-origin GET that is not a file of
    the frontend package, with `/api/object_info` cut down to `keep_classes` and the machine's details out
    of `/api/system_stats`."""
    from urllib.parse import urlparse

    static = frontend_static_dir()
    routes = {}
    for response in responses:
        url = urlparse(response.url)
        if response.request.method != "GET" or not response.url.startswith(base_url) or url.path == "/":
            continue
        if os.path.isfile(os.path.join(static, url.path.lstrip("/"))) or url.path in UNRECORDED:
            continue
        if own_extension_file(url.path):  # the pack's own scripts: served from web/, not recorded
            continue
        if url.path.removeprefix("/api") in (CONVERT_ROUTE, ADAPTER_ROUTE):  # the pack's routes: run, not recorded
            continue
        key = url.path + (f"?{url.query}" if url.query else "")
        body = None
        if response.status == 200:
            body = response.json()
        if url.path == "/api/object_info":
            body = {name: body[name] for name in sorted(keep_classes) if name in body}
        elif url.path == "/api/system_stats":
            body["system"].update(argv=["main.py", "--cpu"], ram_total=0, ram_free=0)
            for device in body.get("devices", []):
                device.update(vram_total=0, vram_free=0, torch_vram_total=0, torch_vram_free=0)
        routes[key] = {"status": response.status, "body": body}
    return {"_comfyui_version": comfyui_version, "_frontend_version": frontend_version(),
            "routes": dict(sorted(routes.items()))}


def dump_recording(recording, path=FIXTURE):
    with open(path, "w") as f:
        json.dump(recording, f, indent=1, sort_keys=True)
        f.write("\n")
