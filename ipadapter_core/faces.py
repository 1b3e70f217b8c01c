"""The face backend: find a face, its 5 landmarks, its ArcFace embedding and an aligned crop.

Independent of ComfyUI and of torch. At import time this module needs only numpy and the standard library;
onnxruntime, insightface and cv2 are imported inside the functions that use them, so the pack always loads,
even where insightface's compiled parts are broken (numpy ABI errors of old Windows builds, cubiq#850).
Nothing here downloads: the models are the insightface model-zoo files the user put in
`<ComfyUI models>/insightface/models/<pack>/` (the folder cubiq, PuLID and the Kolors nodes use too).

Two backends read the same files and give the same `Face` objects:
  - `InsightFaceAnalyzer` wraps `insightface.app.FaceAnalysis` (insightface >= 1.0);
  - `OnnxFaceAnalyzer` needs only onnxruntime and re-implements what FaceAnalysis does with
    det_size (640, 640) (faceid-kolors.md §2.3): letterbox, SCRFD decode, NMS, norm_crop, ArcFace.
    With cv2 importable it resizes, warps and normalises through the same cv2 calls, and equals insightface
    to the last bit on the synthetic models of tests/synthetic_faces.py; without cv2 it uses numpy bilinear
    sampling, which may differ from cv2's fixed-point arithmetic by 1 in some pixel values.
`make_analyzer` picks one. Model files are routed as insightface routes them (`find_model_pack`).

Conventions: images are BGR uint8 [H, W, 3] (insightface's order; a ComfyUI IMAGE is RGB float, the caller
converts), boxes and landmarks are in image pixels, embeddings are float32 as the recognizer returns them.
"""

import glob
import os
import sys
from dataclasses import dataclass, field, replace

import numpy as np


class FaceModelError(ValueError):
    """A face model folder, backend or provider problem, worded for the ComfyUI user."""


# What each known pack holds; the recognizer decides the embedding space.
PACKS = {
    "buffalo_l": {
        "detector": "det_10g.onnx", "recognizer": "w600k_r50.onnx", "zip": "buffalo_l.zip",
        "files": ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx"),
    },
    "antelopev2": {
        "detector": "scrfd_10g_bnkps.onnx", "recognizer": "glintr100.onnx", "zip": "antelopev2.zip",
        "files": ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"),
    },
}
EMBEDDING_SPACES = {
    "w600k_r50.onnx": "buffalo_l's WebFace600K ResNet-50 (the h94 FaceID adapters' embedding space)",
    "glintr100.onnx": "antelopev2's Glint360K ResNet-100 (the embedding space of Kolors FaceID, InstantID and PuLID)",
}
DET_SIZE = (640, 640)  # (width, height), as FaceAnalysis.prepare(det_size=(640, 640))
DET_THRESH, NMS_THRESH = 0.5, 0.4
BACKENDS = ("auto", "insightface", "onnxruntime")
SELECT_MODES = ("largest", "highest score", "index from left")


# ---------------------------------------------------------------------------------------------------------
# Reading an ONNX graph's inputs, outputs and first node names without the onnx package

@dataclass
class OnnxGraph:
    inputs: list  # [(name, dims)] without initializers, as onnxruntime's get_inputs(); dims: int, str or None
    outputs: list  # [(name, dims)]
    node_names: list  # names of the first 8 nodes (insightface looks there for mxnet exports)


def _varint(f):
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise ValueError("the file ends in the middle of the model")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("not an ONNX model")


def _fields(f, start, end):
    """(field number, value) of each protobuf field in [start, end): ints for varints, (offset, length) for
    length-delimited fields, which are left unread; fixed-width fields are skipped."""
    f.seek(start)
    while f.tell() < end:
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            length = _varint(f)
            at = f.tell()
            if at + length > end:
                raise ValueError("the file ends in the middle of the model")
            yield number, (at, length)
            f.seek(at + length)
        else:
            raise ValueError("not an ONNX model")
    if f.tell() != end:
        raise ValueError("not an ONNX model")


def _children(f, span, number):
    """The values of field `number` inside the length-delimited field at span (offset, length)."""
    if not isinstance(span, tuple):
        raise ValueError("not an ONNX model")
    return [v for n, v in list(_fields(f, span[0], span[0] + span[1])) if n == number]


def _text(f, span):
    if not isinstance(span, tuple):
        raise ValueError("not an ONNX model")
    f.seek(span[0])
    return f.read(span[1]).decode("utf-8", "replace")


def _value_info(f, span):
    """(name, dims) of a ValueInfoProto: name 1, type 2 -> tensor_type 1 -> shape 2 -> dim 1 -> value 1 | param 2."""
    names = _children(f, span, 1)
    dims = []
    for kind in _children(f, span, 2):
        for tensor in _children(f, kind, 1):
            for shape in _children(f, tensor, 2):
                for dim in _children(f, shape, 1):
                    value, param = _children(f, dim, 1), _children(f, dim, 2)
                    dims.append(value[-1] if value else _text(f, param[-1]) if param else None)
    return (_text(f, names[-1]) if names else ""), dims


