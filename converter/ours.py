"""This pack's nodes as the converter writes them: sockets, widget names in the order the frontend serialises
their values, defaults, and the size the frontend gives a fresh node (width at least 320, as the shipped
workflows use, so file names fit). Kept equal to what the real frontend records (tests/fixtures/frontend_nodes.json)
by tests/test_converter.py.
"""

AUTO = "auto (by content)"  # LoadIPAdapterAndEncoder's clip_vision choice that finds the file by content
COMBINE_MODES = ("concat", "average", "norm average", "add", "subtract")
FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}

LAYOUT = {
    "LoadIPAdapterAndEncoder": {"inputs": [], "widgets": ["ipadapter_file", "clip_vision"], "defaults": [None, "auto (by content)"], "outputs": [["IPA_DCA_ADAPTER", "IPA_DCA_ADAPTER"], ["CLIP_VISION", "CLIP_VISION"]], "size": [320, 102]},
    "EncodeImagePrompt": {"inputs": [["ipadapter", "IPA_DCA_ADAPTER"], ["clip_vision", "CLIP_VISION"], ["image", "IMAGE"], ["faces", "IPA_DCA_FACES"], ["negative_image", "IMAGE"], ["content_text", "CONDITIONING"]], "widgets": ["crop", "combine", "image_weights", "content_scale"], "defaults": ["center crop", "concat", "", 0.5], "outputs": [["IPA_DCA_IMAGE_PROMPT", "IPA_DCA_IMAGE_PROMPT"]], "size": [320, 230]},
    "CombineImagePrompts": {"inputs": [["image_prompt_1", "IPA_DCA_IMAGE_PROMPT"], ["image_prompt_2", "IPA_DCA_IMAGE_PROMPT"], ["image_prompt_3", "IPA_DCA_IMAGE_PROMPT"], ["image_prompt_4", "IPA_DCA_IMAGE_PROMPT"], ["image_prompt_5", "IPA_DCA_IMAGE_PROMPT"]], "widgets": ["combine"], "defaults": ["concat"], "outputs": [["IPA_DCA_IMAGE_PROMPT", "IPA_DCA_IMAGE_PROMPT"]], "size": [320, 138]},
    "ApplyIPAdapter": {"inputs": [["model", "MODEL"], ["ipadapter", "IPA_DCA_ADAPTER"], ["image_prompt", "IPA_DCA_IMAGE_PROMPT"], ["attn_mask", "MASK"]], "widgets": ["weight", "start_percent", "end_percent"], "defaults": [1, 0, 1], "outputs": [["MODEL", "MODEL"]], "size": [320, 166]},
    "ApplyIPAdapterAdvanced": {"inputs": [["model", "MODEL"], ["ipadapter", "IPA_DCA_ADAPTER"], ["image_prompt", "IPA_DCA_IMAGE_PROMPT"], ["attn_mask", "MASK"]], "widgets": ["weight", "start_percent", "end_percent", "weight_type", "kv_scaling", "per_frame", "layer_weights", "composition_weight", "style_boost", "composition_boost", "frame_weights", "s_scale", "lora_strength"], "defaults": [1, 0, 1, "linear", "V only", False, "", 1, 1, 0, "", 1, 1], "outputs": [["MODEL", "MODEL"]], "size": [320, 436]},
    "ApplyIPAdapterStyleComposition": {"inputs": [["model", "MODEL"], ["ipadapter", "IPA_DCA_ADAPTER"], ["style_prompt", "IPA_DCA_IMAGE_PROMPT"], ["composition_prompt", "IPA_DCA_IMAGE_PROMPT"]], "widgets": ["style_weight", "composition_weight", "start_percent", "end_percent", "kv_scaling"], "defaults": [1, 1, 0, 1, "V only"], "outputs": [["MODEL", "MODEL"]], "size": [320, 214]},
    "SaveImagePrompt": {"inputs": [["image_prompt", "IPA_DCA_IMAGE_PROMPT"]], "widgets": ["filename_prefix"], "defaults": ["image_prompt"], "outputs": [], "size": [320, 58]},
    "LoadImagePrompt": {"inputs": [["ipadapter", "IPA_DCA_ADAPTER"]], "widgets": ["prompt_file"], "defaults": [None], "outputs": [["IPA_DCA_IMAGE_PROMPT", "IPA_DCA_IMAGE_PROMPT"]], "size": [320, 58]},
    "LoadIPAdapter": {"inputs": [], "widgets": ["ipadapter_file"], "defaults": [None], "outputs": [["IPA_DCA_ADAPTER", "IPA_DCA_ADAPTER"]], "size": [320, 58]},
    "LoadFaceAnalyzer": {"inputs": [], "widgets": ["pack", "backend", "provider"], "defaults": ["buffalo_l", "auto", "auto"], "outputs": [["IPA_DCA_FACE_ANALYZER", "IPA_DCA_FACE_ANALYZER"]], "size": [320, 106]},
    "EmbedFaces": {"inputs": [["face_analyzer", "IPA_DCA_FACE_ANALYZER"], ["image", "IMAGE"]], "widgets": ["select", "index", "no_face", "crop_size"], "defaults": ["largest", 0, "error", 224], "outputs": [["IPA_DCA_FACES", "IPA_DCA_FACES"], ["IMAGE", "IMAGE"]], "size": [320, 150]},
    "Note": {"inputs": [], "widgets": ["text"], "defaults": [""], "outputs": [], "size": [420, 420]},
}

DISPLAY = {
    "LoadIPAdapterAndEncoder": "Load IP-Adapter + Encoder",
    "EncodeImagePrompt": "Encode Image Prompt",
    "CombineImagePrompts": "Combine Image Prompts",
    "ApplyIPAdapter": "Apply IP-Adapter",
    "ApplyIPAdapterAdvanced": "Apply IP-Adapter (advanced)",
    "ApplyIPAdapterStyleComposition": "Apply IP-Adapter Style & Composition",
    "SaveImagePrompt": "Save Image Prompt",
    "LoadImagePrompt": "Load Image Prompt",
    "LoadIPAdapter": "Load IP-Adapter",
    "LoadFaceAnalyzer": "Load Face Analyzer",
    "EmbedFaces": "Embed Faces",
}
PROVIDERS = ("auto", "CPU", "CUDA", "ROCM", "DirectML", "CoreML", "OpenVINO", "TensorRT")  # Load Face Analyzer's
