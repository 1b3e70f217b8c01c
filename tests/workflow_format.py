"""ComfyUI's UI-format workflow JSON: widget bookkeeping, checks against node definitions, and the API prompt.

Node definitions are kept as JSON (tests/fixtures/node_defs.json): {class: {"inputs": [[name, type, options]],
"outputs": [types]}}, where type is a string or a list of combo choices (an empty list is a model-file combo,
whose choices depend on the user's folders). tests/integration checks that file against the real ComfyUI.
"""

import json
import os

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "node_defs.json")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


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


def is_widget(kind, options):
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def widget_slots(definition):
    """The names of a node's widgets_values slots, in order, including the hidden ones the frontend adds:
    `control_after_generate` after seeds (and INTs that ask for it), `upload` after image-upload combos."""
    slots = []
    for name, kind, options, _ in definition["inputs"]:
        if not is_widget(kind, options):
            continue
        slots.append(name)
        if kind == "INT" and (options.get("control_after_generate") or (name in ("seed", "noise_seed")
                                                                       and options.get("control_after_generate") is not False)):
            slots.append("control_after_generate")
        if options.get("image_upload"):
            slots.append("upload")
    return slots


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


def check_workflow(workflow, defs):
    """Problems of a UI-format workflow against the node definitions; empty when it loads cleanly."""
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        d = defs.get(node["type"])
        where = f"node {node['id']} ({node['type']})"
        if d is None:
            problems.append(f"{where}: unknown node type")
            continue
        slots = widget_slots(d)
        values = node.get("widgets_values", [])
        if len(values) != len(slots):
            problems.append(f"{where}: {len(values)} widgets_values for {len(slots)} widgets {slots}")
            continue
        kinds = {name: (kind, options) for name, kind, options, _ in d["inputs"]}
        for slot, value in zip(slots, values):
            if slot == "control_after_generate":
                ok = value in ("fixed", "increment", "decrement", "randomize")
            elif slot == "upload":
                ok = value == "image"
            else:
                ok = check_value(*kinds[slot], value)
            if not ok:
                problems.append(f"{where}: bad value {value!r} for '{slot}'")
        declared = {name: (kind, optional) for name, kind, _, optional in d["inputs"]}
        linked = set()
        for i, inp in enumerate(node.get("inputs", [])):
            if inp["name"] not in declared:
                problems.append(f"{where}: input '{inp['name']}' does not exist")
            elif inp.get("link") is not None:
                linked.add(inp["name"])
        for name, (kind, optional) in declared.items():
            if not optional and not is_widget(kind, {}) and name not in linked:
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


def to_api_prompt(workflow, defs):
    """The API prompt ComfyUI's frontend would queue (graphToPrompt): widget values by name, links as [id, slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        d = defs[node["type"]]
        inputs = {}
        for slot, value in zip(widget_slots(d), node.get("widgets_values", [])):
            if slot not in ("control_after_generate", "upload"):
                inputs[slot] = value
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, src, src_slot, _, _, _ = links[inp["link"]]
                inputs[inp["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