def read_onnx_graph(path):
    """The graph's inputs, outputs and first node names, read straight from the protobuf.

    Tensors are skipped, never read, so a 170 MB recognizer is summarised in milliseconds and no onnx or
    onnxruntime import is needed. Raises ValueError for files that are not ONNX models.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 1024 and f.read(24).startswith(b"version https://git-lfs"):
            raise ValueError("a Git LFS pointer, not the model itself: download the real file")
        graphs = [v for n, v in _fields(f, 0, size) if n == 7 and isinstance(v, tuple)]  # ModelProto.graph
        if not graphs:
            raise ValueError("not an ONNX model (no graph)")
        inputs, outputs, node_names, initializers = [], [], [], set()
        for number, value in list(_fields(f, graphs[-1][0], graphs[-1][0] + graphs[-1][1])):
            if number == 1 and len(node_names) < 8:  # node; NodeProto.name is field 3
                names = _children(f, value, 3)
                node_names.append(_text(f, names[-1]) if names else "")
            elif number == 5:  # initializer; TensorProto.name is field 8
                initializers.update(_text(f, v) for v in _children(f, value, 8))
            elif number == 11:
                inputs.append(_value_info(f, value))
            elif number == 12:
                outputs.append(_value_info(f, value))
    return OnnxGraph([i for i in inputs if i[0] not in initializers], outputs, node_names)


def route(graph):
    """The task insightface's ModelRouter gives a model, from its graph (tensor names never matter):
    "detection", "landmark", "genderage", "inswapper", "recognition", or "" when it would be ignored."""
    if len(graph.outputs) >= 5:
        return "detection"
    dims = graph.inputs[0][1] if graph.inputs else []
    if len(dims) != 4:
        return ""
    h, w = dims[2], dims[3]
    if h == 192 and w == 192:
        return "landmark"
    if h == 96 and w == 96:
        return "genderage"
    if len(graph.inputs) == 2 and h == 128 and w == 128:
        return "inswapper"
    if isinstance(h, int) and h == w and h >= 112 and h % 16 == 0:
        return "recognition"
    return ""


def is_mxnet_export(graph):
    """insightface's ArcFaceONNX test: Sub and Mul among the first 8 node names mean the graph normalises
    its input itself, so it is fed raw pixels (mean 0, std 1) instead of (x - 127.5) / 127.5."""
    names = graph.node_names[:8]
    return (any(n.startswith(("Sub", "_minus")) for n in names)
            and any(n.startswith(("Mul", "_mul")) for n in names))


# ---------------------------------------------------------------------------------------------------------
# Model packs on disk

@dataclass
class ModelPack:
    pack: str  # "buffalo_l", "antelopev2" or the folder name the user chose
    folder: str  # <models_root>/insightface/models/<pack>
    detector: str  # path of the detection model insightface would use
    recognizer: str  # path of the recognition model insightface would use
    recognizer_name: str  # its file name, e.g. "w600k_r50.onnx": which embedding space the faces are in
    warnings: list = field(default_factory=list)  # things the user should know; not errors
    files: list = field(default_factory=list)  # [(file name, task or "")] of every .onnx, in load order

    @property
    def root(self):
        """The folder insightface calls root (it loads <root>/models/<pack>)."""
        return os.path.dirname(os.path.dirname(self.folder))


def _expected_files(pack):
    known = PACKS.get(pack)
    if known:
        return f"{known['detector']} and {known['recognizer']}"
    return "a face detector (SCRFD, like det_10g.onnx) and a recognizer (ArcFace, like w600k_r50.onnx)"


def _where_from(pack):
    known = PACKS.get(pack)
    if not known:
        return "The files come from an insightface model-zoo pack (buffalo_l.zip for the h94 FaceID adapters)."
    text = (f"{pack} comes from the insightface model zoo's {known['zip']}; unzip it so that the .onnx files "
            f"sit directly in that folder.")
    if pack == "antelopev2":
        text += " (antelopev2.zip unpacks into antelopev2/antelopev2/: move the files up one folder.)"
    return text


def _listing(names):
    return ", ".join(names) if names else "nothing"


def find_model_pack(models_root: str, pack: str = "buffalo_l") -> ModelPack:
    """The detector and recognizer insightface would load from <models_root>/insightface/models/<pack>/.

    insightface's rules: a non-recursive glob of *.onnx, sorted by file name, each routed by its graph
    (`route`), the first model of each task wins. Never downloads; raises FaceModelError with what was
    expected and what was found when the folder is missing, empty, nested one level too deep, or lacks a
    detector or a recognizer.
    """
    if not pack or os.path.basename(pack) != pack or pack in (".", ".."):
        raise FaceModelError(f"The face model pack must be a folder name such as buffalo_l, not {pack!r}.")
    base = os.path.join(os.path.abspath(models_root), "insightface", "models")
    folder = os.path.join(base, pack)
    if not os.path.isdir(folder):
        hints = []
        misplaced = os.path.join(os.path.abspath(models_root), "insightface", pack)
        if os.path.isdir(misplaced):
            hints.append(f" Found {misplaced}: move it into {base}.")
        if os.path.isfile(folder + ".zip"):
            hints.append(f" Found {folder}.zip: unzip it there.")
        raise FaceModelError(
            f"Face models not found: expected the folder {folder} holding {_expected_files(pack)}. "
            f"{_where_from(pack)} Nothing is downloaded automatically.{''.join(hints)}")
    onnx_files = sorted(glob.glob(os.path.join(folder, "*.onnx")))
    if not onnx_files:
        deeper = sorted(glob.glob(os.path.join(folder, "*", "*.onnx")))
        if deeper:
            sub = os.path.dirname(deeper[0])
            raise FaceModelError(
                f"The face model files are one folder too deep: found "
                f"{_listing([os.path.relpath(p, folder) for p in deeper])} inside {folder}. Move the files up "
                f"one folder, so that they sit directly in {folder} (and remove the empty {sub}).")
        present = sorted(os.listdir(folder))
        zips = [n for n in present if n.lower().endswith(".zip")]
        hint = f" Found {zips[0]}: unzip it here." if zips else ""
        raise FaceModelError(
            f"The face model folder {folder} holds no .onnx files (found: {_listing(present)}). It should hold "
            f"{_expected_files(pack)}. {_where_from(pack)}{hint}")
    chosen, files, warnings = {}, [], []
    for path in onnx_files:
        name = os.path.basename(path)
        try:
            graph = read_onnx_graph(path)
        except (OSError, ValueError) as e:
            files.append((name, ""))
            warnings.append(f"{name} in {folder} could not be read ({e}) and was skipped; insightface would stop "
                            f"on it, the onnxruntime backend ignores it.")
            continue
        task = route(graph)
        files.append((name, task))
        if task == "recognition" and len(graph.outputs) != 1:
            raise FaceModelError(
                f"{name} in {folder} has a recognizer's input but {len(graph.outputs)} outputs (a recognizer has "
                f"one): insightface stops on it. Remove it from the folder.")
        if task and task not in chosen:
            chosen[task] = (path, graph)
    found = _listing([f"{n} ({t or 'not a model insightface uses'})" for n, t in files])
    whole = f" ({PACKS[pack]['zip']} holds {', '.join(PACKS[pack]['files'])})" if pack in PACKS else ""
    for task, what in (("detection", "face detector"), ("recognition", "face recognition model")):
        if task not in chosen:
            raise FaceModelError(
                f"No {what} in {folder} (found: {found}). It needs {_expected_files(pack)}; the copy may be "
                f"incomplete{whole}. {_where_from(pack)}")
    detector, det_graph = chosen["detection"]
    if len(det_graph.outputs) not in (9, 15):
        raise FaceModelError(
            f"The face detector {os.path.basename(detector)} in {folder} has {len(det_graph.outputs)} outputs; "
            f"FaceID needs an SCRFD detector with the 5 landmarks (9 or 15 outputs), such as det_10g.onnx.")
    recognizer = chosen["recognition"][0]
    rec_name = os.path.basename(recognizer)
    own = PACKS.get(pack, {}).get("recognizer")
    if own and rec_name != own:
        if own in dict(files):
            why, fix = f"it sorts before {own}, which insightface then ignores", f"Move {rec_name} out of this folder."
        else:
            why = f"{own} is not in the folder"
            fix = f"Put {own} (from {PACKS[pack]['zip']}) in this folder and move {rec_name} out."
        warnings.append(
            f"The face recognizer used from {folder} is {rec_name}, not {pack}'s own {own} ({why}). {rec_name} is "
            f"{EMBEDDING_SPACES.get(rec_name, 'an unknown recognizer')}; {own} is {EMBEDDING_SPACES.get(own, own)}. "
            f"Embeddings of one do not fit adapters trained on the other. {fix}")
    return ModelPack(pack, folder, detector, recognizer, rec_name, warnings, files)


# ---------------------------------------------------------------------------------------------------------
# Execution providers

PROVIDERS = {  # the short names a node offers -> onnxruntime's names, and where each comes from
    "CPU": ("CPUExecutionProvider", "onnxruntime"),
    "CUDA": ("CUDAExecutionProvider", "onnxruntime-gpu (instead of onnxruntime, never both)"),
    "ROCM": ("ROCMExecutionProvider", "onnxruntime-rocm"),
    "DirectML": ("DmlExecutionProvider", "onnxruntime-directml"),
    "CoreML": ("CoreMLExecutionProvider", "onnxruntime on macOS"),
    "OpenVINO": ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
    "TensorRT": ("TensorrtExecutionProvider", "onnxruntime-gpu with TensorRT installed"),
}
# Left out of "auto": Azure runs nothing locally; TensorRT builds an engine per input shape (minutes) and is
# listed by onnxruntime-gpu whether TensorRT is installed or not. Both can still be chosen by name.
_NOT_AUTO = ("AzureExecutionProvider", "TensorrtExecutionProvider")


def _import_onnxruntime():
    """onnxruntime, or None and why not (import errors of broken installs included)."""
    try:
        import onnxruntime
        return onnxruntime, ""
    except Exception as e:  # a DLL that fails to load, onnxruntime and onnxruntime-gpu both installed, ...
        return None, f"{type(e).__name__}: {e}"


def _need_onnxruntime():
    ort, problem = _import_onnxruntime()
    if ort is None:
        raise FaceModelError(
            f"Face analysis needs onnxruntime, which cannot be imported in this Python ({sys.executable}: "
            f"{problem}). Install it in the Python that runs ComfyUI: {sys.executable} -m pip install onnxruntime")
    return ort


def available_providers() -> list:
    """onnxruntime's available execution providers, in its priority order."""
    return list(_need_onnxruntime().get_available_providers())


