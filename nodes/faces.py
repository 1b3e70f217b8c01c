"""Load Face Analyzer and Embed Faces: the face backend's two nodes, for the FaceID adapters.

Nothing face-related is imported with the pack: ipadapter_core.faces needs numpy only at import and imports
onnxruntime, insightface or cv2 when a node runs, so a broken or missing backend only ever fails these nodes, with
what to install. The models are never downloaded: they are read from models/insightface/models/<pack>/.
"""

import os
from dataclasses import dataclass

import folder_paths
import numpy as np
import torch

from ..ipadapter_core import faces as face_backend
from .common import CATEGORY, NodeInputError, logger, register_model_folder

ANALYZER_TYPE = "IPA_DCA_FACE_ANALYZER"
FACES_TYPE = "IPA_DCA_FACES"
FOLDER = "insightface"
PROVIDERS = ("auto",) + tuple(face_backend.PROVIDERS)
NO_FACE = ("error", "skip")
MIN_SIDE = 32  # a face in a smaller image is too small for the detector and the 112 px recognizer


def register_face_folder():
    """models/insightface, the folder the other face packs use."""
    register_model_folder(FOLDER, {".onnx"})


def face_roots():
    """The folders that hold insightface/models/<pack>/ (face_backend.find_model_pack's models_root), default first."""
    paths = folder_paths.get_folder_paths(FOLDER) if FOLDER in folder_paths.folder_names_and_paths else []
    roots = [os.path.dirname(os.path.abspath(p)) for p in paths if os.path.basename(os.path.normpath(p)) == FOLDER]
    return roots or [folder_paths.models_dir]


def model_packs():
    """buffalo_l first (the h94 FaceID adapters' pack, listed even before it is installed), then every other folder."""
    found = []
    for root in face_roots():
        base = os.path.join(root, FOLDER, "models")
        if os.path.isdir(base):
            found += sorted(n for n in os.listdir(base) if os.path.isdir(os.path.join(base, n)))
    return list(dict.fromkeys(["buffalo_l"] + found))


def root_of(pack):
    return next((r for r in face_roots() if os.path.isdir(os.path.join(r, FOLDER, "models", pack))), face_roots()[0])


@dataclass(frozen=True, eq=False)
class FaceAnalyzer:
    """What flows through an IPA_DCA_FACE_ANALYZER socket."""

    analyzer: object  # face_backend.OnnxFaceAnalyzer or face_backend.InsightFaceAnalyzer
    pack: str


@dataclass(frozen=True, eq=False)
class FaceBatch:
    """What flows through an IPA_DCA_FACES socket: one face_backend.Face per input image, found or not (`found=False`
    keeps a faceless frame's place in a batch, so it can get weight 0). Each face holds its normalised and raw
    identity, the recognizer that made it, box, landmarks, score and the aligned BGR crop."""

    faces: tuple
    recognizer: str  # the recognizer's file name, e.g. w600k_r50.onnx: the embedding space
    analyzer: str  # backend and providers, for messages
    crop_size: int

    @property
    def found(self):
        return torch.tensor([f.found for f in self.faces])


_analyzers: dict = {}  # (folder, file stamps, backend, provider) -> FaceAnalyzer


class LoadFaceAnalyzer:
    NODE = "Load Face Analyzer"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pack": (model_packs(), {
                    "default": "buffalo_l",
                    "tooltip": "The insightface model pack in ComfyUI/models/insightface/models/. The h94 FaceID "
                               "adapters were trained on buffalo_l's embeddings; nothing is downloaded.",
                }),
                "backend": (list(face_backend.BACKENDS), {
                    "default": "auto",
                    "tooltip": "'auto' uses insightface when it is installed (1.0 or newer), else onnxruntime alone, "
                               "which reads the same files and gives the same faces.",
                }),
                "provider": (list(PROVIDERS), {
                    "default": "auto",
                    "tooltip": "Where onnxruntime runs the face models. 'auto' takes what this onnxruntime has "
                               "(CUDA with onnxruntime-gpu, else CPU).",
                }),
            }
        }

    RETURN_TYPES = (ANALYZER_TYPE,)
    RETURN_NAMES = ("face_analyzer",)
    OUTPUT_TOOLTIPS = ("The face detector and recognizer. Connect it to Embed Faces.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads a face detector and recognizer for the FaceID adapters from models/insightface/models/<pack>/ "
        "(unzip buffalo_l.zip there). Needs onnxruntime or insightface: pip install onnxruntime. Nothing is "
        "downloaded. The InsightFace models are for non-commercial use."
    )

    def load(self, pack, backend="auto", provider="auto"):
        root = root_of(pack)
        folder = os.path.join(root, FOLDER, "models", pack)
        stamps = tuple((n, os.path.getmtime(os.path.join(folder, n))) for n in sorted(os.listdir(folder))) \
            if os.path.isdir(folder) else ()
        key = (folder, stamps, backend, provider)
        if key not in _analyzers:
            try:
                made = face_backend.make_analyzer(root, pack, backend, provider)
            except face_backend.FaceModelError as e:
                raise NodeInputError(f"{self.NODE}: {e}") from None
            for warning in made.warnings:
                logger.warning("%s: %s", self.NODE, warning)
            logger.info("%s: %s from %s", self.NODE, made.name, folder)
            _analyzers.clear()  # one analyzer at a time: its sessions hold the models
            _analyzers[key] = FaceAnalyzer(made, pack)
        return (_analyzers[key],)


