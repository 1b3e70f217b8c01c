"""Start the real ComfyUI server on 127.0.0.1 with this pack as its only custom node and no models installed.

Everything it writes (models, input, output, user settings) lives in a fresh temporary base directory. The pack
is linked into that directory's custom_nodes/ so ComfyUI loads it with its own custom-node loader.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

PACK_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Settings a returning user has: no first-run template browser over the canvas.
USER_SETTINGS = {"Comfy.TutorialCompleted": True}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`with ComfyServer(comfyui_path) as server:` ... `server.url`; the process is stopped on exit."""

    def __init__(self, comfyui_path, python=sys.executable, other_packs=None):
        self.comfyui_path = os.path.abspath(comfyui_path)
        self.other_packs = other_packs or {}  # custom_nodes folder name -> checkout, linked beside this pack
        self.python = os.path.abspath(python) if os.sep in python else python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.base = tempfile.mkdtemp(prefix="comfy-real-server-")
        os.makedirs(os.path.join(self.base, "custom_nodes"))
        os.symlink(PACK_DIR, os.path.join(self.base, "custom_nodes", "ipadapter-dca"))
        for name, path in self.other_packs.items():
            os.symlink(os.path.abspath(path), os.path.join(self.base, "custom_nodes", name))
        settings_dir = os.path.join(self.base, "user", "default")
        os.makedirs(settings_dir)
        with open(os.path.join(settings_dir, "comfy.settings.json"), "w") as f:
            json.dump(USER_SETTINGS, f)
        self.log_path = os.path.join(self.base, "server.log")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", self.base, "--disable-auto-launch"],
            cwd=self.comfyui_path, stdout=self._log, stderr=subprocess.STDOUT,
            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/api/system_stats", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"ComfyUI did not answer on {self.url} within 180 s:\n{self.log()}")

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def get_json(self, route):
        with urllib.request.urlopen(self.url + route, timeout=30) as r:
            return json.loads(r.read())

    def post_prompt(self, prompt):
        """POST /api/prompt as the frontend's Queue button does; returns (HTTP status, JSON answer)."""
        body = json.dumps({"prompt": prompt, "client_id": "browser-check"}).encode()
        request = urllib.request.Request(self.url + "/api/prompt", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
