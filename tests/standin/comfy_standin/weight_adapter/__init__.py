"""Stand-in for comfy.weight_adapter (v0.8.0): the LoRA adapter the pack builds weight patches from."""
