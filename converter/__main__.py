"""python -m converter convert IN.json OUT.json [--models COMFYUI/models]

Run from the pack's folder (ComfyUI/custom_nodes/<this pack>). With --models, unified-loader presets resolve to
the files in models/ipadapter as that pack would find them; without it, to the file names its README gives.
"""

import argparse
import json
import os
import sys

from . import WorkflowError, convert_workflow


def list_models(models_dir):
    folder = os.path.join(models_dir, "ipadapter")
    if not os.path.isdir(folder):
        raise SystemExit(f"--models: {folder} is not a folder. Give ComfyUI's models folder.")
    names = [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
             for root, _, files in os.walk(folder) for f in files]
    return {"ipadapter": sorted(names)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m converter", description="Open ComfyUI_IPAdapter_plus workflows "
                                     "with the IP-Adapter DCA nodes.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert one workflow file")
    convert.add_argument("source", help="the workflow .json (saved or exported from ComfyUI)")
    convert.add_argument("target", help="where to write the converted workflow")
    convert.add_argument("--models", help="ComfyUI's models folder, to resolve unified-loader presets to your files")
    args = parser.parse_args(argv)
    try:
        with open(args.source, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{args.source}: cannot read it as JSON ({e}).") from None
    try:
        workflow, report = convert_workflow(data, list_models(args.models) if args.models else None)
    except WorkflowError as e:
        raise SystemExit(f"{args.source}: {e}") from None
    if os.path.abspath(args.target) == os.path.abspath(args.source):
        raise SystemExit("Write the converted workflow to a new file; the original is kept as it is.")
    with open(args.target, "w", encoding="utf-8") as f:
        json.dump(workflow, f, indent=1)
    print(report.text() if any(report.as_dict().values()) else f"{args.source}: no ComfyUI_IPAdapter_plus nodes in it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