def to_bgr(image, index):
    """One ComfyUI image [H, W, C] (RGB float 0..1) -> the backend's BGR uint8 [H, W, 3]."""
    channels = image.shape[-1]
    if channels not in (1, 3, 4):
        raise NodeInputError(f"Embed Faces: image {index + 1} has {channels} channels; expected 1 (gray), 3 (RGB) or "
                             "4 (RGBA).")
    rgb = image[..., :3] if channels != 1 else image.expand(-1, -1, 3)
    pixels = (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(pixels[..., ::-1])


class EmbedFaces:
    NODE = "Embed Faces"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_analyzer": (ANALYZER_TYPE, {"tooltip": "The face models from Load Face Analyzer."}),
                "image": ("IMAGE", {"tooltip": "One or more photos (a batch): one face is taken from each."}),
                "select": (list(face_backend.SELECT_MODES), {
                    "default": "largest",
                    "tooltip": "Which face of a photo with several: the largest; the one detected with the highest "
                               "score (insightface's first face); or by position, counting from the left (see index).",
                }),
                "index": ("INT", {
                    "default": 0, "min": 0, "max": 63,
                    "tooltip": "With 'index from left': 0 is the leftmost face, 1 the next, ...",
                }),
                "no_face": (list(NO_FACE), {
                    "default": "error",
                    "tooltip": "A photo without a face: 'error' stops and names the image; 'skip' keeps going and that "
                               "image (or video frame) gets weight 0. If no image has a face, the model is left as it "
                               "was.",
                }),
                "crop_size": ("INT", {
                    "default": 224, "min": 112, "max": 1024, "step": 16,
                    "tooltip": "Size of the aligned face crop that FaceID-Plus shows CLIP (a multiple of 112 or 128). "
                               "224 is what the authors use (CLIP's own input size), for SD1.5 and SDXL alike.",
                }),
            }
        }

    RETURN_TYPES = (FACES_TYPE, "IMAGE")
    RETURN_NAMES = ("faces", "face_crops")
    OUTPUT_TOOLTIPS = (
        "The face of each image: its identity embedding, box and crop. Connect it to Encode Image Prompt's 'faces'.",
        "The aligned face crops, to check which face was taken (black for an image without a face).",
    )
    FUNCTION = "embed"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Finds the face in each image and computes its identity embedding (ArcFace) and aligned crop, for the FaceID "
        "adapters. One face per image; a batch of photos of one person gives a stronger likeness."
    )

    def embed(self, face_analyzer, image, select="largest", index=0, no_face="error", crop_size=224):
        node = self.NODE
        if not isinstance(face_analyzer, FaceAnalyzer):
            raise NodeInputError(f"{node}: 'face_analyzer' must come from this pack's Load Face Analyzer node.")
        for name, value, allowed in (("select", select, face_backend.SELECT_MODES), ("no_face", no_face, NO_FACE)):
            if value not in allowed:
                raise NodeInputError(f"{node}: '{name}' must be one of {list(allowed)}, got {value!r}.")
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise NodeInputError(f"{node}: 'image' must be an IMAGE batch [batch, height, width, channels], got {shape}.")
        if image.shape[0] == 0:
            raise NodeInputError(f"{node}: 'image' is an empty batch (0 images). Connect at least one photo.")
        if min(image.shape[1:3]) < MIN_SIDE:
            raise NodeInputError(f"{node}: the images are {image.shape[2]}x{image.shape[1]} pixels; a face needs at "
                                 f"least {MIN_SIDE} pixels on each side of the photo (a few hundred is best).")
        try:
            face_backend.check_crop_size(crop_size)
        except ValueError as e:
            raise NodeInputError(f"{node}: 'crop_size': {e}") from None
        analyzer = face_analyzer.analyzer
        recognizer = getattr(analyzer, "recognizer_name", analyzer.pack.recognizer_name)  # insightface's own choice
        faces = []
        for i in range(image.shape[0]):
            where = f"image {i + 1} of {image.shape[0]}" if image.shape[0] > 1 else "the image"
            candidates, padded = face_backend.analyze_with_margin(analyzer, to_bgr(image[i], i), crop_size)
            if padded:
                logger.info("%s: the face in %s was found only with a margin around the photo (it fills the frame)",
                            node, where)
            found = face_backend.select_face(candidates, select, index)
            if found is None:
                what = (f"fewer than {index + 1} faces" if select == "index from left" else "no face")
                if no_face == "error":
                    raise NodeInputError(
                        f"{node}: {analyzer.name} found {what} in {where}, also with a margin added around it. Use a "
                        "photo where the face is clearly visible (upper body framing works best), or set no_face to "
                        "'skip' to give such images weight 0.")
                logger.info("%s: %s in %s: it gets weight 0", node, what, where)
                found = face_backend.no_face(crop_size, recognizer)
            faces.append(found)
        if not any(f.found for f in faces):
            logger.warning("%s: no face in any of the %d image(s); the FaceID adapter will leave the model unchanged.",
                           node, len(faces))
        crops = torch.from_numpy(np.stack([f.crop[..., ::-1] for f in faces]).copy()).float() / 255  # RGB to show
        return (FaceBatch(tuple(faces), recognizer, analyzer.name, crop_size), crops)
