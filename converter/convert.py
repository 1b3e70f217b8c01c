"""Rewrite a ComfyUI_IPAdapter_plus workflow with this pack's nodes.

Each node of that pack with an equivalent here is replaced where it stands (same id and position, its links
moved to the new node's sockets of the same meaning); an apply node that took an image gets an Encode Image
Prompt placed beside it, since encoding is a node of its own here. Everything else (core nodes, other packs,
groups) is untouched. What could not be carried over exactly is reported, and the report is put on the canvas
as a note.
"""

import re
from dataclasses import dataclass, field

from . import ours
from .graph import Workflow
from .plus_nodes import FACEID_CLIP_PRESETS, PRESET_FILES, PRESETS, TRANSFORMER_BLOCKS, WIDGETS, widget_values

LOADERS = {"IPAdapterModelLoader", "IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderCommunity",
           "IPAdapterUnifiedLoaderFaceID"}
FACEID_APPLY = {"IPAdapterFaceID", "IPAAdapterFaceIDBatch"}
IMAGE_APPLY = {"IPAdapter", "IPAdapterAdvanced", "IPAdapterBatch", "IPAdapterTiled", "IPAdapterTiledBatch",
               "IPAdapterMS", "IPAdapterClipVisionEnhancer", "IPAdapterClipVisionEnhancerBatch",
               "IPAdapterPreciseStyleTransfer", "IPAdapterPreciseStyleTransferBatch", "IPAdapterPreciseComposition",
               "IPAdapterPreciseCompositionBatch"}
STYLE_COMPOSITION = {"IPAdapterStyleComposition", "IPAdapterStyleCompositionBatch"}
EMBEDS_APPLY = {"IPAdapterEmbeds", "IPAdapterEmbedsBatch"}
PROMPT_MAKERS = {"IPAdapterEncoder", "IPAdapterCombineEmbeds", "IPAdapterLoadEmbeds"}
CONVERTIBLE = (LOADERS | IMAGE_APPLY | STYLE_COMPOSITION | EMBEDS_APPLY | PROMPT_MAKERS | FACEID_APPLY
               | {"IPAdapterSaveEmbeds", "IPAdapterInsightFaceLoader"})
WHY_LEFT = {  # node types with no equivalent here, and why
    "IPAdapterFaceIDKolors": "ComfyUI has no Kolors model of its own",
    "IPAdapterFromParams": "regional prompts are made here with one Apply IP-Adapter per region and its attn_mask",
    "IPAdapterRegionalConditioning": "regional prompts are made here with one Apply IP-Adapter per region and its "
                                     "attn_mask (the text part: ComfyUI's Conditioning (Set Mask))",
    "IPAdapterCombineParams": "regional prompts are made here with one Apply IP-Adapter per region",
    "IPAdapterNoise": "an image generator with no counterpart here; it still works as a negative_image source while "
                      "ComfyUI_IPAdapter_plus is installed",
    "PrepImageForClipVision": "Encode Image Prompt crops and resizes itself ('crop' input); the node still works "
                              "while ComfyUI_IPAdapter_plus is installed",
    "IPAdapterWeights": "frame weight schedules are typed into frame_weights of Apply IP-Adapter (advanced)",
    "IPAdapterWeightsFromStrategy": "frame weight schedules are typed into frame_weights",
    "IPAdapterPromptScheduleFromWeightsStrategy": "no counterpart here",
    "IPAdapterCombineWeights": "no counterpart here",
}
SIMPLE_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}


@dataclass
class Report:
    converted: list = field(default_factory=list)
    approximated: list = field(default_factory=list)
    left: list = field(default_factory=list)
    assumed: list = field(default_factory=list)

    def text(self) -> str:
        parts = ["Converted from ComfyUI_IPAdapter_plus by the IP-Adapter DCA pack.", ""]
        for title, items in (("Converted", self.converted), ("Approximated (closest setting here)", self.approximated),
                             ("Assumed (check these)", self.assumed), ("Left as they were", self.left)):
            if items:
                parts += [f"{title}:"] + [f"- {item}" for item in items] + [""]
        parts.append("This pack patches the middle block too and uses the IP-Adapter authors' negative (unconditional) "
                     "image tokens, so results can differ slightly from ComfyUI_IPAdapter_plus at the same settings.")
        return "\n".join(parts)

    def as_dict(self) -> dict:
        return {"converted": self.converted, "approximated": self.approximated, "assumed": self.assumed,
                "left": self.left}


