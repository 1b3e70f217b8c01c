"""Names shared by every node of the pack, in one place."""

import logging

CATEGORY = "IP-Adapter DCA"

# Socket types of our own: other packs use IPADAPTER / EMBEDS for different objects, and ComfyUI only
# lets sockets of the same type connect, so theirs cannot be wired into ours by mistake.
ADAPTER_TYPE = "IPA_DCA_ADAPTER"
PROMPT_TYPE = "IPA_DCA_IMAGE_PROMPT"

logger = logging.getLogger("ipadapter_dca")


class NodeInputError(ValueError):
    """Bad input to one of our nodes; the message names the node and input and says what to do."""
