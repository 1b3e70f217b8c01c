"""Save Image Prompt / Load Image Prompt: image prompts as .safetensors files, with metadata, never pickles.

A file holds the encoder features (before the adapter's projection), their negative, and the per-image
weights; metadata names the adapter family and file it was made with and the encoder output it holds. Loading
projects the features with the adapter given, which must read the same encoder output.

Files live in ComfyUI's folders only: Save writes inside the output folder (ComfyUI's get_save_image_path decides
the subfolder and refuses a prefix that leaves it), Load lists the input folder's files and the output folder's,
the latter as 'name [output]', the way ComfyUI's own output pickers mark them.
"""

import os
import posixpath
import re

import folder_paths
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .common import ADAPTER_TYPE, CATEGORY, PROMPT_TYPE, NodeInputError, logger
from .encode import ImagePrompt, make_prompt
from .loader import LoadedAdapter

FORMAT = "ipadapter-dca image prompt"
SUFFIX = ".ipprompt.safetensors"
OUTPUT_ANNOTATION = " [output]"  # how ComfyUI marks output-folder files in a picker (folder_paths.annotated_filepath)
NAME_EXAMPLE = "use a name like 'my_prompt' or 'sub/my_prompt'"


def _is_absolute(path):
    """Absolute, rooted ('/x', '\\x') or with a drive ('C:x'): never relative to a ComfyUI folder."""
    return os.path.isabs(path) or path.startswith(("/", "\\")) or bool(os.path.splitdrive(path)[0])


def _climbs_out(path):
    """Whether path, taken relative to a folder, leads above it ('..', '../x', 'sub/../../x'); either separator."""
    return posixpath.normpath(path.replace("\\", "/")).split("/")[0] == ".."


def _inside(path, folder):
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    try:
        return os.path.commonpath((path, folder)) == folder
    except ValueError:  # another drive
        return False


def _listed(folder):
    """The *.ipprompt.safetensors files under folder, recursively, as relative paths with '/' separators."""
    if not os.path.isdir(folder):
        return []
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(root))
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in seen)  # no symlink loops
        found += [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in files if f.endswith(SUFFIX)]
    return sorted(found)


def prompt_files():
    """The input folder's prompt files, then the output folder's, annotated as ComfyUI's output pickers do."""
    return (_listed(folder_paths.get_input_directory())
            + [name + OUTPUT_ANNOTATION for name in _listed(folder_paths.get_output_directory())])


def _next_counter(folder, filename):
    """1 + the highest NNNNN of <filename>_NNNNN.ipprompt.safetensors in folder. (get_save_image_path's own counter
    reads <prefix>_NNNNN_ names, as SaveImage writes them, so it would not see ours.)"""
    pattern = re.compile(re.escape(os.path.normcase(filename)) + r"_(\d+)" + re.escape(os.path.normcase(SUFFIX)))
    numbers = [int(m.group(1)) for m in map(pattern.fullmatch, map(os.path.normcase, os.listdir(folder))) if m]
    return max(numbers, default=0) + 1


