"""A ComfyUI workflow file (the frontend's LiteGraph format, version 0.4) as something to edit.

Only what the converter needs: look nodes and links up, add a node with named widget values, connect and
disconnect sockets, remove a node, and find free room on the canvas. Everything else in the file (groups,
extra, other packs' nodes, properties the frontend keeps) is carried through untouched.

Links are lists [id, origin node, origin slot, target node, target slot, type]; a node's `inputs` lists its
sockets (and widgets turned into sockets, marked with "widget"), its `outputs` the links leaving each slot.
"""

import copy

GAP = 30  # free space kept around a node placed by the converter


class WorkflowError(ValueError):
    """A file that is not a ComfyUI workflow the converter can read; the message says what was found."""


class Workflow:
    def __init__(self, data: dict):
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not isinstance(data.get("links"), list):
            found = type(data).__name__ if not isinstance(data, dict) else f"keys {sorted(data)[:6]}"
            raise WorkflowError(
                "expected a ComfyUI workflow (the file Save / Export writes: 'nodes' and 'links' lists), found "
                f"{found}. An API-format prompt (Export (API)) has no layout and cannot be converted.")
        self.data = copy.deepcopy(data)
        self.nodes = {node["id"]: node for node in self.data["nodes"]}
        self.links = {link[0]: link for link in self.data["links"]}

    # --- reading ------------------------------------------------------------------------------------------

    def input_link(self, node, name):
        """The link into input `name` of `node`, or None."""
        slot = next((s for s in node.get("inputs", []) if s["name"] == name), None)
        return self.links.get(slot["link"]) if slot and slot.get("link") is not None else None

    def source(self, node, name):
        """(origin node, origin slot) feeding input `name`, or None."""
        link = self.input_link(node, name)
        return (self.nodes[link[1]], link[2]) if link else None

    def consumers(self, node, slot):
        """[(target node, input name)] fed by output `slot` of `node`."""
        found = []
        for link_id in (node["outputs"][slot].get("links") or []) if slot < len(node.get("outputs", [])) else []:
            link = self.links.get(link_id)
            if link:
                target = self.nodes[link[3]]
                found.append((target, target["inputs"][link[4]]["name"]))
        return found

    # --- editing ------------------------------------------------------------------------------------------

    def add_node(self, layout: dict, kind: str, pos, widgets: dict, title=None, node_id=None):
        """A node of our pack: `layout` gives its sockets, widget names in the frontend's order and its size."""
        values = dict(zip(layout["widgets"], layout["defaults"]))
        unknown = set(widgets) - set(values)
        assert not unknown, f"{kind} has no widgets {unknown}"
        values.update(widgets)
        node_id = node_id if node_id is not None else max(self.nodes, default=0) + 1
        node = {
            "id": node_id, "type": kind, "pos": [float(pos[0]), float(pos[1])], "size": list(layout["size"]),
            "flags": {}, "order": len(self.nodes), "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in layout["inputs"]],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(layout["outputs"])],
            "properties": {"Node name for S&R": kind}, "widgets_values": list(values.values()),
        }
        if title:
            node["title"] = title
        self.nodes[node_id] = node
        self.data["nodes"].append(node)
        self.data["nodes"].sort(key=lambda n: n["id"])
        return node

    def connect(self, source, target, name, widget_type=None):
        """Link (origin node, slot) to input `name` of `target`. A widget input (`widget_type` given) becomes a
        socket, as the frontend does when a widget is converted to an input."""
        origin, origin_slot = source
        slots = target["inputs"]
        index = next((i for i, s in enumerate(slots) if s["name"] == name), None)
        if index is None:
            assert widget_type, f"{target['type']} has no input {name}"
            slots.append({"name": name, "type": widget_type, "link": None, "widget": {"name": name}})
            index = len(slots) - 1
        self.disconnect(target, name)
        link_id = max(self.links, default=0) + 1
        link = [link_id, origin["id"], origin_slot, target["id"], index, slots[index]["type"]]
        self.links[link_id] = link
        self.data["links"].append(link)
        output = origin["outputs"][origin_slot]
        output["links"] = (output.get("links") or []) + [link_id]
        slots[index]["link"] = link_id

    def disconnect(self, target, name):
        link = self.input_link(target, name)
        if link is None:
            return
        self._drop_link(link)

    def _drop_link(self, link):
        origin = self.nodes.get(link[1])
        if origin is not None and link[2] < len(origin["outputs"]):
            links = origin["outputs"][link[2]].get("links") or []
            origin["outputs"][link[2]]["links"] = [i for i in links if i != link[0]]
        target = self.nodes.get(link[3])
        if target is not None and link[4] < len(target["inputs"]) and target["inputs"][link[4]].get("link") == link[0]:
            target["inputs"][link[4]]["link"] = None
        del self.links[link[0]]
        self.data["links"].remove(link)

    def remove_node(self, node):
        for link in [link for link in self.links.values() if node["id"] in (link[1], link[3])]:
            self._drop_link(link)
        del self.nodes[node["id"]]
        self.data["nodes"].remove(node)

    # --- room on the canvas -------------------------------------------------------------------------------

    def free_spot(self, near, size, exclude=None, directions=("left", "above", "below")):
        """A position close to `near`, stepping out in `directions` in turn ("here" tries `near` itself), where a
        node of `size` overlaps no node but `exclude`."""
        boxes = [(n["pos"][0], n["pos"][1], *n.get("size", [200, 100])) for n in self.nodes.values() if n is not exclude]
        title = 30  # the title bar sits above pos

        def clear(x, y):
            return all(x + size[0] + GAP <= bx or bx + bw + GAP <= x or y + size[1] + GAP <= by - title
                       or by + bh + GAP <= y - title for bx, by, bw, bh in boxes)

        x0, y0 = near
        moves = {"here": lambda step: (x0, y0) if step == 0 else None,
                 "left": lambda step: (x0 - size[0] - 2 * GAP - step * 40, y0),
                 "right": lambda step: (x0 + step * 40, y0),
                 "above": lambda step: (x0, y0 - size[1] - 2 * GAP - step * 40),
                 "below": lambda step: (x0, y0 + step * 40)}
        for step in range(60):
            for direction in directions:
                spot = moves[direction](step)
                if spot is not None and clear(*spot):
                    return [spot[0], spot[1]]
        bottom = max((by + bh for _, by, _, bh in boxes), default=0)
        return [x0, bottom + 2 * GAP + title]

    def finish(self) -> dict:
        self.data["last_node_id"] = max(self.nodes, default=0)
        self.data["last_link_id"] = max(self.links, default=0)
        for order, node in enumerate(self.data["nodes"]):
            node["order"] = order
        return self.data
