"""Drive ComfyUI's real frontend in headless Chromium: drop a workflow file on the page, then ask the frontend
what it made of it.

The browser is Debian's `chromium` driven by Playwright from PyPI (never `playwright install`: nothing is
downloaded). The page is whatever server `base_url` points at: the real ComfyUI, or the stand-in in
frontend_server.py that serves the same frontend package with recorded answers.

Everything this module reports is read from the frontend's own objects (`app.graph`, `app.graphToPrompt()`,
`LiteGraph.registered_node_types`, each node's `boundingRect` and `widgets`); nothing here models the frontend.
"""

import json
import os
import shutil

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# inputs that name a model file: the note must list each, and with no models installed validation reports each
MODEL_FILE_INPUTS = {"ckpt_name", "ipadapter_file", "clip_name", "lora_name", "control_net_name", "unet_name",
                     "clip_name1", "clip_name2", "clip_name3", "vae_name"}

# Read after a drop: what the frontend shows for every node, and the prompt it would queue.
INSPECT_JS = """
async () => {
  const app = window.app, graph = app.graph;
  const nodes = graph._nodes.map(n => ({
    id: n.id, type: n.type, title: n.title,
    registered: n.type in LiteGraph.registered_node_types,
    has_errors: !!n.has_errors,
    box: Array.from(n.boundingRect),
    size: Array.from(n.size), min_size: Array.from(n.computeSize()),
    text: n.type === 'Note' || n.type === 'MarkdownNote' ? String(n.widgets?.[0]?.value ?? '') : null,
    widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type, value: w.value,
                                          serialize: w.serialize !== false && w.options?.serialize !== false})),
  }));
  const groups = graph._groups.map(g => ({title: g.title, box: Array.from(g._bounding)}));
  const prompt = await app.graphToPrompt();
  const dialogs = Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText.slice(0, 500));
  return {nodes, groups, output: prompt.output, dialogs};
}
"""

# A node of each type, as the frontend builds it when a user adds one: its widgets in order (the order
# `widgets_values` is read and written in) and the size it computes for itself.
NODE_LAYOUT_JS = """
(types) => {
  const out = {};
  for (const type of types) {
    const node = LiteGraph.createNode(type);
    if (!node) { out[type] = null; continue; }
    const serialized = node.serialize().widgets_values || [];
    const kept = (node.widgets || []).filter(w => w.serialize !== false);
    if (kept.length !== serialized.length) throw new Error(`${type}: ${kept.length} widgets, ${serialized.length} values`);
    out[type] = {
      widgets_values: kept.map(w => w.name),
      defaults: serialized,
      size: Array.from(node.computeSize()).map(Math.ceil),
    };
  }
  return out;
}
"""

DROP_JS = """
([name, text]) => {
  const file = new File([text], name, {type: 'application/json'});
  const data = new DataTransfer();
  data.items.add(file);
  const canvas = document.querySelector('#graph-canvas') || document.body;
  const rect = canvas.getBoundingClientRect();
  const init = {dataTransfer: data, bubbles: true, cancelable: true,
                clientX: rect.left + rect.width / 2, clientY: rect.top + rect.height / 2};
  canvas.dispatchEvent(new DragEvent('dragenter', init));
  canvas.dispatchEvent(new DragEvent('dragover', init));
  canvas.dispatchEvent(new DragEvent('drop', init));
}
"""


def chromium_path():
    """Debian's Chromium, or None when it is not installed."""
    for path in CHROMIUM_CANDIDATES:
        if os.path.exists(path):
            return path
    return shutil.which("chromium")