class SaveImagePrompt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image_prompt": (PROMPT_TYPE, {"tooltip": "The image prompt to keep."}),
            "filename_prefix": ("STRING", {"default": "image_prompt",
                                           "tooltip": "Saved as <prefix>_00001.ipprompt.safetensors inside ComfyUI's "
                                                      "output folder; 'sub/name' saves into its subfolder 'sub'. A "
                                                      "prefix that leaves the output folder ('../x', an absolute "
                                                      "path) is refused."}),
        }}

    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Saves an image prompt (its encoder features and weights) inside ComfyUI's output folder. Load Image "
                   "Prompt lists it from there (marked [output]) and loads it without the images or the CLIP vision "
                   "model.")

    def save(self, image_prompt, filename_prefix="image_prompt"):
        node = "Save Image Prompt"
        if not isinstance(image_prompt, ImagePrompt):
            raise NodeInputError(f"{node}: 'image_prompt' must come from an Encode Image Prompt node of this pack.")
        if image_prompt.faceid is not None:
            raise NodeInputError(f"{node}: FaceID image prompts are not saved (they would hold a person's identity "
                                 "embedding and face crops); keep the photos and Embed Faces in the workflow instead.")
        output = folder_paths.get_output_directory()
        outside = NodeInputError(
            f"{node}: 'filename_prefix' ('{filename_prefix}') must stay inside ComfyUI's output folder ({output}); "
            f"'..' that climbs out of it and absolute paths are not allowed: {NAME_EXAMPLE}.")
        if not isinstance(filename_prefix, str) or not filename_prefix.strip():
            raise NodeInputError(f"{node}: 'filename_prefix' ('{filename_prefix}') is empty: {NAME_EXAMPLE}.")
        if _is_absolute(filename_prefix) or _climbs_out(filename_prefix):
            raise outside
        if filename_prefix.rstrip().endswith(("/", "\\")) or posixpath.basename(
                posixpath.normpath(filename_prefix.replace("\\", "/"))) in ("", "."):
            raise NodeInputError(f"{node}: 'filename_prefix' ('{filename_prefix}') does not end in a file name: "
                                 f"{NAME_EXAMPLE}.")
        try:  # ComfyUI's own check, as its save nodes make it: it refuses a folder outside the output folder
            folder, filename, _, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output)
        except OSError:
            raise
        except Exception as e:  # v0.8.0 raises a bare Exception("**** ERROR: Saving image outside the output folder ...")
            raise outside from e
        if not _inside(folder, output):  # the same check again, should a host not make it
            raise outside
        os.makedirs(folder, exist_ok=True)
        counter = _next_counter(folder, filename)
        while os.path.exists(os.path.join(folder, f"{filename}_{counter:05}{SUFFIX}")):
            counter += 1
        name = f"{filename}_{counter:05}{SUFFIX}"
        relative = "/".join(p for p in (subfolder.replace(os.sep, "/"), name) if p)
        spec = image_prompt.spec
        metadata = {"format": FORMAT, "version": "1", "adapter_file": image_prompt.file_name, "family": spec.family,
                    "projection": spec.projection, "encoder": spec.encoder.name, "encoder_output": spec.encoder.output,
                    "encoder_width": str(spec.encoder.width)}
        tensors = {"features": image_prompt.features, "uncond_features": image_prompt.uncond_features,
                   "image_weights": image_prompt.image_weights}
        # adapters with no negative tokens (InstantX Flux) save no uncond_features
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items() if v is not None},
                  os.path.join(folder, name), metadata)
        logger.info("saved image prompt %s", relative)
        return {"ui": {"text": [relative]}}


class LoadImagePrompt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ipadapter": (ADAPTER_TYPE, {"tooltip": "The IP-Adapter to project the saved features with; it must read "
                                                    "the same CLIP vision output as the one that saved them."}),
            "prompt_file": (prompt_files(), {"tooltip": "A *.ipprompt.safetensors file from ComfyUI's input folder, "
                                                        "or from its output folder, where Save Image Prompt writes "
                                                        "(those are marked [output])."}),
        }}

    RETURN_TYPES = (PROMPT_TYPE,)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("The image prompt, ready for Apply IP-Adapter.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads an image prompt saved by Save Image Prompt, from the input or the output folder, and projects "
                   "it with the given IP-Adapter.")

    def load(self, ipadapter, prompt_file):
        node = "Load Image Prompt"
        if not isinstance(ipadapter, LoadedAdapter):
            raise NodeInputError(f"{node}: 'ipadapter' must come from a Load IP-Adapter node of this pack.")
        if not isinstance(prompt_file, str):
            raise NodeInputError(f"{node}: 'prompt_file' must be a file name from the list.")
        relative, base = folder_paths.annotated_filepath(prompt_file)  # 'x [output]' -> ('x', output folder)
        base = base or folder_paths.get_input_directory()
        path = folder_paths.get_annotated_filepath(prompt_file)
        if not relative.strip() or _is_absolute(relative) or ".." in re.split(r"[\\/]", relative) or not _inside(path, base):
            raise NodeInputError(
                f"{node}: 'prompt_file' ('{prompt_file}') must name a file inside ComfyUI's input or output folder; "
                f"'..' and absolute paths are not allowed. Pick a file from the list.")
        if not os.path.isfile(path):
            where = next((w for w in ("output", "temp") if prompt_file.endswith(f"[{w}]")), "input")
            raise NodeInputError(f"{node}: 'prompt_file' ('{prompt_file}') is not in the {where} folder ({base}). Pick "
                                 f"a file from the list, or save one with Save Image Prompt.")
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise NodeInputError(f"{node}: '{prompt_file}' is not a readable .safetensors file ({e}).") from None
        if meta.get("format") != FORMAT or not {"features", "image_weights"} <= set(tensors):
            raise NodeInputError(f"{node}: '{prompt_file}' is not an image prompt saved by Save Image Prompt.")
        enc = ipadapter.spec.encoder
        saved = (meta.get("encoder_output"), meta.get("encoder_width"))
        if saved != (enc.output, str(enc.width)):
            raise NodeInputError(
                f"{node}: '{prompt_file}' holds {meta.get('encoder')} {saved[0]} ({saved[1]} wide), saved with "
                f"'{meta.get('adapter_file')}' ({meta.get('family')}), but '{ipadapter.file_name}' reads "
                f"{enc.name} {enc.output} ({enc.width} wide). Load it with an adapter that uses the same image encoder.")
        return (make_prompt(ipadapter, tensors["features"], tensors.get("uncond_features"), tensors["image_weights"]),)
