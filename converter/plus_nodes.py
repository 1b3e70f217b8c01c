"""ComfyUI_IPAdapter_plus nodes as its saved workflows hold them (that pack at 9d076a3, 2025-02).

Facts only, read from its node definitions: for each node type, the widget names in the order their values
appear in `widgets_values`, and their defaults (old files may hold fewer values: widgets were added at the end
over time, and the missing ones take these defaults). Sockets are found by name in the file itself.
"""

WEIGHT = ("weight", 1.0)
START, END = ("start_at", 0.0), ("end_at", 1.0)
COMBINE = ("combine_embeds", "concat")
SCALING = ("embeds_scaling", "V only")
WEIGHT_TYPE = ("weight_type", "linear")
FACEID_V2 = ("weight_faceidv2", 1.0)
BATCH_SIZE = ("encode_batch_size", 0)

WIDGETS = {
    "IPAdapter": [WEIGHT, START, END, ("weight_type", "standard")],
    "IPAdapterAdvanced": [WEIGHT, WEIGHT_TYPE, COMBINE, START, END, SCALING],
    "IPAdapterBatch": [WEIGHT, WEIGHT_TYPE, START, END, SCALING, BATCH_SIZE],
    "IPAdapterFaceID": [WEIGHT, FACEID_V2, WEIGHT_TYPE, COMBINE, START, END, SCALING],
    "IPAAdapterFaceIDBatch": [WEIGHT, FACEID_V2, WEIGHT_TYPE, COMBINE, START, END, SCALING],
    "IPAdapterFaceIDKolors": [WEIGHT, FACEID_V2, ("weight_kolors", 1.0), WEIGHT_TYPE, COMBINE, START, END, SCALING],
    "IPAdapterTiled": [WEIGHT, WEIGHT_TYPE, COMBINE, START, END, ("sharpening", 0.0), SCALING],
    "IPAdapterTiledBatch": [WEIGHT, WEIGHT_TYPE, START, END, ("sharpening", 0.0), SCALING, BATCH_SIZE],
    "IPAdapterEmbeds": [WEIGHT, WEIGHT_TYPE, START, END, SCALING],
    "IPAdapterEmbedsBatch": [WEIGHT, WEIGHT_TYPE, START, END, SCALING],
    "IPAdapterStyleComposition": [("weight_style", 1.0), ("weight_composition", 1.0), ("expand_style", False),
                                  ("combine_embeds", "average"), START, END, SCALING],
    "IPAdapterStyleCompositionBatch": [("weight_style", 1.0), ("weight_composition", 1.0), ("expand_style", False),
                                       START, END, SCALING],
    "IPAdapterMS": [WEIGHT, FACEID_V2, WEIGHT_TYPE, COMBINE, START, END, SCALING, ("layer_weights", "")],
    "IPAdapterClipVisionEnhancer": [WEIGHT, WEIGHT_TYPE, COMBINE, START, END, SCALING, ("enhance_tiles", 2),
                                    ("enhance_ratio", 1.0)],
    "IPAdapterClipVisionEnhancerBatch": [WEIGHT, WEIGHT_TYPE, START, END, SCALING, ("enhance_tiles", 2),
                                         ("enhance_ratio", 0.5), BATCH_SIZE],
    "IPAdapterFromParams": [COMBINE, SCALING],
    "IPAdapterPreciseStyleTransfer": [WEIGHT, ("style_boost", 1.0), COMBINE, START, END, SCALING],
    "IPAdapterPreciseStyleTransferBatch": [WEIGHT, ("style_boost", 1.0), COMBINE, START, END, SCALING],
    "IPAdapterPreciseComposition": [WEIGHT, ("composition_boost", 0.0), COMBINE, START, END, SCALING],
    "IPAdapterPreciseCompositionBatch": [WEIGHT, ("composition_boost", 0.0), COMBINE, START, END, SCALING],
    "IPAdapterUnifiedLoader": [("preset", "LIGHT - SD1.5 only (low strength)")],
    "IPAdapterUnifiedLoaderFaceID": [("preset", "FACEID"), ("lora_strength", 0.6), ("provider", "CPU")],
    "IPAdapterUnifiedLoaderCommunity": [("preset", "Composition")],
    "IPAdapterModelLoader": [("ipadapter_file", None)],
    "IPAdapterInsightFaceLoader": [("provider", "CPU"), ("model_name", "buffalo_l")],
    "IPAdapterEncoder": [("weight", 1.0)],
    "IPAdapterCombineEmbeds": [("method", "concat")],
    "IPAdapterNoise": [("type", "fade"), ("strength", 1.0), ("blur", 0)],
    "PrepImageForClipVision": [("interpolation", "LANCZOS"), ("crop_position", "top"), ("sharpening", 0.0)],
    "IPAdapterSaveEmbeds": [("filename_prefix", "IP_embeds")],
    "IPAdapterLoadEmbeds": [("embeds", None)],
    "IPAdapterWeights": [("weights", "1.0, 0.0"), ("timing", "linear"), ("frames", 0), ("start_frame", 0),
                         ("end_frame", 9999), ("add_starting_frames", 0), ("add_ending_frames", 0),
                         ("method", "full batch")],
    "IPAdapterWeightsFromStrategy": [],
    "IPAdapterPromptScheduleFromWeightsStrategy": [("prompt", "")],
    "IPAdapterCombineWeights": [("weights_1", 0.0), ("weights_2", 0.0)],
    "IPAdapterRegionalConditioning": [("image_weight", 1.0), ("prompt_weight", 1.0), WEIGHT_TYPE, START, END],
    "IPAdapterCombineParams": [],
}