class Frontend:
    """One headless Chromium page on a ComfyUI frontend. Use as a context manager."""

    def __init__(self, base_url, viewport=(1920, 1080)):
        self.base_url = base_url.rstrip("/")
        self.viewport = viewport
        self.console_errors = []
        self.requests = []

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        self.page = self.browser.new_page(viewport={"width": self.viewport[0], "height": self.viewport[1]})
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("response", lambda r: self.requests.append(r))
        # the page talks to the server under test only: anything else (fonts, telemetry) is refused here
        own = self.base_url
        self.page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(own) else route.abort())
        return self

    def __exit__(self, *exc):
        self.browser.close()
        self._pw.stop()

    def open(self, timeout_ms=60000):
        """Load the page and wait until the app has registered the backend's nodes and shows its graph."""
        self.page.goto(self.base_url + "/", wait_until="load", timeout=timeout_ms)
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.LiteGraph"
            " && Object.keys(LiteGraph.registered_node_types).length > 0"
            " && !document.querySelector('.p-progressspinner')",
            timeout=timeout_ms)
        self.page.wait_for_timeout(500)

    def close_dialogs(self):
        """Close any dialog open on the page (the missing-nodes one, say), as a user would: Escape."""
        for _ in range(3):
            if not self.page.query_selector(".p-dialog"):
                break
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(200)

    def clear(self):
        """Close any dialog a previous workflow opened and empty the canvas."""
        self.close_dialogs()
        self.page.evaluate("() => window.app.graph.clear()")

    def drop_workflow(self, path, timeout_ms=30000):
        """Drop a workflow file on the canvas as a drag and drop from the desktop does; wait until it is loaded."""
        with open(path) as f:
            text = f.read()
        expected = len(json.loads(text)["nodes"])
        self.clear()
        self.page.evaluate(DROP_JS, [os.path.basename(path), text])
        self.page.wait_for_function(f"() => window.app.graph._nodes.length === {expected}", timeout=timeout_ms)
        self.page.wait_for_timeout(300)  # let the canvas draw once with the loaded graph
        self.page.evaluate("() => window.app.canvas.draw(true, true)")

    def inspect(self):
        return self.page.evaluate(INSPECT_JS)

    def node_layouts(self, types):
        return self.page.evaluate(NODE_LAYOUT_JS, list(types))

    def fit_view(self, margin=90):
        """Zoom and pan the canvas so the whole graph is in view, clear of the side bar and the Run button."""
        self.page.evaluate("""(margin) => {
          const c = window.app.canvas, g = window.app.graph;
          const boxes = g._nodes.map(n => n.boundingRect).concat(g._groups.map(gr => gr._bounding));
          const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
          const x1 = Math.max(...boxes.map(b => b[0] + b[2])), y1 = Math.max(...boxes.map(b => b[1] + b[3]));
          const rect = c.canvas.getBoundingClientRect();
          const scale = Math.min((rect.width - 2 * margin) / (x1 - x0), (rect.height - 2 * margin) / (y1 - y0), 1.2);
          c.ds.scale = scale;
          c.ds.offset = [margin / scale - x0, margin / scale - y0];
          c.setDirty(true, true); c.draw(true, true);
        }""", margin)

    def screenshot(self, path):
        self.fit_view()
        self.page.wait_for_timeout(200)
        self.page.screenshot(path=path)


CANVAS_COMMAND_JS = """
async ([label, command]) => {
  const app = window.app;
  const registered = app.extensionManager.command.commands.some(c => c.id === command);
  const item = app.collectCanvasMenuItems(app.canvas).find(i => i && i.content === label);
  if (!item) return {registered, found: false};
  await item.callback();
  return {registered, found: true};
}
"""


def run_canvas_command(frontend, label, command, done_js, timeout_ms=30000):
    """Pick `label` from the canvas's right-click menu (the items extensions add) and wait until `done_js` holds;
    {registered: the command is in the command palette, found: the menu item exists}."""
    frontend.close_dialogs()  # a dialog left open by the load (missing nodes) first
    result = frontend.page.evaluate(CANVAS_COMMAND_JS, [label, command])
    if result["found"]:
        frontend.page.wait_for_function(done_js, timeout=timeout_ms)
        frontend.page.wait_for_timeout(300)
    return result


# Canvas edits as a user makes them: a node added from the menu, a link dragged, a widget set (its callback runs).
ADD_NODE_JS = """([type, x, y]) => {
  const node = LiteGraph.createNode(type); node.pos = [x, y]; window.app.graph.add(node); return node.id;
}"""
CONNECT_JS = """([from, slot, to, input]) => {
  const graph = window.app.graph, target = graph.getNodeById(to);
  graph.getNodeById(from).connect(slot, target, typeof input === "number" ? input : target.findInputSlot(input));
}"""
SET_WIDGET_JS = """([id, name, value]) => {
  const node = window.app.graph.getNodeById(id);
  node.widgets.find(w => w.name === name).setValue(value, {e: undefined, node, canvas: window.app.canvas});
}"""
WIDGET_JS = "([id, name]) => window.app.graph.getNodeById(id).widgets.find(w => w.name === name).value"
ADAPTER_ROUTE = "/ipadapter_dca/adapter"


