"""Open a ComfyUI_IPAdapter_plus workflow as one of this pack's.

Plain Python and JSON, no ComfyUI import: the same code serves the canvas command (through the pack's
/ipadapter_dca/convert route) and the command line (`python -m converter convert IN.json OUT.json`).
"""

from .convert import Report, convert_workflow
from .graph import WorkflowError

__all__ = ["Report", "WorkflowError", "convert_workflow"]
