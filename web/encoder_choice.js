// Load IP-Adapter + Encoder: after a run, show under the node which image encoder "auto" picked (and what else
// would have fit), as the node reports it. Drawn only, never saved with the workflow.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "IPAdapterDCA.EncoderChoice",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "LoadIPAdapterAndEncoder") return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      this.ipaEncoderChoice = output?.text?.[0] ?? null;
      this.setDirtyCanvas?.(true, false);
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (!this.ipaEncoderChoice || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "11px sans-serif";
      ctx.fillStyle = "#9a9";
      ctx.fillText(this.ipaEncoderChoice, 4, this.size[1] + 14, this.size[0] * 2);
      ctx.restore();
    };
  },
});