def reference_weights_as_a_user_sees_them(frontend, files):
    """What web/reference_weight.js does to the weight of Apply nodes while a user builds a graph, step by step:
    {step: weight shown}. `files` names the models/ipadapter files {"sd35", "sd15", "instantx", "broken"}."""
    page, seen = frontend.page, {}
    frontend.clear()

    def add(kind, x, y=100):
        return page.evaluate(ADD_NODE_JS, [kind, x, y])

    def asking(action):
        """Run `action`, which must make the canvas ask the route once; wait for the answer and its effect."""
        with page.expect_response(lambda r: ADAPTER_ROUTE in r.url, timeout=30000):
            action()
        page.wait_for_timeout(150)

    def weight(node):
        return page.evaluate(WIDGET_JS, [node, "weight"])

    loader, apply = add("LoadIPAdapter", 50), add("ApplyIPAdapter", 500)
    page.evaluate(SET_WIDGET_JS, [loader, "ipadapter_file", files["sd35"]])
    seen["new node"] = weight(apply)
    asking(lambda: page.evaluate(CONNECT_JS, [loader, 0, apply, "ipadapter"]))
    seen["connected to SD3.5"] = weight(apply)
    asking(lambda: page.evaluate(SET_WIDGET_JS, [loader, "ipadapter_file", files["sd15"]]))
    seen["file changed to SD1.5"] = weight(apply)
    asking(lambda: page.evaluate(SET_WIDGET_JS, [loader, "ipadapter_file", files["instantx"]]))
    seen["file changed to InstantX Flux"] = weight(apply)
    page.evaluate(SET_WIDGET_JS, [apply, "weight", 0.8])
    asked = sum(ADAPTER_ROUTE in r.url for r in frontend.requests)
    page.evaluate(SET_WIDGET_JS, [loader, "ipadapter_file", files["sd35"]])
    page.wait_for_timeout(500)
    seen["set by the user, then the file changed"] = weight(apply)
    seen["asked after the user set it"] = sum(ADAPTER_ROUTE in r.url for r in frontend.requests) - asked
    advanced, reroute, through = add("ApplyIPAdapterAdvanced", 500, 400), add("Reroute", 300, 700), add("ApplyIPAdapter", 500, 700)
    asking(lambda: page.evaluate(CONNECT_JS, [loader, 0, advanced, "ipadapter"]))
    seen["advanced node connected to SD3.5"] = weight(advanced)
    page.evaluate(CONNECT_JS, [loader, 0, reroute, 0])  # a Reroute has one unnamed input
    asking(lambda: page.evaluate(CONNECT_JS, [reroute, 0, through, "ipadapter"]))
    seen["connected through a Reroute"] = weight(through)
    late_reroute, late = add("Reroute", 300, 850), add("ApplyIPAdapter", 500, 850)
    page.evaluate(CONNECT_JS, [late_reroute, 0, late, "ipadapter"])
    asking(lambda: page.evaluate(CONNECT_JS, [loader, 0, late_reroute, 0]))
    seen["a Reroute linked to the loader last"] = weight(late)
    broken, fourth = add("LoadIPAdapter", 50, 1000), add("ApplyIPAdapter", 500, 1000)
    page.evaluate(SET_WIDGET_JS, [broken, "ipadapter_file", files["broken"]])
    asking(lambda: page.evaluate(CONNECT_JS, [broken, 0, fourth, "ipadapter"]))
    seen["connected to a file that is not an adapter"] = weight(fourth)
    # the graph saved and opened again: every weight is the one saved, and stays when the file changes
    asked = sum(ADAPTER_ROUTE in r.url for r in frontend.requests)
    page.evaluate("async () => { await window.app.loadGraphData(window.app.graph.serialize()); }")
    page.wait_for_timeout(500)
    seen["asked when the workflow was opened"] = sum(ADAPTER_ROUTE in r.url for r in frontend.requests) - asked
    page.evaluate(SET_WIDGET_JS, [loader, "ipadapter_file", files["sd15"]])
    page.wait_for_timeout(500)
    seen["opened from a workflow, then the file changed"] = [weight(n) for n in (apply, advanced, through, late, fourth)]
    return seen


