// A new Apply IP-Adapter node takes the weight the connected adapter's reference uses (SD3.5-Large 0.5, InstantX
// Flux 0.7, the others 1.0), as the server reads it from the file (GET /ipadapter_dca/adapter). It follows the
// adapter (a changed file, a new link) until the user sets the weight; a node loaded or pasted from a workflow
// keeps the weight saved in it. A widget default exists only here, in the frontend: a queued prompt always
// carries its weight.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const APPLY = ["ApplyIPAdapter", "ApplyIPAdapterAdvanced"];
const LOADERS = ["LoadIPAdapter", "LoadIPAdapterAndEncoder"];

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// The loader feeding `node`'s ipadapter input, through Reroute nodes; null when there is none.
function loaderOf(node) {
  let current = node;
  let slot = node.findInputSlot?.("ipadapter") ?? -1;
  for (let hops = 0; hops < 32 && slot >= 0; hops++) {
    const linkId = current.inputs?.[slot]?.link;
    const link = linkId == null ? null : current.graph?.links?.[linkId] ?? current.graph?.links?.get?.(linkId);
    const origin = link ? current.graph.getNodeById(link.origin_id) : null;
    if (!origin || LOADERS.includes(origin.type)) return origin ?? null;
    if (origin.type !== "Reroute") return null;
    current = origin;
    slot = 0;
  }
  return null;
}

async function referenceWeight(file) {
  try {
    const response = await api.fetchApi(`/ipadapter_dca/adapter?file=${encodeURIComponent(file)}`);
    return response.ok ? (await response.json()).weight : null; // a bad file is reported by the run, not here
  } catch {
    return null;
  }
}

async function followAdapter(node) {
  if (!node.ipaWeightFollows) return;
  const loader = loaderOf(node);
  const file = loader && widget(loader, "ipadapter_file")?.value;
  if (!file) return;
  const weight = await referenceWeight(file);
  const target = widget(node, "weight");
  // the answer may come after the user set the weight or rewired: then it no longer applies
  if (weight == null || !target || !node.ipaWeightFollows || loaderOf(node) !== loader) return;
  if (widget(loader, "ipadapter_file")?.value !== file) return;
  target.value = weight;
  node.setDirtyCanvas?.(true, true);
}

function applyNodesOf(graph) {
  return (graph?._nodes ?? []).filter((n) => APPLY.includes(n.type));
}

app.registerExtension({
  name: "IPAdapterDCA.ReferenceWeight",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (APPLY.includes(nodeData.name)) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        onNodeCreated?.apply(this, arguments);
        this.ipaWeightFollows = true;
        const weight = widget(this, "weight");
        if (!weight) return;
        const callback = weight.callback;
        const node = this;
        weight.callback = function () {
          node.ipaWeightFollows = false; // the user's own weight
          return callback?.apply(this, arguments);
        };
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        onConfigure?.apply(this, arguments);
        this.ipaWeightFollows = false; // loaded, pasted or undone: the saved weight stands
      };
      const onConnectionsChange = nodeType.prototype.onConnectionsChange;
      nodeType.prototype.onConnectionsChange = function (type, index, connected) {
        onConnectionsChange?.apply(this, arguments);
        // later, not now: a workflow being opened links its nodes before onConfigure marks them as loaded
        if (type === LiteGraph.INPUT && connected && this.inputs?.[index]?.name === "ipadapter") {
          setTimeout(() => followAdapter(this), 0);
        }
      };
    }
    if (LOADERS.includes(nodeData.name)) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        onNodeCreated?.apply(this, arguments);
        const file = widget(this, "ipadapter_file");
        if (!file) return;
        const callback = file.callback;
        const loader = this;
        file.callback = function () {
          const result = callback?.apply(this, arguments);
          applyNodesOf(loader.graph).forEach((n) => loaderOf(n) === loader && followAdapter(n));
          return result;
        };
      };
    }
  },
});