# Presets of the unified loaders: (SD1.5 file patterns, SDXL file patterns), tried in order against the sorted
# listing of models/ipadapter, case-insensitively, first match wins ('.' matches any separator). None: the
# preset does not exist for that model family.
PRESETS = {
    "LIGHT - SD1.5 only (low strength)": ([r"sd15.light.v11\.(safetensors|bin)$", r"sd15.light\.(safetensors|bin)$"], None),
    "STANDARD (medium strength)": ([r"ip.adapter.sd15\.(safetensors|bin)$"], [r"ip.adapter.sdxl.vit.h\.(safetensors|bin)$"]),
    "VIT-G (medium strength)": ([r"sd15.vit.g\.(safetensors|bin)$"], [r"ip.adapter.sdxl\.(safetensors|bin)$"]),
    "PLUS (high strength)": ([r"ip.adapter.plus.sd15\.(safetensors|bin)$"], [r"plus.sdxl.vit.h\.(safetensors|bin)$"]),
    "PLUS FACE (portraits)": ([r"plus.face.sd15\.(safetensors|bin)$"], [r"plus.face.sdxl.vit.h\.(safetensors|bin)$"]),
    "FULL FACE - SD1.5 only (portraits stronger)": ([r"full.face.sd15\.(safetensors|bin)$"], None),
    "Composition": ([r"plus.composition.sd15\.safetensors$"], [r"plus.composition.sdxl\.safetensors$"]),
    "FACEID": ([r"faceid.sd15\.(safetensors|bin)$"], [r"faceid.sdxl\.(safetensors|bin)$"]),
    "FACEID PLUS - SD1.5 only": ([r"faceid.plus.sd15\.(safetensors|bin)$"], None),
    "FACEID PLUS V2": ([r"faceid.plusv2.sd15\.(safetensors|bin)$"], [r"faceid.plusv2.sdxl\.(safetensors|bin)$"]),
    "FACEID PORTRAIT (style transfer)": ([r"portrait.v11.sd15\.(safetensors|bin)$", r"portrait.sd15\.(safetensors|bin)$"],
                                         [r"portrait.sdxl\.(safetensors|bin)$"]),
    "FACEID PORTRAIT UNNORM - SDXL only (strong)": (None, [r"portrait.sdxl.unnorm\.(safetensors|bin)$"]),
}
FACEID_PRESETS = {p for p in PRESETS if p.startswith("FACEID")}  # IPAdapterUnifiedLoaderFaceID's
FACEID_CLIP_PRESETS = {"FACEID PLUS - SD1.5 only", "FACEID PLUS V2"}  # these also show CLIP ViT-H the face crop

# The file each preset names in that pack's README, used when the converter cannot list models/ipadapter.
PRESET_FILES = {
    "LIGHT - SD1.5 only (low strength)": ("ip-adapter_sd15_light_v11.bin", None),
    "STANDARD (medium strength)": ("ip-adapter_sd15.safetensors", "ip-adapter_sdxl_vit-h.safetensors"),
    "VIT-G (medium strength)": ("ip-adapter_sd15_vit-G.safetensors", "ip-adapter_sdxl.safetensors"),
    "PLUS (high strength)": ("ip-adapter-plus_sd15.safetensors", "ip-adapter-plus_sdxl_vit-h.safetensors"),
    "PLUS FACE (portraits)": ("ip-adapter-plus-face_sd15.safetensors", "ip-adapter-plus-face_sdxl_vit-h.safetensors"),
    "FULL FACE - SD1.5 only (portraits stronger)": ("ip-adapter-full-face_sd15.safetensors", None),
    "Composition": ("ip_plus_composition_sd15.safetensors", "ip_plus_composition_sdxl.safetensors"),
    "FACEID": ("ip-adapter-faceid_sd15.bin", "ip-adapter-faceid_sdxl.bin"),
    "FACEID PLUS - SD1.5 only": ("ip-adapter-faceid-plus_sd15.bin", None),
    "FACEID PLUS V2": ("ip-adapter-faceid-plusv2_sd15.bin", "ip-adapter-faceid-plusv2_sdxl.bin"),
    "FACEID PORTRAIT (style transfer)": ("ip-adapter-faceid-portrait-v11_sd15.bin", "ip-adapter-faceid-portrait_sdxl.bin"),
    "FACEID PORTRAIT UNNORM - SDXL only (strong)": (None, "ip-adapter-faceid-portrait_sdxl_unnorm.bin"),
}

# The transformer index its weights are keyed by (one per spatial transformer, input blocks, middle, output
# blocks, in call order) -> the block in ComfyUI's UNet, for layer_weights.
TRANSFORMER_BLOCKS = {
    "sd15": ["input 1", "input 2", "input 4", "input 5", "input 7", "input 8", "middle", "output 3", "output 4",
             "output 5", "output 6", "output 7", "output 8", "output 9", "output 10", "output 11"],
    "sdxl": ["input 4", "input 5", "input 7", "input 8", "middle", "output 0", "output 1", "output 2", "output 3",
             "output 4", "output 5"],
}


def widget_values(node) -> dict:
    """{widget name: value} of one of that pack's nodes; missing trailing values take their defaults."""
    names = WIDGETS[node["type"]]
    values = node.get("widgets_values") or []
    if isinstance(values, dict):  # some exporters write them by name
        return {name: values.get(name, default) for name, default in names}
    return {name: values[i] if i < len(values) else default for i, (name, default) in enumerate(names)}