def label(node) -> str:
    title = node.get("title")
    return f"#{node['id']} {node['type']}" + (f" ('{title}')" if title and title != node["type"] else "")


class Converter:
    def __init__(self, workflow: Workflow, model_files=None):
        self.wf = workflow
        self.files = model_files  # {"ipadapter": [names]} as ComfyUI lists them, or None (unknown)
        self.report = Report()
        self.loaders = {}  # cubiq loader id -> our LoadIPAdapterAndEncoder node
        self.family = {}  # our loader id -> "sd15" | "sdxl" (what its file is for, as far as names tell)
        self.faceid = {}  # our FaceID loader id -> {"lora_strength", "provider", "analyzer": our node or None, ...}
        self.analyzers = {}  # that pack's InsightFace loader id -> our Load Face Analyzer
        self.lora_given = set()  # our FaceID loaders whose LoRA an apply node already carries

    # --- helpers ------------------------------------------------------------------------------------------

    def through_reroutes(self, source):
        while source and source[0]["type"] == "Reroute":
            source = self.wf.source(source[0], source[0]["inputs"][0]["name"]) if source[0].get("inputs") else None
        return source

    def replace(self, node, kind, widgets, inputs, outputs, widget_names=None):
        """Put our `kind` where `node` is: same id and position; `inputs` {our input: source}; `outputs`
        {old slot: new slot}; links into converted widgets follow `widget_names` {theirs: ours}. Returns the new
        node and the old outputs whose links had to be dropped."""
        widget_links = {}
        for slot in node.get("inputs", []):
            ours_name = (widget_names or {}).get(slot["name"])
            if slot.get("widget") and ours_name and slot.get("link") is not None:
                widget_links[ours_name] = (self.wf.source(node, slot["name"]), slot["type"])
        consumers = {i: self.wf.consumers(node, i) for i in range(len(node.get("outputs", [])))}
        pos, node_id = node["pos"], node["id"]
        self.wf.remove_node(node)
        new = self.wf.add_node(ours.LAYOUT[kind], kind, pos, widgets, node_id=node_id, title=node.get("title"))
        # ours may be larger than theirs: it stays where it was unless it would then cover a neighbour
        new["pos"] = self.wf.free_spot(pos, new["size"], exclude=new, directions=("here", "below", "right", "above"))
        for name, source in inputs.items():
            if source is not None:
                self.wf.connect(source, new, name)
        for name, (source, kind_) in widget_links.items():
            self.wf.connect(source, new, name, widget_type=kind_)
        dropped = []
        for old_slot, targets in consumers.items():
            if old_slot in outputs:
                for target, name in targets:
                    self.wf.connect((new, outputs[old_slot]), target, name)
            elif targets:
                dropped.append(node["outputs"][old_slot]["name"])
        return new, dropped

    def replace_or_add(self, node, kind, widgets, staying, outputs):
        """(our node, a note for the report): ours in place of a loader `node`, or beside it when some of its users
        (`staying`) are left as they are and keep the original."""
        if not staying:
            return self.replace(node, kind, widgets, {}, outputs)[0], ""
        layout = ours.LAYOUT[kind]
        new = self.wf.add_node(layout, kind, self.wf.free_spot(node["pos"], layout["size"]), widgets)
        return new, f"; the original stays for {', '.join(label(t) for t in staying)}"

    def checkpoint_family(self, node):
        """SD1.5 or SDXL, from the name of the checkpoint feeding `node`'s model input (upstream through LoRAs and
        other model patches). None when no name tells."""
        seen, source = set(), self.wf.source(node, "model")
        while source and source[0]["id"] not in seen:
            origin = source[0]
            seen.add(origin["id"])
            names = [v for v in (origin.get("widgets_values") or []) if isinstance(v, str)
                     and v.lower().endswith((".safetensors", ".ckpt", ".gguf", ".sft", ".pt"))]
            if names and not any(s["name"] == "model" for s in origin.get("inputs", [])):
                name = names[0].lower()
                return ("sdxl" if re.search(r"xl|pony|illustrious|noob", name) else "sd15"), names[0]
            source = self.wf.source(origin, "model")
        return None

    def resolve_preset(self, node, preset):
        """(file name, family, checkpoint name or None, found in the listing?) for a unified loader's preset."""
        found = self.checkpoint_family(node)
        family, checkpoint = found if found else ("sd15", None)
        if PRESETS[preset][family == "sdxl"] is None:  # an SD1.5-only preset on SDXL, say: the file it names
            only = "sdxl" if family == "sd15" else "sd15"
            self.report.assumed.append(f"{label(node)}: '{preset}' exists only for {ours.FAMILY_NAMES[only]}; its "
                                       f"{ours.FAMILY_NAMES[only]} file is used")
            family = only
        index = int(family == "sdxl")
        for pattern in PRESETS[preset][index]:
            for name in sorted((self.files or {}).get("ipadapter", [])):
                if re.search(pattern, name, re.IGNORECASE):
                    return name, family, checkpoint, True
        return PRESET_FILES[preset][index], family, checkpoint, False

    # --- loaders ------------------------------------------------------------------------------------------

    def convert_loader(self, node):
        values = widget_values(node)
        unified = node["type"] != "IPAdapterModelLoader"
        if not unified:
            file_name, how = values["ipadapter_file"], "the same file"
            family = "sdxl" if "sdxl" in str(file_name).lower() else "sd15"
            faceid = "faceid" in str(file_name).lower()
            needs_clip = not faceid or "plus" in str(file_name).lower()
        else:
            preset = values["preset"]
            if preset not in PRESETS:
                self.report.left.append(f"{label(node)}: preset '{preset}': ComfyUI has no Kolors model of its own")
                return
            file_name, family, checkpoint, listed = self.resolve_preset(node, preset)
            how = f"preset '{preset}'"
            faceid = node["type"] == "IPAdapterUnifiedLoaderFaceID"
            needs_clip = not faceid or preset in FACEID_CLIP_PRESETS
            self.report.assumed.append(
                f"{label(node)}: {ours.FAMILY_NAMES[family]} "
                + (f"(from the checkpoint name {checkpoint})" if checkpoint else "(no checkpoint name tells)")
                + (f"; {file_name} matched the preset in models/ipadapter" if listed else
                   f"; {file_name} is the file that pack's README gives for the preset: pick yours on the node if "
                   "it is called otherwise"))
        # plain FaceID and portrait read only the face embedding: no image encoder to pair
        kind = "LoadIPAdapterAndEncoder" if needs_clip else "LoadIPAdapter"
        adapter_slot = 1 if unified else 0
        users = self.wf.consumers(node, adapter_slot)
        staying = [t for t, _ in users if t["type"] not in CONVERTIBLE]
        widgets = {"ipadapter_file": file_name, **({"clip_vision": ours.AUTO} if needs_clip else {})}
        found = "; the image encoder is found in models/clip_vision by content" if needs_clip else ""
        model_source = self.wf.source(node, "model") if unified else None
        model_users = self.wf.consumers(node, 0) if unified else []
        new, kept = self.replace_or_add(node, kind, widgets, staying, {adapter_slot: 0})
        if kept:
            self.report.converted.append(f"{label(node)} -> #{new['id']} {ours.DISPLAY[kind]} ({how}){kept}")
        else:
            for target, name in model_users:  # it passed the model through: link around it
                if model_source is not None:
                    self.wf.connect(model_source, target, name)
            self.report.converted.append(f"{label(node)} -> {ours.DISPLAY[kind]} ({how}{found})")
        self.loaders[node["id"]] = new
        self.family[new["id"]] = family
        if faceid:
            # that pack's unified loader put the separate _lora file on the model it passed on; here the Apply node
            # puts the same LoRA, from the adapter file, on its model. With the plain model loader that pack applied
            # no LoRA (a LoRA loader of the workflow may): ours is left off.
            strength = values["lora_strength"] if node["type"] == "IPAdapterUnifiedLoaderFaceID" else 0.0
            if not strength:
                self.report.assumed.append(f"{label(node)}: lora_strength 0 on its FaceID apply nodes: that pack "
                                           "applied no FaceID LoRA here (if the workflow loads the "
                                           "_lora.safetensors file with a LoRA loader, it still does)")
            provider = values.get("provider", "auto")
            self.faceid[new["id"]] = {"lora_strength": strength, "provider": provider if provider in ours.PROVIDERS
                                      else "auto", "analyzer": None, "origin": node}

    def loader_of(self, node):
        """Our loader feeding `node`'s ipadapter input (through reroutes), or None."""
        source = self.through_reroutes(self.wf.source(node, "ipadapter"))
        if source is None:
            return None
        if source[0]["type"] == "LoadIPAdapterAndEncoder":
            return source[0]
        return self.loaders.get(source[0]["id"])

    def encoder_sources(self, node, loader):
        """(adapter, clip vision) sources for an Encode Image Prompt made from `node`: the clip_vision it was given,
        else the one our loader found."""
        clip = self.wf.source(node, "clip_vision")
        return (loader, 0), clip if clip is not None else (loader, 1)

    # --- image prompts ------------------------------------------------------------------------------------

    def add_encode(self, near, loader, clip, image, negative=None, combine="concat", crop="center crop",
                   image_weights=""):
        layout = ours.LAYOUT["EncodeImagePrompt"]
        encode = self.wf.add_node(layout, "EncodeImagePrompt", self.wf.free_spot(near["pos"], layout["size"]),
                                  {"crop": crop, "combine": combine, "image_weights": image_weights})
        for name, source in (("ipadapter", (loader, 0)), ("clip_vision", clip), ("image", image),
                             ("negative_image", negative)):
            if source is not None:
                self.wf.connect(source, encode, name)
        return encode

    def convert_encoder(self, node, loader):
        values = widget_values(node)
        adapter, clip = self.encoder_sources(node, loader)
        weight = values["weight"]
        widgets = {"image_weights": "" if weight == 1 else f"{weight:g}"}
        inputs = {"ipadapter": adapter, "clip_vision": clip, "image": self.wf.source(node, "image")}
        new, dropped = self.replace(node, "EncodeImagePrompt", widgets, inputs, {0: 0})
        self.report.converted.append(f"{label(node)} -> Encode Image Prompt" + (
            " (its neg_embed output is not needed: Encode Image Prompt makes the negative itself)" if dropped else ""))
        if weight != 1:
            self.report.approximated.append(f"{label(node)}: weight {weight:g} scales that image's share of the "
                                            "attention here (image_weights), not its embedding")
        if self.wf.input_link(node, "mask") is not None:
            self.report.approximated.append(f"{label(node)}: its mask is not carried over (the encoder sees the whole "
                                            "image); crop the reference image to what matters instead")

    def convert_combine(self, node):
        method = widget_values(node)["method"]
        combine = method if method in ours.COMBINE_MODES else "average"
        inputs = {f"image_prompt_{i}": self.wf.source(node, f"embed{i}") for i in range(1, 6)}
        self.replace(node, "CombineImagePrompts", {"combine": combine}, inputs, {0: 0})
        self.report.converted.append(f"{label(node)} -> Combine Image Prompts ({combine})")
        if combine != method:
            self.report.approximated.append(f"{label(node)}: '{method}' does not exist here; 'average' is used")

    def convert_load_embeds(self, node):
        users = [t for t, _ in self.wf.consumers(node, 0)]
        loader = next((self.loader_of(t) for t in users if self.loader_of(t) is not None), None)
        name = str(widget_values(node)["embeds"] or "embeds.ipadpt")
        if loader is None:
            self.report.left.append(f"{label(node)}: no converted IP-Adapter uses its embeds")
            return
        prefix = re.sub(r"(_\d{5})?_?\.ipadpt$", "", name)  # that pack writes <prefix>_NNNNN.ipadpt
        remade = f"{prefix}_00001.ipprompt.safetensors"
        self.replace(node, "LoadImagePrompt", {"prompt_file": f"{remade} [output]"}, {"ipadapter": (loader, 0)}, {0: 0})
        self.report.converted.append(f"{label(node)} -> Load Image Prompt")
        self.report.approximated.append(
            f"{label(node)}: {name} is a pickle file, which this pack never opens (it could run code). Remake it: in the "
            f"workflow that saved it, converted, Save Image Prompt (filename_prefix '{prefix}') writes {remade} to "
            "ComfyUI's output folder; then pick that file here")

    def convert_save_embeds(self, node):
        values = widget_values(node)
        self.replace(node, "SaveImagePrompt", {"filename_prefix": values["filename_prefix"]},
                     {"image_prompt": self.wf.source(node, "embeds")}, {})
        self.report.converted.append(f"{label(node)} -> Save Image Prompt (a .ipprompt.safetensors file, not a pickle)")

    # --- apply nodes --------------------------------------------------------------------------------------

    def weights_of(self, node, values, family):
        """Our (weight_type, style_boost, composition_boost, layer_weights) for one of that pack's apply nodes."""
        kind = node["type"]
        if kind == "IPAdapter":
            return SIMPLE_TYPES.get(values["weight_type"], "linear"), None, None, ""
        if kind.startswith("IPAdapterPreciseStyle"):
            return "style transfer precise", values["style_boost"], None, ""
        if kind.startswith("IPAdapterPreciseComposition"):
            return "composition precise", None, values["composition_boost"], ""
        weight_type = values.get("weight_type", "linear")
        text = (values.get("layer_weights") or "").strip()
        if not text:
            return weight_type, None, None, ""
        blocks = TRANSFORMER_BLOCKS[family]
        entries = ["all = 0"]
        for part in re.split(r",", text):
            index, _, value = part.partition(":")
            index, value = index.strip(), value.strip()
            if not index.isdigit() or int(index) >= len(blocks):
                raise ValueError(f"{label(node)}: layer_weights entry '{part.strip()}' is not 'index:value' with an "
                                 f"index 0..{len(blocks) - 1}")
            entries.append(f"{blocks[int(index)]} = {value}")
        if weight_type not in ("style transfer precise", "composition precise"):
            weight_type = "linear"
        self.report.approximated.append(
            f"{label(node)}: layer_weights '{text}' (that pack's transformer indices) is written as "
            f"'{', '.join(entries)}' for {ours.FAMILY_NAMES[family]}")
        return weight_type, None, None, ", ".join(entries)

    def frame_weight_link(self, node):
        """A weight that arrives as a per-frame list (IPAdapterWeights) has no socket here."""
        source = self.wf.source(node, "weight")
        if source and source[0]["type"] in ("IPAdapterWeights", "IPAdapterWeightsFromStrategy",
                                            "IPAdapterCombineWeights"):
            self.wf.disconnect(node, "weight")
            self.report.approximated.append(f"{label(node)}: its weight came from {label(source[0])} (a weight per "
                                            "frame); type those weights into frame_weights, comma-separated")

    def place_apply(self, node, kind, widgets, inputs, extra_notes=()):
        names = {"weight": "weight", "start_at": "start_percent", "end_at": "end_percent",
                 "weight_style": "style_weight", "weight_composition": "composition_weight"}
        new, dropped = self.replace(node, kind, widgets, inputs, {0: 0}, widget_names=names)
        note = f"{label(node)} -> {ours.DISPLAY[kind]}" + (f" ({'; '.join(extra_notes)})" if extra_notes else "")
        self.report.converted.append(note)
        if dropped:
            self.report.approximated.append(f"{label(node)}: its {', '.join(dropped)} output(s) have no counterpart; "
                                            "their links were removed")
        return new

    def convert_image_apply(self, node, loader):
        values = widget_values(node)
        family = self.family[loader["id"]]
        weight_type, style_boost, composition_boost, layer_weights = self.weights_of(node, values, family)
        kv_scaling = values.get("embeds_scaling", "V only")
        per_frame = node["type"].endswith("Batch")
        tiled = node["type"].startswith("IPAdapterTiled")
        adapter, clip = self.encoder_sources(node, loader)
        self.frame_weight_link(node)
        encode = self.add_encode(node, loader, clip, self.wf.source(node, "image"), self.wf.source(node, "image_negative"),
                                 values.get("combine_embeds", "concat"), "tiles" if tiled else "center crop")
        if tiled:
            self.report.approximated.append(f"{label(node)}: tiles here are overlapping squares of the image's short "
                                            "side (crop 'tiles'), not that pack's 256-pixel grid"
                                            + ("; sharpening is not done" if values.get("sharpening") else ""))
        if node["type"].startswith("IPAdapterClipVisionEnhancer"):
            self.report.approximated.append(f"{label(node)}: the ClipVision enhancer's sub-tiles are not made here; "
                                            "the whole image is encoded once")
        common = {"weight": values["weight"], "start_percent": values["start_at"], "end_percent": values["end_at"]}
        inputs = {"model": self.wf.source(node, "model"), "ipadapter": adapter, "image_prompt": (encode, 0),
                  "attn_mask": self.wf.source(node, "attn_mask")}
        simple = weight_type == "linear" and kv_scaling == "V only" and not per_frame and not layer_weights
        if simple:
            return self.place_apply(node, "ApplyIPAdapter", common, inputs, [f"with #{encode['id']} Encode Image Prompt"])
        widgets = dict(common, weight_type=weight_type, kv_scaling=kv_scaling, per_frame=per_frame,
                       layer_weights=layer_weights)
        if style_boost is not None:
            widgets["style_boost"] = style_boost
        if composition_boost is not None:
            widgets["composition_boost"] = composition_boost
        notes = [f"with #{encode['id']} Encode Image Prompt"] + (["per_frame on: image i steers frame i"] if per_frame else [])
        return self.place_apply(node, "ApplyIPAdapterAdvanced", widgets, inputs, notes)

    def convert_style_composition(self, node, loader):
        values = widget_values(node)
        adapter, clip = self.encoder_sources(node, loader)
        negative = self.wf.source(node, "image_negative")
        combine = values.get("combine_embeds", "concat")
        style = self.add_encode(node, loader, clip, self.wf.source(node, "image_style"), negative, combine)
        composition = self.add_encode(node, loader, clip, self.wf.source(node, "image_composition"), negative, combine)
        if values["expand_style"]:
            self.report.approximated.append(f"{label(node)}: expand_style (style on every layer but the composition "
                                            "one) is not available; the style goes to the style layers")
        if node["type"].endswith("Batch"):
            self.report.approximated.append(f"{label(node)}: one reference per frame is not available for Style & "
                                            "Composition here; every frame gets all the images")
        widgets = {"style_weight": values["weight_style"], "composition_weight": values["weight_composition"],
                   "start_percent": values["start_at"], "end_percent": values["end_at"],
                   "kv_scaling": values["embeds_scaling"]}
        inputs = {"model": self.wf.source(node, "model"), "ipadapter": adapter, "style_prompt": (style, 0),
                  "composition_prompt": (composition, 0)}
        if self.wf.input_link(node, "attn_mask") is not None:
            self.report.approximated.append(f"{label(node)}: Style & Composition takes no mask here; the mask is not "
                                            "carried over")
        return self.place_apply(node, "ApplyIPAdapterStyleComposition", widgets, inputs,
                                [f"with #{style['id']} and #{composition['id']} Encode Image Prompt"])

    def convert_embeds_apply(self, node, loader):
        values = widget_values(node)
        prompt = self.through_reroutes(self.wf.source(node, "pos_embed"))
        if prompt is None or prompt[0]["type"] not in ("EncodeImagePrompt", "CombineImagePrompts", "LoadImagePrompt"):
            self.report.left.append(f"{label(node)}: its pos_embed does not come from a node that could be converted")
            return None
        negative = self.through_reroutes(self.wf.source(node, "neg_embed"))
        if negative is not None:
            if negative[0]["type"] == "EncodeImagePrompt" and prompt[0]["type"] == "EncodeImagePrompt":
                image = self.wf.source(negative[0], "image")
                if image is not None:
                    self.wf.connect(image, prompt[0], "negative_image")
                self.report.converted.append(f"{label(node)}: its neg_embed's image is now the negative_image of "
                                             f"#{prompt[0]['id']}")
            else:
                self.report.approximated.append(f"{label(node)}: its neg_embed is not carried over; the adapter's own "
                                                "negative is used")
        weight_type = values["weight_type"]
        per_frame = node["type"].endswith("Batch")
        common = {"weight": values["weight"], "start_percent": values["start_at"], "end_percent": values["end_at"]}
        inputs = {"model": self.wf.source(node, "model"), "ipadapter": (loader, 0), "image_prompt": prompt,
                  "attn_mask": self.wf.source(node, "attn_mask")}
        self.frame_weight_link(node)
        if weight_type == "linear" and values["embeds_scaling"] == "V only" and not per_frame:
            return self.place_apply(node, "ApplyIPAdapter", common, inputs)
        widgets = dict(common, weight_type=weight_type, kv_scaling=values["embeds_scaling"], per_frame=per_frame)
        return self.place_apply(node, "ApplyIPAdapterAdvanced", widgets, inputs)

    # --- FaceID -------------------------------------------------------------------------------------------

    def convert_insightface_loader(self, node):
        values = widget_values(node)
        widgets = {"pack": values["model_name"],
                   "provider": values["provider"] if values["provider"] in ours.PROVIDERS else "auto"}
        staying = [t for t, _ in self.wf.consumers(node, 0) if t["type"] not in FACEID_APPLY]  # another pack's
        new, kept = self.replace_or_add(node, "LoadFaceAnalyzer", widgets, staying, {0: 0})
        self.analyzers[node["id"]] = new
        self.report.converted.append(f"{label(node)} -> #{new['id']} Load Face Analyzer ({widgets['pack']}: insightface "
                                     f"when it is installed, else onnxruntime on the same files{kept})")

    def analyzer_for(self, node, loader):
        """Our Load Face Analyzer for a FaceID apply node: its insightface input's, else one beside its loader (that
        pack's unified loader loads buffalo_l itself)."""
        source = self.through_reroutes(self.wf.source(node, "insightface"))
        if source is not None and source[0]["id"] in self.analyzers:
            return self.analyzers[source[0]["id"]]
        info = self.faceid[loader["id"]]
        if info["analyzer"] is None:
            layout = ours.LAYOUT["LoadFaceAnalyzer"]
            info["analyzer"] = self.wf.add_node(layout, "LoadFaceAnalyzer", self.wf.free_spot(loader["pos"], layout["size"]),
                                                {"pack": "buffalo_l", "provider": info["provider"]})
            self.report.converted.append(f"#{info['analyzer']['id']} Load Face Analyzer added for "
                                         f"{label(info['origin'])} (buffalo_l, as that pack loads it)")
        return info["analyzer"]

    def convert_faceid_apply(self, node, loader):
        values = widget_values(node)
        info = self.faceid.get(loader["id"])
        if info is None:
            self.report.left.append(f"{label(node)}: its ipadapter is not a FaceID adapter")
            return None
        analyzer = self.analyzer_for(node, loader)
        crops = self.wf.consumers(node, 1)  # its face_image output: the crops, now Embed Faces' face_crops
        for target, name in crops:
            self.wf.disconnect(target, name)
        layout = ours.LAYOUT["EmbedFaces"]
        # that pack takes insightface's first face, the one with the highest detection score
        embed = self.wf.add_node(layout, "EmbedFaces", self.wf.free_spot(node["pos"], layout["size"]),
                                 {"select": "highest score"})
        self.wf.connect((analyzer, 0), embed, "face_analyzer")
        image = self.wf.source(node, "image")
        if image is not None:
            self.wf.connect(image, embed, "image")
        for target, name in crops:
            self.wf.connect((embed, 1), target, name)
        layout = ours.LAYOUT["EncodeImagePrompt"]
        encode = self.wf.add_node(layout, "EncodeImagePrompt", self.wf.free_spot(node["pos"], layout["size"]),
                                  {"combine": values["combine_embeds"]})
        self.wf.connect((loader, 0), encode, "ipadapter")
        self.wf.connect((embed, 0), encode, "faces")
        if loader["type"] == "LoadIPAdapterAndEncoder":  # FaceID-Plus: CLIP sees the face crop
            self.wf.connect(self.encoder_sources(node, loader)[1], encode, "clip_vision")
            if self.family[loader["id"]] == "sdxl":
                self.report.approximated.append(f"{label(node)}: the face crop CLIP sees is 224 px (the authors' size), "
                                                "not that pack's 256 px for SDXL")
        if self.wf.input_link(node, "image_negative") is not None:
            self.report.approximated.append(f"{label(node)}: its image_negative is not used: FaceID's negative is the "
                                            "zero identity here, as the authors make it")
        weight_type, _, _, _ = self.weights_of(node, values, self.family[loader["id"]])
        lora = 0.0 if loader["id"] in self.lora_given else info["lora_strength"]
        self.lora_given.add(loader["id"])  # that pack put it on the model once, in the loader
        widgets = {"weight": values["weight"], "start_percent": values["start_at"], "end_percent": values["end_at"],
                   "weight_type": weight_type, "kv_scaling": values["embeds_scaling"],
                   "per_frame": node["type"] == "IPAAdapterFaceIDBatch", "s_scale": values["weight_faceidv2"],
                   "lora_strength": lora}
        inputs = {"model": self.wf.source(node, "model"), "ipadapter": (loader, 0), "image_prompt": (encode, 0),
                  "attn_mask": self.wf.source(node, "attn_mask")}
        notes = [f"with #{embed['id']} Embed Faces and #{encode['id']} Encode Image Prompt",
                 f"weight_faceidv2 {values['weight_faceidv2']:g} as s_scale",
                 f"the FaceID LoRA from the adapter file at lora_strength {lora:g}"]
        return self.place_apply(node, "ApplyIPAdapterAdvanced", widgets, inputs, notes)

    # --- the whole graph ----------------------------------------------------------------------------------

    def run(self):
        """Loaders first, then what makes image prompts, then the apply nodes that use them, then what saves them."""
        def nodes(kinds):
            return [n for n in list(self.wf.nodes.values()) if n["type"] in kinds]

        for node in nodes(LOADERS):
            self.convert_loader(node)
        for node in nodes({"IPAdapterInsightFaceLoader"}):
            self.convert_insightface_loader(node)
        def with_loader(kinds, convert):  # each node of these kinds, with the converted loader it uses
            for node in nodes(kinds):
                loader = self.loader_of(node)
                if loader is None:
                    self.report.left.append(f"{label(node)}: its ipadapter does not come from an IP-Adapter loader "
                                            "that could be converted")
                else:
                    convert(node, loader)

        with_loader(FACEID_APPLY, self.convert_faceid_apply)
        with_loader({"IPAdapterEncoder"}, self.convert_encoder)
        with_loader(STYLE_COMPOSITION, self.convert_style_composition)
        with_loader(IMAGE_APPLY, self.convert_image_apply)
        for node in nodes({"IPAdapterLoadEmbeds"}):
            self.convert_load_embeds(node)
        for node in nodes({"IPAdapterCombineEmbeds"}):
            self.convert_combine(node)
        with_loader(EMBEDS_APPLY, self.convert_embeds_apply)
        for node in nodes({"IPAdapterSaveEmbeds"}):
            self.convert_save_embeds(node)
        for node in self.wf.nodes.values():
            if node["type"] in WHY_LEFT:
                self.report.left.append(f"{label(node)}: {WHY_LEFT[node['type']]}")
            elif node["type"] in WIDGETS and node["type"] not in CONVERTIBLE:  # those said why already
                self.report.left.append(f"{label(node)}: no counterpart here")


def convert_workflow(data: dict, model_files=None):
    """(converted workflow, Report). `model_files`: {"ipadapter": [file names]} when the folder can be listed, so
    unified-loader presets resolve to the user's own files; without it the preset's usual file name is used."""
    converter = Converter(Workflow(data), model_files)
    if not any(n["type"] in WIDGETS for n in converter.wf.nodes.values()):
        return converter.wf.finish(), converter.report
    converter.run()
    note = converter.report.text()
    wf = converter.wf
    layout = ours.LAYOUT["Note"]
    left = min((n["pos"][0] for n in wf.nodes.values()), default=0)
    top = min((n["pos"][1] for n in wf.nodes.values()), default=0)
    wf.add_node(layout, "Note", wf.free_spot([left, top], layout["size"]), {"text": note},
                title="Converted from IPAdapter Plus")
    return wf.finish(), converter.report
