// Load IP-Adapter and Load IP-Adapter + Encoder: after a run, show under the node what the file was found to be
// (FaceID: whether v1 or v2 was told by size, hash or name) and which image encoder "auto" picked, as the node
// reports it. Drawn only, never saved with the workflow.
import { app } from "../../scripts/app.js";

const LOADERS = ["LoadIPAdapter", "LoadIPAdapterAndEncoder"];

app.registerExtension({
  name: "IPAdapterDCA.EncoderChoice",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!LOADERS.includes(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      this.ipaLoaded = Array.isArray(output?.text) ? output.text.map(String) : null;
      this.setDirtyCanvas?.(true, false);
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (!this.ipaLoaded || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "11px sans-serif";
      ctx.fillStyle = "#9a9";
      this.ipaLoaded.forEach((line, i) => ctx.fillText(line, 4, this.size[1] + 14 * (i + 1), this.size[0] * 2));
      ctx.restore();
    };
  },
});
