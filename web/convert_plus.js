// "Convert IPAdapter Plus nodes": rewrites the open graph's ComfyUI_IPAdapter_plus nodes with this pack's.
// The conversion runs on the server (POST /ipadapter_dca/convert), in the same Python code as the command line.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const COMMAND = "IPAdapterDCA.ConvertPlusNodes";
const LABEL = "Convert IPAdapter Plus nodes";

function toast(severity, detail) {
  const toasts = app.extensionManager?.toast;
  if (toasts) toasts.add({ severity, summary: LABEL, detail, life: 8000 });
  else console.log(`${LABEL}: ${detail}`);
}

export async function convertOpenGraph() {
  const response = await api.fetchApi("/ipadapter_dca/convert", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ workflow: app.graph.serialize() }),
  });
  let answer;
  try {
    answer = await response.json();
  } catch {
    answer = {};
  }
  if (!response.ok || !answer.workflow) {
    toast("error", answer.error ?? `the server answered ${response.status}: is the IP-Adapter DCA pack loaded?`);
    return answer;
  }
  const { converted, approximated, left } = answer.report;
  if (!converted.length && !left.length) {
    toast("info", "This workflow has no ComfyUI_IPAdapter_plus nodes.");
    return answer;
  }
  await app.loadGraphData(answer.workflow);
  toast(left.length || approximated.length ? "warn" : "success",
        `${converted.length} converted, ${approximated.length} approximated, ${left.length} left as they were. ` +
        "The note on the canvas says what and why.");
  return answer;
}

app.registerExtension({
  name: "IPAdapterDCA.ConvertPlus",
  commands: [{ id: COMMAND, label: LABEL, icon: "pi pi-sync", function: convertOpenGraph }],
  menuCommands: [{ path: ["Extensions", "IP-Adapter"], commands: [COMMAND] }],
  getCanvasMenuItems() {
    return [null, { content: LABEL, callback: () => convertOpenGraph() }];
  },
});