def overlaps(nodes):
    """Pairs of nodes whose drawn boxes (title bar included) intersect."""
    found = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["box"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append((f"{a['id']} {a['type']}", f"{b['id']} {b['type']}"))
    return found


def prompt_differences(output, intended):
    """Where the prompt the frontend would queue differs from the one the workflow builder meant."""
    problems = []
    for node_id in sorted(set(output) | set(intended), key=lambda k: int(k)):
        got, meant = output.get(node_id), intended.get(node_id)
        if got is None or meant is None:
            problems.append(f"node {node_id}: {'missing from the frontend prompt' if got is None else 'not meant'}")
            continue
        if got["class_type"] != meant["class_type"]:
            problems.append(f"node {node_id}: class {got['class_type']} != {meant['class_type']}")
        for name in sorted(set(got["inputs"]) | set(meant["inputs"])):
            a, b = got["inputs"].get(name, "<absent>"), meant["inputs"].get(name, "<absent>")
            if isinstance(a, list) and isinstance(b, list):
                a, b = [str(a[0]), a[1]], [str(b[0]), b[1]]
            if a != b:
                problems.append(f"node {node_id} ({meant['class_type']}).{name}: frontend {a!r}, meant {b!r}")
    return problems


def links_right_to_left(workflow, nodes):
    """Links whose source node stands to the right of its target (the graph should read left to right)."""
    x = {n["id"]: n["box"][0] for n in nodes}
    return [f"link {link[0]}: node {link[1]} -> node {link[3]}" for link in workflow["links"] if x[link[1]] > x[link[3]]]


def outside_groups(nodes, groups):
    """Nodes not wholly inside any group."""
    def inside(box, group):
        return (group[0] <= box[0] and group[1] <= box[1] and box[0] + box[2] <= group[0] + group[2]
                and box[1] + box[3] <= group[1] + group[3])
    return [f"{n['id']} {n['type']}" for n in nodes if not any(inside(n["box"], g["box"]) for g in groups)]


def check_in_frontend(frontend, path, intended, screenshot_dir=None, layout=True):
    """Drop the workflow file on the frontend and list every problem the frontend shows; (problems, report).
    `layout=False` (graphs a user laid out, converted from another pack) skips what only our own layout promises:
    links reading left to right, every node in a group, a note naming the model files."""
    with open(path) as f:
        workflow = json.load(f)
    frontend.drop_workflow(path)
    report = frontend.inspect()
    nodes, problems = report["nodes"], []
    problems += [f"node {n['id']}: type {n['type']} is missing in the frontend" for n in nodes
                 if not n["registered"] or n["has_errors"]]
    problems += prompt_differences(report["output"], intended)
    problems += [f"nodes {a} and {b} overlap" for a, b in overlaps(nodes)]
    problems += [f"node {n['id']} {n['type']} is drawn at {n['size']}, smaller than the {n['min_size']} its widgets need"
                 for n in nodes if n["size"][0] < n["min_size"][0] or n["size"][1] < n["min_size"][1]]
    if layout:
        problems += links_right_to_left(workflow, nodes)
        problems += [f"node {name} is in no group" for name in outside_groups(nodes, report["groups"])]
        notes = [n["text"] for n in nodes if n["text"] is not None]
        files = sorted({v for node in intended.values() for k, v in node["inputs"].items()
                        if k in MODEL_FILE_INPUTS})
        if not notes:
            problems.append("no note node says which model files to download")
        problems += [f"the note does not name {name}" for name in files if notes and not any(name in t for t in notes)]
    problems += [f"a dialog is open: {text!r}" for text in report["dialogs"]]
    if screenshot_dir:
        os.makedirs(screenshot_dir, exist_ok=True)
        report["screenshot"] = os.path.join(screenshot_dir, os.path.basename(path).replace(".json", ".png"))
        frontend.screenshot(report["screenshot"])
    return problems, report
