"""ComfyUI's UI-format workflow JSON: checks against node definitions and the frontend's widget order.

Node definitions are kept as JSON (tests/fixtures/node_defs.json): {class: {"inputs": [[name, type, options]],
"outputs": [types]}}, where type is a string or a list of combo choices (an empty list is a model-file combo,
whose choices depend on the user's folders). tests/integration checks that file against the real ComfyUI.

Which widget each `widgets_values` entry feeds is not worked out here: it is recorded from the real frontend
(tests/fixtures/frontend_nodes.json: per node type, the names of its serialised widgets in order, their values in a
fresh node, and the size the frontend computes), and the browser check (tests/test_frontend.py) fails when that
recording no longer matches the frontend.
"""

import json
import os

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FIXTURE = os.path.join(FIXTURES, "node_defs.json")
FRONTEND_NODES = os.path.join(FIXTURES, "frontend_nodes.json")
# node types the frontend itself provides: never sent to the server
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def definitions_from_input_types(classes: dict) -> dict:
    """The fixture form of classic node classes (INPUT_TYPES / RETURN_TYPES)."""
    keep = ("default", "min", "max", "control_after_generate", "image_upload", "forceInput", "multiline")
    defs = {}
    for name, cls in sorted(classes.items()):
        spec = cls.INPUT_TYPES()
        inputs = []
        for section in ("required", "optional"):
            for input_name, value in spec.get(section, {}).items():
                kind = value[0] if isinstance(value[0], str) else [str(c) for c in value[0]]
                options = value[1] if len(value) > 1 else {}
                inputs.append([input_name, kind, {k: options[k] for k in keep if k in options}, section == "optional"])
        defs[name] = {"inputs": inputs, "outputs": list(cls.RETURN_TYPES)}
    return defs


def dump_definitions(defs, comfyui_version, path=FIXTURE):
    """Write the fixture with one input per line, so diffs stay readable."""
    lines = ["{", f' "_comfyui_version": {json.dumps(comfyui_version)},']
    for i, (name, d) in enumerate(sorted(defs.items())):
        inputs = ",\n".join(f"   {json.dumps(entry, sort_keys=True)}" for entry in d["inputs"])
        comma = "," if i < len(defs) - 1 else ""
        lines.append(f' {json.dumps(name)}: {{\n  "inputs": [\n{inputs}\n  ],\n  "outputs": {json.dumps(d["outputs"])}\n }}{comma}')
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def load_definitions():
    with open(FIXTURE) as f:
        return json.load(f)


def check_value(kind, options, value):
    if isinstance(kind, list):
        return isinstance(value, str) and (value in kind if kind else bool(value))
    if kind == "INT":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "FLOAT":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "BOOLEAN":
        return isinstance(value, bool)
    else:
        return isinstance(value, str)
    return ok and options.get("min", value) <= value <= options.get("max", value)


def load_frontend_nodes(path=FRONTEND_NODES):
    with open(path) as f:
        return json.load(f)


def dump_frontend_nodes(layouts, path=FRONTEND_NODES):
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(layouts.items())) + "\n}\n")


def check_workflow(workflow, defs, frontend):
    """Problems of a UI-format workflow against the node definitions and the frontend's recorded widget order;
    empty when it loads cleanly."""
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        layout = frontend.get(node["type"])
        d = defs.get(node["type"], {"inputs": [], "outputs": []} if node["type"] in FRONTEND_ONLY else None)
        if d is None or layout is None:
            problems.append(f"{where}: unknown node type")
            continue
        slots, values = layout["widgets_values"], node.get("widgets_values", [])
        if len(values) != len(slots):
            problems.append(f"{where}: {len(values)} widgets_values for {len(slots)} widgets {slots}")
            continue
        kinds = {name: (kind, options) for name, kind, options, _ in d["inputs"]}
        for slot, value, default in zip(slots, values, layout["defaults"]):
            if slot in kinds:
                ok = check_value(*kinds[slot], value)
            elif slot == "control_after_generate":
                ok = value in ("fixed", "increment", "decrement", "randomize")
            else:  # a widget only the frontend has (upload button, note text): its own kind of value
                ok = type(value) is type(default)
            if not ok:
                problems.append(f"{where}: bad value {value!r} for '{slot}'")
        declared = {name: (kind, optional) for name, kind, _, optional in d["inputs"]}
        linked = set()
        for inp in node.get("inputs", []):
            if inp["name"] not in declared:
                problems.append(f"{where}: input '{inp['name']}' does not exist")
            elif inp.get("link") is not None:
                linked.add(inp["name"])
        for name, (kind, optional) in declared.items():
            if not optional and name not in slots and name not in linked:
                problems.append(f"{where}: required input '{name}' is not connected")
        for i, out in enumerate(node.get("outputs", [])):
            if i >= len(d["outputs"]) or out["type"] != d["outputs"][i]:
                problems.append(f"{where}: output {i} is '{out['type']}', the node gives {d['outputs']}")
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id}: unknown node")
            continue
        src_def, dst_node = defs.get(nodes[src]["type"]), nodes[dst]
        if src_def is None or dst_node["type"] not in defs:
            continue
        out_type = src_def["outputs"][src_slot]
        target = dst_node["inputs"][dst_slot]
        in_type = dict((n, k) for n, k, _, _ in defs[dst_node["type"]]["inputs"])[target["name"]]
        if not (out_type == kind == in_type == target["type"]) or target.get("link") != link_id:
            problems.append(f"link {link_id}: {nodes[src]['type']}[{src_slot}] {out_type} -> "
                            f"{dst_node['type']}.{target['name']} {in_type} (link says {kind})")
        if link_id not in nodes[src]["outputs"][src_slot].get("links", []):
            problems.append(f"link {link_id}: not listed on the output of node {src}")
    return problems


def api_prompt(workflow, defs, frontend):
    """The API prompt a UI-format workflow queues, read the way the frontend reads it: each node's widget values by
    the recorded widget order, then its links. Nodes the frontend alone has (notes) are not sent, nor nodes of
    types it does not know (check_workflow reports those)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node["type"] not in defs:
            continue
        declared = {name for name, _, _, _ in defs[node["type"]]["inputs"]}
        names = frontend[node["type"]]["widgets_values"]
        inputs = {n: v for n, v in zip(names, node.get("widgets_values") or []) if n in declared}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, src, src_slot, _, _, _ = links[inp["link"]]
                inputs[inp["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