def _short(provider):
    return next((k for k, (v, _) in PROVIDERS.items() if v == provider), provider)


def choose_providers(choice: str = "auto") -> list:
    """The provider list to create sessions with.

    "auto": every available provider in onnxruntime's order (without Azure and TensorRT, see _NOT_AUTO).
    A name ("CPU", "CUDA", "ROCM", "DirectML", "CoreML", "OpenVINO", "TensorRT", or onnxruntime's own
    "CUDAExecutionProvider"): that provider, with CPU after it for what it cannot run. A provider this
    onnxruntime does not have raises FaceModelError listing the ones it has.
    """
    available = available_providers()
    if choice == "auto":
        return [p for p in available if p not in _NOT_AUTO] or available
    wanted = next((v for k, (v, _) in PROVIDERS.items() if choice.lower() in (k.lower(), v.lower())), None)
    if wanted is None:
        raise FaceModelError(f"Unknown execution provider {choice!r}: choose auto or one of {', '.join(PROVIDERS)}.")
    if wanted not in available:
        has = ", ".join(p if _short(p) == p else f"{_short(p)} ({p})" for p in available) or "none"
        source = PROVIDERS[_short(wanted)][1]
        raise FaceModelError(
            f"The execution provider {choice} ({wanted}) is not available in this onnxruntime; available: {has}. "
            f"{_short(wanted)} comes with {source}.")
    rest = ["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" and "CPUExecutionProvider" in available else []
    return [wanted] + rest


# ---------------------------------------------------------------------------------------------------------
# Faces

@dataclass(eq=False)  # compared by identity: arrays have no single truth value
class Face:
    """One analysed face. `found=False` (see `no_face`) stands for "no face in this image": everything zero,
    so a batch of frames keeps one entry per frame and nodes can give such frames weight 0."""
    found: bool
    box: tuple  # (x1, y1, x2, y2) floats, image pixels
    landmarks: np.ndarray  # float32 [5, 2]: eye left in the image, eye right, nose, mouth left, mouth right
    score: float  # detection score
    embedding: np.ndarray  # float32 [512] as the recognizer returns it (raw, unnormalised)
    normed_embedding: np.ndarray  # embedding / its L2 norm (zeros when found is False)
    recognizer: str  # file name of the recognition model: its embedding space, e.g. "w600k_r50.onnx"
    crop: np.ndarray  # uint8 [S, S, 3], BGR, aligned by norm_crop at the crop size asked for

    @property
    def area(self):
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def no_face(crop_size=224, recognizer="", width=512) -> Face:
    """The `found=False` Face: zero box, landmarks, score, embeddings and a black crop."""
    zeros = np.zeros(width, np.float32)
    return Face(False, (0.0, 0.0, 0.0, 0.0), np.zeros((5, 2), np.float32), 0.0, zeros, zeros.copy(), recognizer,
                np.zeros((crop_size, crop_size, 3), np.uint8))


def select_face(faces, how="largest", index=0):
    """One face of `faces`, or None when there are none (or fewer than index + 1 from the left).

    "largest": the biggest box area; "highest score": the best detection score (insightface's faces[0]);
    "index from left": faces ordered by box x1, index 0 the leftmost. Ties keep the list's order (by score).
    Underscores are accepted for spaces ("highest_score").
    """
    mode = how.replace("_", " ")
    if mode not in SELECT_MODES:
        raise ValueError(f"Unknown face selection {how!r}: choose one of {', '.join(SELECT_MODES)}.")
    faces = [f for f in faces if f.found]
    if not faces:
        return None
    if mode == "largest":
        return max(faces, key=lambda f: f.area)  # max keeps the first of equal ones
    if mode == "highest score":
        return max(faces, key=lambda f: f.score)
    if index < 0:
        raise ValueError(f"The face index counts from 0 (the leftmost face); got {index}.")
    by_x = sorted(faces, key=lambda f: f.box[0])
    return by_x[index] if index < len(by_x) else None


RETRY_MARGIN = 0.5  # of the image's longer side, added in black on every side for the second try


def analyze_with_margin(analyzer, image_bgr, crop_size=224):
    """(faces, whether the margin was needed): every face, best score first, as analyzer.analyze gives them; when
    there is none, once more with a black margin around the image. Detectors miss a face that fills the frame (a
    tight crop of a face); with the margin it is smaller in the detector's input (the FaceID author's advice for
    large faces, cubiq#145). Boxes and landmarks are moved back into the image's own pixels; the embedding and crop
    come from the padded image, whose margin is the black that alignment puts outside an image anyway."""
    faces = analyzer.analyze(image_bgr, crop_size)
    if faces:
        return faces, False
    image = check_image(image_bgr)
    margin = int(round(max(image.shape[:2]) * RETRY_MARGIN))
    padded = np.pad(image, ((margin, margin), (margin, margin), (0, 0)))
    moved = []
    for face in analyzer.analyze(padded, crop_size):
        box = tuple(v - margin for v in face.box)
        moved.append(replace(face, box=box, landmarks=face.landmarks - np.float32(margin)))
    return moved, bool(moved)


def check_image(image):
    """The image as a C-contiguous BGR uint8 [H, W, 3] array, or a ValueError saying what it is instead."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"Face analysis takes a numpy image (BGR uint8 [H, W, 3]); got {type(image).__name__}.")
    if image.ndim != 3 or image.shape[2] != 3:
        hint = " (a grayscale image: repeat it into 3 channels first)" if image.ndim == 2 or (
            image.ndim == 3 and image.shape[2] == 1) else ""
        raise ValueError(f"Face analysis takes one BGR uint8 image [H, W, 3]; got shape {tuple(image.shape)}{hint}.")
    if image.dtype != np.uint8:
        raise ValueError(f"Face analysis takes uint8 pixels 0..255; got {image.dtype} (convert first).")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"Face analysis got an empty image of shape {tuple(image.shape)}.")
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------------------------------------------------
# Alignment: insightface utils/face_align.py (estimate_norm, norm_crop)

ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float32)


def _umeyama(src, dst):
    """Least-squares similarity src -> dst as a 3x3 matrix; scikit-image 0.26's `_umeyama` step by step
    (same dtypes: float32 points in, so the same float32 SVD), which insightface reaches through
    `SimilarityTransform.estimate`."""
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    a = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    tol = s.max() * np.max(a.shape) * np.finfo(float).eps
    rank = np.count_nonzero(s > tol)
    if rank == 0:
        return np.nan * t
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(v) > 0:
            t[:dim, :dim] = u @ v
        else:
            keep, d[dim - 1] = d[dim - 1], -1
            t[:dim, :dim] = u @ np.diag(d) @ v
            d[dim - 1] = keep
    else:
        t[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t


def check_crop_size(size):
    if not isinstance(size, (int, np.integer)) or size <= 0 or (size % 112 and size % 128):
        raise ValueError(f"The aligned face crop size must be a multiple of 112 or 128 (112, 224, 256, 336, ...), "
                         f"as insightface's norm_crop requires; got {size!r}.")


def estimate_norm(landmarks, size=112):
    """The 2x3 matrix taking the 5 landmarks onto the ArcFace template for a size x size crop.

    Sizes divisible by 112 scale the template by size/112. The others (divisible by 128) scale it by size/128
    and shift it 8·size/128 px right: 256 gives the 224 layout with 16 px margins left and right and 32 px
    below. float64 [2, 3], like insightface's.
    """
    check_crop_size(size)
    lmk = np.asarray(landmarks)
    if lmk.shape != (5, 2):
        raise ValueError(f"Alignment needs the 5 face landmarks as a [5, 2] array; got shape {lmk.shape}.")
    if size % 112 == 0:
        ratio, diff_x = float(size) / 112.0, 0.0
    else:
        ratio = float(size) / 128.0
        diff_x = 8.0 * ratio
    dst = ARCFACE_DST * ratio
    dst[:, 0] += diff_x
    return _umeyama(lmk, dst)[0:2, :]


def _import_cv2():
    try:
        import cv2
        return cv2
    except Exception:  # missing, or opencv-python without libGL on a headless Linux
        return None


def _warp_affine_numpy(image, m, size):
    """cv2.warpAffine(image, m, (size, size), borderValue=0) in float: bilinear, zero outside the image.
    cv2 quantises positions to 1/32 px and weights to 15 bits, so some pixels differ by 1."""
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    h, w = image.shape[:2]
    out = np.zeros((size, size, image.shape[2]), np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            pixels = image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.float64)
            out += np.where(inside[..., None], pixels, 0.0) * wy * wx
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def norm_crop(image, landmarks, size=224, cv2=None):
    """The aligned face crop, BGR uint8 [size, size, 3]: warpAffine by estimate_norm, bilinear, border 0.
    cv2=None: use cv2 when it can be imported (exactly insightface's crop), False: numpy only."""
    m = estimate_norm(landmarks, size)
    cv2 = _import_cv2() if cv2 is None else cv2 or None
    if cv2 is not None:
        return cv2.warpAffine(image, m, (size, size), borderValue=0.0)
    return _warp_affine_numpy(image, m, size)


# ---------------------------------------------------------------------------------------------------------
# Detection: insightface model_zoo/scrfd.py

def _resize_numpy(image, width, height):
    """cv2.resize(image, (width, height)) with INTER_LINEAR in float (half-pixel centres, edges clamped, no
    antialiasing); cv2's 11-bit fixed-point weights can make some pixels differ by 1."""
    h, w = image.shape[:2]

    def axis(n_out, n_in):
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(pos).astype(np.int64)
        frac = pos - i0
        frac[i0 < 0], i0[i0 < 0] = 0.0, 0
        last = i0 >= n_in - 1
        frac[last], i0[last] = 0.0, n_in - 1
        return i0, np.minimum(i0 + 1, n_in - 1), frac

    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    img = image.astype(np.float64)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _blob(images, mean, std, cv2):
    """cv2.dnn.blobFromImages(images, 1/std, size, (mean,)*3, swapRB=True): float32 [N, 3, H, W], RGB."""
    if cv2 is not None:
        size = (images[0].shape[1], images[0].shape[0])
        return np.ascontiguousarray(cv2.dnn.blobFromImages(images, 1.0 / std, size, (mean, mean, mean), swapRB=True),
                                    dtype=np.float32)
    x = np.stack(images)[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((x - np.float32(mean)) * np.float32(1.0 / std)).transpose(0, 3, 1, 2))


def letterbox(image, det_size, cv2=None):
    """(det_image, det_scale): the image resized to fit det_size (width, height) keeping its aspect ratio,
    pasted top-left on black, as SCRFD.detect. Very thin images keep at least one pixel row or column
    (insightface stops on them)."""
    h, w = image.shape[:2]
    im_ratio = float(h) / w
    model_ratio = float(det_size[1]) / det_size[0]
    if im_ratio > model_ratio:
        new_height = det_size[1]
        new_width = int(new_height / im_ratio)
    else:
        new_width = det_size[0]
        new_height = int(new_width * im_ratio)
    new_width, new_height = max(new_width, 1), max(new_height, 1)
    det_scale = float(new_height) / h
    if cv2 is not None:
        resized = cv2.resize(image, (new_width, new_height))
    else:
        resized = _resize_numpy(image, new_width, new_height)
    det_image = np.zeros((det_size[1], det_size[0], 3), dtype=np.uint8)
    det_image[:new_height, :new_width, :] = resized
    return det_image, det_scale


def distance2bbox(points, distance):
    return np.stack([points[:, 0] - distance[:, 0], points[:, 1] - distance[:, 1],
                     points[:, 0] + distance[:, 2], points[:, 1] + distance[:, 3]], axis=-1)


def distance2kps(points, distance):
    preds = []
    for i in range(0, distance.shape[1], 2):
        preds.append(points[:, i % 2] + distance[:, i])
        preds.append(points[:, i % 2 + 1] + distance[:, i + 1])
    return np.stack(preds, axis=-1)


def nms(dets, thresh=NMS_THRESH):
    """Greedy NMS over [x1, y1, x2, y2, score] rows, insightface's (areas with +1, IoU > thresh dropped)."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def scrfd_layout(output_count):
    """(strides, anchors per location, has keypoints) of an SCRFD with that many outputs."""
    layouts = {6: ((8, 16, 32), 2, False), 9: ((8, 16, 32), 2, True),
               10: ((8, 16, 32, 64, 128), 1, False), 15: ((8, 16, 32, 64, 128), 1, True)}
    if output_count not in layouts:
        raise FaceModelError(f"A face detector with {output_count} outputs is not an SCRFD layout (6, 9, 10 or 15).")
    return layouts[output_count]


def decode_scrfd(net_outs, input_height, input_width, det_scale, batched=False, thresh=DET_THRESH,
                 nms_thresh=NMS_THRESH):
    """(boxes+scores [K, 5], keypoints [K, 5, 2] or None) from the raw SCRFD outputs: candidates scoring
    >= thresh at every stride, decoded around the anchor centres, sorted by score (stable), NMS, scaled back
    by det_scale; float32 like insightface's."""
    strides, anchors, use_kps = scrfd_layout(len(net_outs))
    fmc = len(strides)
    scores_list, bboxes_list, kpss_list = [], [], []
    for idx, stride in enumerate(strides):
        pick = (lambda o: o[0]) if batched else (lambda o: o)
        scores = pick(net_outs[idx])
        bbox_preds = pick(net_outs[idx + fmc]) * stride
        height, width = input_height // stride, input_width // stride
        centers = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
        centers = (centers * stride).reshape((-1, 2))
        if anchors > 1:
            centers = np.stack([centers] * anchors, axis=1).reshape((-1, 2))
        pos = np.where(scores >= thresh)[0]
        scores_list.append(scores[pos])
        bboxes_list.append(distance2bbox(centers, bbox_preds)[pos])
        if use_kps:
            kps = distance2kps(centers, pick(net_outs[idx + 2 * fmc]) * stride)
            kpss_list.append(kps.reshape((kps.shape[0], -1, 2))[pos])
    scores = np.vstack(scores_list)
    if scores.size == 0:
        return np.empty((0, 5), np.float32), (np.empty((0, 5, 2), np.float32) if use_kps else None)
    order = np.argsort(-scores.ravel(), kind="stable")
    pre_det = np.hstack((np.vstack(bboxes_list) / det_scale, scores)).astype(np.float32, copy=False)[order, :]
    kpss = (np.vstack(kpss_list) / det_scale)[order, :, :] if use_kps else None
    keep = nms(pre_det, nms_thresh)
    return pre_det[keep, :], (kpss[keep, :, :] if use_kps else None)


# ---------------------------------------------------------------------------------------------------------
# Analyzers

def _face(box_score, kps, embedding, recognizer, crop):
    return Face(True, tuple(float(v) for v in box_score[:4]), np.asarray(kps, np.float32), float(box_score[4]),
                embedding, embedding / np.linalg.norm(embedding), recognizer, crop)


class OnnxFaceAnalyzer:
    """FaceAnalysis(allowed_modules=['detection', 'recognition']).prepare(det_size=(640, 640)) with
    onnxruntime alone. use_cv2: None = when importable, False = numpy resize/warp/normalise (tests)."""

    backend = "onnxruntime"

    def __init__(self, pack: ModelPack, providers, use_cv2=None, warnings=None):
        ort = _need_onnxruntime()
        self.pack = pack
        self.cv2 = _import_cv2() if use_cv2 is None else (_import_cv2() if use_cv2 else None)
        self.warnings = list(pack.warnings) + list(warnings or [])
        if self.cv2 is None and use_cv2 is None:
            self.warnings.append("cv2 (opencv-python) cannot be imported: faces are resized and aligned with numpy, "
                                 "which may differ from insightface by 1 in some pixel values.")
        self.det = ort.InferenceSession(pack.detector, providers=list(providers))
        self.rec = ort.InferenceSession(pack.recognizer, providers=list(providers))
        self.providers = self.det.get_providers()
        self.name = f"onnxruntime {ort.__version__} ({', '.join(self.providers)})"
        det_in = self.det.get_inputs()[0]
        fixed = [d for d in det_in.shape[2:4] if isinstance(d, int) and d > 0]
        self.det_size = (det_in.shape[3], det_in.shape[2]) if len(fixed) == 2 else DET_SIZE  # a static detector
        self.det_input = det_in.name
        self.det_outputs = [o.name for o in self.det.get_outputs()]
        self.batched = len(self.det.get_outputs()[0].shape) == 3
        scrfd_layout(len(self.det_outputs))
        rec_in = self.rec.get_inputs()[0]
        self.rec_input, self.rec_outputs = rec_in.name, [o.name for o in self.rec.get_outputs()]
        self.rec_size = rec_in.shape[3]
        mxnet = is_mxnet_export(read_onnx_graph(pack.recognizer))
        self.rec_mean, self.rec_std = (0.0, 1.0) if mxnet else (127.5, 127.5)
        self.det_thresh, self.nms_thresh = DET_THRESH, NMS_THRESH

    def detect(self, image_bgr):
        """(boxes+scores [K, 5], keypoints [K, 5, 2]) in image pixels, best score first."""
        image = check_image(image_bgr)
        det_image, det_scale = letterbox(image, self.det_size, self.cv2)
        blob = _blob([det_image], 127.5, 128.0, self.cv2)
        outs = self.det.run(self.det_outputs, {self.det_input: blob})
        return decode_scrfd(outs, blob.shape[2], blob.shape[3], det_scale, self.batched, self.det_thresh,
                            self.nms_thresh)

    def embed(self, image_bgr, landmarks):
        """The raw embedding of the face at `landmarks`: norm_crop at the recognizer's size, ArcFace."""
        aligned = norm_crop(image_bgr, landmarks, self.rec_size, self.cv2 or False)
        blob = _blob([aligned], self.rec_mean, self.rec_std, self.cv2)
        return self.rec.run(self.rec_outputs, {self.rec_input: blob})[0].flatten()

    def analyze(self, image_bgr, crop_size=224) -> list:
        """Every face in a BGR uint8 [H, W, 3] image, best detection score first ([] when there is none)."""
        image = check_image(image_bgr)
        check_crop_size(crop_size)
        dets, kpss = self.detect(image)
        return [_face(dets[i], kpss[i], self.embed(image, kpss[i]), self.pack.recognizer_name,
                      norm_crop(image, kpss[i], crop_size, self.cv2 or False)) for i in range(dets.shape[0])]


def _version(text):
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _import_insightface():
    """(insightface, FaceAnalysis, face_align) or (None, None, why): ImportError when it is not installed,
    and any other import-time failure (old builds' "numpy.dtype size changed" ValueError, ...)."""
    try:
        import insightface
        from insightface.app import FaceAnalysis
        from insightface.utils import face_align
        return insightface, FaceAnalysis, face_align
    except ImportError as e:
        return None, None, f"not installed ({e})"
    except Exception as e:
        return None, None, f"{type(e).__name__}: {e}"


class InsightFaceAnalyzer:
    """insightface's FaceAnalysis on the files find_model_pack checked, giving the same Face objects.

    Only built on a ModelPack, i.e. once the folder is known to exist, so insightface never starts its
    download. insightface >= 2 is given the folder's absolute path as name (so a ./buffalo_l in ComfyUI's
    working directory cannot win); older versions get the pack name and root.
    """

    backend = "insightface"

    def __init__(self, pack: ModelPack, providers, warnings=None):
        insightface, FaceAnalysis, face_align = _import_insightface()
        if insightface is None:
            raise FaceModelError(
                f"The insightface backend cannot be used: insightface {face_align}. Install it in the Python that "
                f"runs ComfyUI ({sys.executable} -m pip install insightface), or choose the onnxruntime backend.")
        if not os.path.isdir(pack.folder):  # FaceAnalysis would download <pack>.zip
            raise FaceModelError(f"The face model folder {pack.folder} has gone; it is not downloaded automatically.")
        self.pack, self.face_align = pack, face_align
        self.warnings = list(pack.warnings) + list(warnings or [])
        version = _version(insightface.__version__)
        name = pack.folder if version >= (2,) else pack.pack
        try:
            self.app = FaceAnalysis(name=name, root=pack.root, providers=list(providers),
                                    allowed_modules=["detection", "recognition"])
            self.app.prepare(ctx_id=0, det_size=DET_SIZE)
        except Exception as e:
            raise FaceModelError(f"insightface {insightface.__version__} could not load the face models in "
                                 f"{pack.folder}: {type(e).__name__}: {e}") from e
        rec = self.app.models.get("recognition")
        if rec is None:
            raise FaceModelError(f"insightface found no recognition model in {pack.folder}.")
        self.recognizer_name = os.path.basename(rec.model_file)
        if self.recognizer_name != pack.recognizer_name:
            self.warnings.append(f"insightface chose {self.recognizer_name} as the recognizer, the pack check "
                                 f"{pack.recognizer_name}.")
        self.providers = self.app.det_model.session.get_providers()
        self.name = f"insightface {insightface.__version__} ({', '.join(self.providers)})"

    def analyze(self, image_bgr, crop_size=224) -> list:
        """Every face in a BGR uint8 [H, W, 3] image, best detection score first ([] when there is none)."""
        image = check_image(image_bgr)
        check_crop_size(crop_size)
        faces = []
        for f in self.app.get(image):
            box_score = np.append(np.asarray(f.bbox, np.float32), np.float32(f.det_score))
            crop = self.face_align.norm_crop(image, landmark=f.kps, image_size=crop_size)
            faces.append(_face(box_score, f.kps, np.asarray(f.embedding), self.recognizer_name, crop))
        return sorted(faces, key=lambda f: -f.score)


def make_analyzer(models_root, pack="buffalo_l", backend="auto", provider="auto"):
    """The analyzer for <models_root>/insightface/models/<pack>/.

    backend "auto": insightface when it imports and is >= 1.0, else onnxruntime alone (with a warning in
    `.warnings` when insightface is installed but broken or old); "insightface" / "onnxruntime" force one.
    provider: see choose_providers. Raises FaceModelError with the install command when nothing can run.
    """
    if backend not in BACKENDS:
        raise FaceModelError(f"Unknown face backend {backend!r}: choose one of {', '.join(BACKENDS)}.")
    model_pack = find_model_pack(models_root, pack)
    notes, problem = [], ""
    if backend == "onnxruntime":
        _need_onnxruntime()
    if backend in ("auto", "insightface"):
        insightface, _, problem = _import_insightface()
        if insightface is None and backend == "insightface":
            raise FaceModelError(
                f"The insightface backend cannot be used: insightface {problem}. Install it in the Python that runs "
                f"ComfyUI ({sys.executable} -m pip install insightface), or choose the onnxruntime backend.")
        if insightface is None:
            if not problem.startswith("not installed"):
                notes.append(f"insightface is installed but cannot be imported ({problem}); using the onnxruntime "
                             f"backend, which reads the same files.")
        elif backend == "auto" and _version(insightface.__version__) < (1,):
            notes.append(f"insightface {insightface.__version__} is older than 1.0; using the onnxruntime backend.")
        else:
            try:
                return InsightFaceAnalyzer(model_pack, choose_providers(provider))
            except FaceModelError as e:
                if backend == "insightface" or _import_onnxruntime()[0] is None:
                    raise
                notes.append(f"{e} Using the onnxruntime backend, which skips files it cannot read.")
    if _import_onnxruntime()[0] is None:
        extra = f" (insightface: {problem})" if backend == "auto" and problem else ""
        raise FaceModelError(
            f"Face analysis needs onnxruntime or insightface, and neither can be imported in this Python "
            f"({sys.executable}){extra}. Install one in the Python that runs ComfyUI: "
            f"{sys.executable} -m pip install onnxruntime (or pip install insightface for the insightface backend).")
    return OnnxFaceAnalyzer(model_pack, choose_providers(provider), warnings=notes)
