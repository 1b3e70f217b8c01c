"""What every node module shares: names, socket types, the input error, the model-folder registration."""

import logging
import os

import folder_paths

CATEGORY = "IP-Adapter DCA"

# Socket types of our own: other packs use IPADAPTER / EMBEDS for different objects, and ComfyUI only
# lets sockets of the same type connect, so theirs cannot be wired into ours by mistake.
ADAPTER_TYPE = "IPA_DCA_ADAPTER"
PROMPT_TYPE = "IPA_DCA_IMAGE_PROMPT"

logger = logging.getLogger("ipadapter_dca")


class NodeInputError(ValueError):
    """Bad input to one of our nodes; the message names the node and input and says what to do."""


def register_model_folder(folder: str, extensions: set):
    """Add models/<folder>, keeping paths extra_model_paths.yaml (or another pack) already gave the key."""
    paths, known = folder_paths.folder_names_and_paths.get(folder, ([], set()))
    default = os.path.join(folder_paths.models_dir, folder)
    paths = list(paths) + ([default] if default not in paths else [])
    # an empty set means "every file" to folder_paths; keep other packs' extensions, add ours
    folder_paths.folder_names_and_paths[folder] = (paths, set(known) | extensions)
