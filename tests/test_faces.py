"""The face backend (ipadapter_core/faces.py) on synthetic ONNX models: routing, folder errors, detection,
selection, alignment, providers, backend choice, and the onnxruntime backend against insightface itself.

The models come from tests/synthetic_faces.py (a bright square on black is a face; its docstring says what
the detector computes). The parity tests run where insightface is installed (requirements-dev.txt has it).
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the synthetic face models are built with the onnx package")
ort = pytest.importorskip("onnxruntime", reason="both face backends run on onnxruntime")

import synthetic_faces as sf  # noqa: E402

from ipadapter_core import faces  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # skimage 0.26, in insightface

CPU = ["CPUExecutionProvider"]
ONE = [(200, 150, 128)]  # (x, y, side) in a 512×768 image
TWO = [(40, 40, 160), (400, 360, 96)]  # big top-left, small bottom-right: apart in x and in y
_insightface, _, _insightface_problem = faces._import_insightface()
needs_insightface = pytest.mark.skipif(
    _insightface is None, reason=f"insightface is not importable ({_insightface_problem}); the parity with it is "
                                 f"checked where it is (pip install -r requirements-dev.txt)")
needs_cv2 = pytest.mark.skipif(faces._import_cv2() is None, reason="cv2 is not importable: nothing to compare with")


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    sf.write_pack(root)
    return str(root)


@pytest.fixture(scope="module")
def pack(models_root):
    return faces.find_model_pack(models_root)


@pytest.fixture(scope="module")
def analyzer(pack):
    return faces.OnnxFaceAnalyzer(pack, CPU)


def inside(box, square, tol=0.0):
    x, y, side = square
    return (box[0] >= x - tol and box[1] >= y - tol and box[2] <= x + side + tol and box[3] <= y + side + tol)


# --- the module stays light ------------------------------------------------------------------------------

def test_faces_module_imports_only_numpy_and_the_standard_library():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ipadapter_core", "faces.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('faces_alone', {path!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "heavy = ('onnxruntime', 'onnx', 'insightface', 'cv2', 'comfy', 'torch', 'skimage', 'scipy')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- one face, none, two --------------------------------------------------------------------------------

def test_one_face_is_found_inside_its_square(analyzer):
    image = sf.squares_image(ONE, 512, 768)
    found = analyzer.analyze(image)
    assert len(found) == 1
    face = found[0]
    assert face.found and 0.5 <= face.score <= 1
    assert inside(face.box, ONE[0], tol=768 / 640) and face.box[2] - face.box[0] > 120  # within a detector pixel
    assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (5, 2)
    assert all(inside((x, y, x, y), ONE[0]) for x, y in face.landmarks)
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks
    assert eye_l[0] < nose[0] < eye_r[0] and mouth_l[0] < mouth_r[0]  # template order, left in the image first
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    assert face.embedding.dtype == np.float32 and face.embedding.shape == (512,)
    assert abs(np.linalg.norm(face.normed_embedding) - 1) < 1e-6
    assert abs(np.linalg.norm(face.embedding) - 1) > 0.1  # raw, as the recognizer gives it
    np.testing.assert_allclose(face.normed_embedding * np.linalg.norm(face.embedding), face.embedding, rtol=1e-6)
    assert face.recognizer == "w600k_r50.onnx"
    assert face.crop.dtype == np.uint8 and face.crop.shape == (224, 224, 3)
    assert face.crop[112, 112].min() >= 150  # the centre of the crop is the bright square


def test_a_blank_image_has_no_face(analyzer):
    assert analyzer.analyze(np.zeros((480, 640, 3), np.uint8)) == []
    assert analyzer.analyze(np.full((480, 640, 3), 40, np.uint8)) == []
    assert faces.select_face([], "largest") is None
    empty = faces.no_face(256, "w600k_r50.onnx")
    assert not empty.found and empty.box == (0.0, 0.0, 0.0, 0.0) and empty.score == 0.0
    assert empty.crop.shape == (256, 256, 3) and not empty.crop.any()
    assert empty.embedding.shape == (512,) and not empty.embedding.any() and not empty.normed_embedding.any()
    assert faces.select_face([empty], "highest score") is None


def test_two_faces_and_the_three_selections(analyzer):
    found = analyzer.analyze(sf.squares_image(TWO))
    assert len(found) == 2
    big, small = sorted(found, key=lambda f: -f.area)
    assert inside(big.box, TWO[0]) and inside(small.box, TWO[1])
    assert found[0] is small and small.score > big.score  # best score first; the detector favours small faces
    assert not np.allclose(big.embedding, small.embedding)
    assert faces.select_face(found, "largest") is big
    assert faces.select_face(found, "highest score") is small
    assert faces.select_face(found, "highest_score") is small
    assert faces.select_face(found, "index from left", 0) is big
    assert faces.select_face(found, "index from left", 1) is small
    assert faces.select_face(found, "index from left", 2) is None
    with pytest.raises(ValueError, match="counts from 0"):
        faces.select_face(found, "index from left", -1)
    with pytest.raises(ValueError, match="largest, highest score, index from left"):
        faces.select_face(found, "biggest")


def test_index_from_left_is_not_the_largest(analyzer):
    squares = [(40, 400, 96), (300, 40, 200)]
    found = analyzer.analyze(sf.squares_image(squares))
    assert len(found) == 2
    left = faces.select_face(found, "index from left", 0)
    assert inside(left.box, squares[0]) and faces.select_face(found, "largest") is not left


# --- alignment ------------------------------------------------------------------------------------------

def test_crop_sizes_and_the_256_layout(analyzer):
    image = sf.squares_image(ONE, 512, 768)
    for size in (112, 224, 256, 336):
        face = analyzer.analyze(image, crop_size=size)[0]
        assert face.crop.shape == (size, size, 3) and face.crop.dtype == np.uint8
    lmk = face.landmarks
    m112, m224, m256, m336 = (faces.estimate_norm(lmk, s) for s in (112, 224, 256, 336))
    np.testing.assert_allclose(m224, 2 * m112, rtol=0, atol=1e-9)
    np.testing.assert_allclose(m336, 3 * m112, rtol=1e-5, atol=1e-3)  # the template is float32, as insightface's
    # 256 = 128·2: the template doubled (the 224 layout) and moved 8·2 = 16 px right; the rest is margin:
    # 16 px on the left and on the right, 32 px at the bottom
    np.testing.assert_array_equal(m256[:, :2], m224[:, :2])
    np.testing.assert_allclose(m256[:, 2] - m224[:, 2], [16.0, 0.0], atol=1e-9)
    c224, c256 = faces.norm_crop(image, lmk, 224), faces.norm_crop(image, lmk, 256)
    diff = np.abs(c256[:224, 16:240].astype(int) - c224)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # cv2 quantises positions to 1/32 px
    # the template points themselves land where they should
    pts = np.hstack([lmk, np.ones((5, 1))])
    np.testing.assert_allclose(pts @ m256.T, faces.ARCFACE_DST * 2 + [16, 0], atol=0.05)
    for bad in (100, 0, 200, "224"):
        with pytest.raises(ValueError, match="multiple of 112 or 128"):
            analyzer.analyze(image, crop_size=bad)


def test_only_bgr_uint8_images_are_accepted(analyzer):
    gray = np.zeros((64, 64), np.uint8)
    for image, words in ((gray, "grayscale"), (gray[..., None], "grayscale"), (np.zeros((64, 64, 4), np.uint8), "(64, 64, 4)"),
                         (np.zeros((64, 64, 3), np.float32), "float32"), (np.zeros((0, 64, 3), np.uint8), "empty"),
                         ([[0, 0, 0]], "list")):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            analyzer.analyze(image)


def test_tiny_thin_and_huge_images(analyzer):
    tiny = analyzer.analyze(sf.squares_image([(2, 2, 4)], 8, 8))
    assert len(tiny) == 1 and inside(tiny[0].box, (2, 2, 4), tol=0.01)
    assert analyzer.analyze(np.zeros((8, 8, 3), np.uint8)) == []
    assert analyzer.analyze(np.zeros((1, 4096, 3), np.uint8)) == []  # letterboxed to one row: no crash
    square = (1000, 1500, 1024)
    huge = analyzer.analyze(sf.squares_image([square], 4096, 4096))
    assert len(huge) == 1
    assert inside(huge[0].box, square, tol=4096 / 640)  # within one detector pixel
    assert huge[0].box[2] - huge[0].box[0] > 1000


@needs_cv2
def test_numpy_fallback_is_close_to_cv2(pack, analyzer):
    plain = faces.OnnxFaceAnalyzer(pack, CPU, use_cv2=False)
    assert plain.cv2 is None
    for squares, h, w in ((TWO, 640, 640), (ONE, 512, 768), ([(2, 2, 4)], 8, 8)):
        image = sf.squares_image(squares, h, w)
        a, b = analyzer.analyze(image, 256), plain.analyze(image, 256)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.box, y.box, atol=1e-3)
            np.testing.assert_allclose(x.normed_embedding, y.normed_embedding, atol=1e-3)
            diff = np.abs(x.crop.astype(int) - y.crop)
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01


# --- model folders --------------------------------------------------------------------------------------

def test_routing_reads_the_graph(tmp_path, pack):
    assert [t for _, t in pack.files] == ["detection", "recognition"]
    folder = sf.write_pack(tmp_path, files={
        "1k3d68.onnx": sf.square_input_model(192), "2d106det.onnx": sf.square_input_model(192),
        "det_10g.onnx": sf.detector_model(), "genderage.onnx": sf.square_input_model(96),
        "w600k_r50.onnx": sf.recognizer_model(), "zz_small.onnx": sf.square_input_model(64)})
    found = faces.find_model_pack(str(tmp_path))
    assert found.files == [("1k3d68.onnx", "landmark"), ("2d106det.onnx", "landmark"), ("det_10g.onnx", "detection"),
                           ("genderage.onnx", "genderage"), ("w600k_r50.onnx", "recognition"), ("zz_small.onnx", "")]
    assert (found.detector, found.recognizer) == (os.path.join(folder, "det_10g.onnx"),
                                                   os.path.join(folder, "w600k_r50.onnx"))
    assert found.recognizer_name == "w600k_r50.onnx" and found.warnings == [] and found.root == str(tmp_path / "insightface")


def test_graph_reader_agrees_with_onnx_and_onnxruntime(pack):
    import onnx

    for path in (pack.detector, pack.recognizer):
        graph = faces.read_onnx_graph(path)
        model = onnx.load(path)
        assert graph.node_names == [n.name for n in model.graph.node[:8]]
        session = ort.InferenceSession(path, providers=CPU)
        assert graph.inputs == [(i.name, i.shape) for i in session.get_inputs()]
        assert graph.outputs == [(o.name, o.shape) for o in session.get_outputs()]


def test_graph_reader_leaves_out_initializers_listed_as_inputs(tmp_path):
    """Old exports list their weights among the graph inputs; onnxruntime's get_inputs() (which insightface
    routes by) does not, and neither does the reader."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "weight")
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 112, 112]),
              helper.make_tensor_value_info("weight", TensorProto.FLOAT, [4, 3, 1, 1])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["None", 4, 112, 112])]
    graph = helper.make_graph([helper.make_node("Conv", ["data", "weight"], ["out"], name="conv")], "old", inputs,
                              outputs, [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = str(tmp_path / "old.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    read = faces.read_onnx_graph(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime warns about such inputs
    session = ort.InferenceSession(path, options, providers=CPU)
    assert read.inputs == [(i.name, i.shape) for i in session.get_inputs()] == [("data", ["None", 3, 112, 112])]
    assert faces.route(read) == "recognition"
    with pytest.raises(ValueError, match="not an ONNX model"):
        (tmp_path / "text.onnx").write_text("hello, this is no model at all, but it is long enough" * 10)
        faces.read_onnx_graph(str(tmp_path / "text.onnx"))


def test_missing_folder_says_where_and_what(tmp_path):
    expected = os.path.join(str(tmp_path), "insightface", "models", "buffalo_l")
    with pytest.raises(faces.FaceModelError) as e:
        faces.find_model_pack(str(tmp_path))
    text = str(e.value)
    for words in (expected, "det_10g.onnx", "w600k_r50.onnx", "buffalo_l.zip", "directly in that folder",
                  "Nothing is downloaded"):
        assert words in text
    with pytest.raises(faces.FaceModelError, match="scrfd_10g_bnkps.onnx and glintr100.onnx") as e:
        faces.find_model_pack(str(tmp_path), "antelopev2")
    assert "antelopev2.zip" in str(e.value)
    os.makedirs(tmp_path / "insightface" / "buffalo_l")  # one level short of models/
    with pytest.raises(faces.FaceModelError, match="move it into"):
        faces.find_model_pack(str(tmp_path))
    with pytest.raises(faces.FaceModelError, match="folder name such as buffalo_l"):
        faces.find_model_pack(str(tmp_path), "../buffalo_l")


def test_empty_nested_and_half_copied_folders(tmp_path):
    folder = sf.pack_folder(tmp_path)
    os.makedirs(folder)
    with pytest.raises(faces.FaceModelError, match=r"holds no \.onnx files \(found: nothing\)"):
        faces.find_model_pack(str(tmp_path))
    (tmp_path / "insightface" / "models" / "buffalo_l" / "buffalo_l.zip").write_bytes(b"PK")
    with pytest.raises(faces.FaceModelError, match="Found buffalo_l.zip: unzip it here"):
        faces.find_model_pack(str(tmp_path))
    os.remove(os.path.join(folder, "buffalo_l.zip"))
    sf.write_pack(tmp_path, pack=os.path.join("buffalo_l", "buffalo_l"))  # as antelopev2.zip unpacks
    with pytest.raises(faces.FaceModelError, match="Move the files up one folder") as e:
        faces.find_model_pack(str(tmp_path))
    assert os.path.join("buffalo_l", "det_10g.onnx") in str(e.value) and folder in str(e.value)

    half = tmp_path / "half"
    sf.write_pack(half, files={"det_10g.onnx": sf.detector_model(), "genderage.onnx": sf.square_input_model(96)})
    with pytest.raises(faces.FaceModelError, match="No face recognition model") as e:
        faces.find_model_pack(str(half))
    assert "det_10g.onnx (detection), genderage.onnx (genderage)" in str(e.value)
    assert "w600k_r50.onnx" in str(e.value)
    only_rec = tmp_path / "only_rec"
    sf.write_pack(only_rec, files={"w600k_r50.onnx": sf.recognizer_model()})
    with pytest.raises(faces.FaceModelError, match=r"No face detector .*w600k_r50.onnx \(recognition\)"):
        faces.find_model_pack(str(only_rec))


def test_unreadable_files_and_detectors_without_landmarks(tmp_path):
    folder = sf.write_pack(tmp_path)
    with open(os.path.join(folder, "a_pointer.onnx"), "wb") as f:
        f.write(b"version https://git-lfs.github.com/spec/v1\noid sha256:5838f7fe\nsize 16923827\n")
    with open(os.path.join(folder, "b_cut.onnx"), "wb") as f:
        f.write(sf.recognizer_model().SerializeToString()[:5000])
    found = faces.find_model_pack(str(tmp_path))
    assert found.recognizer_name == "w600k_r50.onnx" and len(found.warnings) == 2
    assert "a_pointer.onnx" in found.warnings[0] and "Git LFS pointer" in found.warnings[0]
    assert "b_cut.onnx" in found.warnings[1] and "could not be read" in found.warnings[1]
    if _insightface is not None:  # insightface opens every .onnx and stops on these: auto falls back
        auto = faces.make_analyzer(str(tmp_path), provider="CPU")
        assert isinstance(auto, faces.OnnxFaceAnalyzer) and len(auto.warnings) == 3
        assert "could not load the face models" in auto.warnings[2] and "Using the onnxruntime backend" in auto.warnings[2]
        assert len(auto.analyze(sf.squares_image(TWO))) == 2
        with pytest.raises(faces.FaceModelError, match="could not load the face models"):
            faces.make_analyzer(str(tmp_path), backend="insightface", provider="CPU")

    no_kps = tmp_path / "no_kps"
    sf.write_pack(no_kps, files={"det_10g.onnx": sf.detector_model(keypoints=False), "w600k_r50.onnx": sf.recognizer_model()})
    with pytest.raises(faces.FaceModelError, match="has 6 outputs; FaceID needs an SCRFD detector with the 5 landmarks"):
        faces.find_model_pack(str(no_kps))


def test_antelopev2_recognizer_in_buffalo_l_is_a_warning(tmp_path):
    sf.write_pack(tmp_path, files={"det_10g.onnx": sf.detector_model(), "glintr100.onnx": sf.recognizer_model(seed=1),
                                   "w600k_r50.onnx": sf.recognizer_model()})
    found = faces.find_model_pack(str(tmp_path))
    assert found.recognizer_name == "glintr100.onnx"  # "g" sorts before "w": insightface's choice too
    (warning,) = found.warnings
    for words in ("glintr100.onnx", "not buffalo_l's own w600k_r50.onnx", "sorts before", "h94 FaceID", "Move glintr100.onnx out"):
        assert words in warning
    # the other way round (Kolors#133: buffalo_l files copied into antelopev2/) keeps antelopev2's recognizer
    sf.write_pack(tmp_path, "antelopev2", files={
        "scrfd_10g_bnkps.onnx": sf.detector_model(), "glintr100.onnx": sf.recognizer_model(seed=1),
        "w600k_r50.onnx": sf.recognizer_model(), "det_10g.onnx": sf.detector_model()})
    kolors = faces.find_model_pack(str(tmp_path), "antelopev2")
    assert (os.path.basename(kolors.detector), kolors.recognizer_name, kolors.warnings) == ("det_10g.onnx", "glintr100.onnx", [])


def test_mxnet_recognizers_get_raw_pixels(tmp_path, analyzer):
    sf.write_pack(tmp_path, files={"det_10g.onnx": sf.detector_model(), "w600k_r50.onnx": sf.recognizer_model(mxnet=True)})
    mx = faces.OnnxFaceAnalyzer(faces.find_model_pack(str(tmp_path)), CPU)
    assert (mx.rec_mean, mx.rec_std, analyzer.rec_mean, analyzer.rec_std) == (0.0, 1.0, 127.5, 127.5)
    image = sf.squares_image(TWO)
    for a, b in zip(mx.analyze(image), analyzer.analyze(image)):
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-5, atol=1e-5)


def test_five_stride_detector(tmp_path):
    sf.write_pack(tmp_path, files={"det_10g.onnx": sf.detector_model(strides=(8, 16, 32, 64, 128), anchors=1),
                                   "w600k_r50.onnx": sf.recognizer_model()})
    five = faces.OnnxFaceAnalyzer(faces.find_model_pack(str(tmp_path)), CPU)
    found = five.analyze(sf.squares_image(TWO))
    assert len(found) == 2 and inside(faces.select_face(found, "largest").box, TWO[0])


# --- providers and backends -----------------------------------------------------------------------------

def test_providers(monkeypatch):
    assert "CPUExecutionProvider" in faces.available_providers()
    assert faces.choose_providers("CPU") == ["CPUExecutionProvider"]
    assert faces.choose_providers("cpu") == faces.choose_providers("CPUExecutionProvider") == ["CPUExecutionProvider"]
    with pytest.raises(faces.FaceModelError, match="Unknown execution provider 'GPU'.*CPU, CUDA, ROCM, DirectML"):
        faces.choose_providers("GPU")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    assert faces.choose_providers("auto") == ["CPUExecutionProvider"]  # Azure runs nothing locally
    with pytest.raises(faces.FaceModelError) as e:
        faces.choose_providers("CUDA")
    text = str(e.value)
    assert "CUDA (CUDAExecutionProvider) is not available" in text and "available: Azure" in text
    assert "CPU (CPUExecutionProvider)" in text and "onnxruntime-gpu" in text
    with pytest.raises(faces.FaceModelError, match="DirectML .* onnxruntime-directml"):
        faces.choose_providers("DirectML")
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu)
    assert faces.choose_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert faces.choose_providers("CUDA") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert faces.choose_providers("TensorRT") == ["TensorrtExecutionProvider", "CPUExecutionProvider"]


def test_backend_choice(models_root, monkeypatch):
    chosen = faces.make_analyzer(models_root, backend="onnxruntime", provider="CPU")
    assert isinstance(chosen, faces.OnnxFaceAnalyzer) and chosen.providers == CPU
    assert chosen.warnings == ([] if faces._import_cv2() else [chosen.warnings[0]])  # without cv2: numpy, and it says so
    auto = faces.make_analyzer(models_root)
    assert isinstance(auto, faces.InsightFaceAnalyzer if _insightface is not None else faces.OnnxFaceAnalyzer)
    with pytest.raises(faces.FaceModelError, match="Unknown face backend 'mediapipe'"):
        faces.make_analyzer(models_root, backend="mediapipe")
    with pytest.raises(faces.FaceModelError, match="Face models not found"):  # the folder is checked first
        faces.make_analyzer(os.path.join(models_root, "elsewhere"))


def test_broken_insightface_falls_back_to_onnxruntime(models_root, tmp_path, monkeypatch):
    """An insightface whose import fails with something else than ImportError (old Windows builds on
    numpy 2: "numpy.dtype size changed") must not stop the pack: auto uses onnxruntime and says why."""
    fake = tmp_path / "site" / "insightface"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, "
        "got 88 from PyObject')\n")
    for name in [m for m in sys.modules if m == "insightface" or m.startswith("insightface.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    auto = faces.make_analyzer(models_root, provider="CPU")
    assert isinstance(auto, faces.OnnxFaceAnalyzer)
    assert len(auto.warnings) == 1 and "numpy.dtype size changed" in auto.warnings[0]
    assert len(auto.analyze(sf.squares_image(TWO))) == 2
    with pytest.raises(faces.FaceModelError, match="numpy.dtype size changed.*pip install insightface"):
        faces.make_analyzer(models_root, backend="insightface")


def test_nothing_installed_says_what_to_install(models_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(faces.FaceModelError) as e:
        faces.make_analyzer(models_root)
    text = str(e.value)
    assert "neither can be imported" in text and "pip install onnxruntime" in text and "pip install insightface" in text
    assert "Python that runs ComfyUI" in text
    with pytest.raises(faces.FaceModelError, match="needs onnxruntime.*pip install onnxruntime"):
        faces.make_analyzer(models_root, backend="onnxruntime")
    with pytest.raises(faces.FaceModelError, match="insightface not installed.*pip install insightface"):
        faces.make_analyzer(models_root, backend="insightface")
    with pytest.raises(faces.FaceModelError, match="pip install onnxruntime"):
        faces.available_providers()


# --- the onnxruntime backend equals insightface ----------------------------------------------------------

@pytest.fixture(scope="module")
def insightface_analyzer(pack):
    if _insightface is None:
        pytest.skip(f"insightface is not importable ({_insightface_problem})")
    return faces.InsightFaceAnalyzer(pack, CPU)


@pytest.fixture
def no_downloads(monkeypatch):
    """insightface's only way to the network is utils.storage.download_file: make it fail the test."""
    import insightface.utils.storage as storage

    def refuse(*args, **kwargs):
        raise AssertionError(f"insightface tried to download {args} {kwargs}")
    monkeypatch.setattr(storage, "download_file", refuse)


def assert_same_faces(ours, theirs):
    assert len(ours) == len(theirs)
    worst = 0.0
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.box, b.box, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.landmarks, b.landmarks, rtol=0, atol=1e-5)
        assert abs(a.score - b.score) <= 1e-6
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.normed_embedding, b.normed_embedding, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(a.crop, b.crop)
        assert a.recognizer == b.recognizer
        worst = max(worst, float(np.abs(a.embedding - b.embedding).max()))
    return worst


@needs_insightface
@pytest.mark.parametrize("squares,height,width", [
    (ONE, 512, 768), (TWO, 640, 640), ([], 640, 640), ([(2, 2, 4)], 8, 8), ([(1000, 1500, 1024)], 4096, 4096),
    ([(40, 400, 96), (300, 40, 200)], 700, 500)])
def test_onnxruntime_backend_equals_insightface(analyzer, insightface_analyzer, no_downloads, squares, height, width):
    image = sf.squares_image(squares, height, width, seed=height)
    for size in (112, 224, 256, 336):
        assert_same_faces(analyzer.analyze(image, size), insightface_analyzer.analyze(image, size))


@needs_insightface
def test_insightface_on_the_other_layouts(tmp_path, no_downloads):
    """The mxnet-style recognizer and the 5-stride detector, through both backends."""
    for name, files in (("mxnet", {"det_10g.onnx": sf.detector_model(), "w600k_r50.onnx": sf.recognizer_model(mxnet=True)}),
                        ("five", {"det_10g.onnx": sf.detector_model(strides=(8, 16, 32, 64, 128), anchors=1),
                                  "w600k_r50.onnx": sf.recognizer_model(seed=3)})):
        sf.write_pack(tmp_path / name, files=files)
        found = faces.find_model_pack(str(tmp_path / name))
        ours, theirs = faces.OnnxFaceAnalyzer(found, CPU), faces.InsightFaceAnalyzer(found, CPU)
        assert theirs.app.models["recognition"].input_mean == ours.rec_mean
        image = sf.squares_image(TWO)
        assert_same_faces(ours.analyze(image), theirs.analyze(image))


@needs_insightface
def test_insightface_routes_and_aligns_as_we_do(tmp_path, pack, no_downloads):
    from insightface.model_zoo import model_zoo
    from insightface.utils import face_align

    sf.write_pack(tmp_path, files={"landmarks.onnx": sf.square_input_model(192), "genderage.onnx": sf.square_input_model(96)})
    for path in (pack.detector, pack.recognizer, *(os.path.join(sf.pack_folder(tmp_path), n) for n in
                                                   ("landmarks.onnx", "genderage.onnx"))):
        theirs = model_zoo.get_model(path, providers=CPU)
        ours = faces.route(faces.read_onnx_graph(path))
        theirs = "landmark" if theirs.taskname.startswith("landmark") else theirs.taskname
        assert {"attribute": "genderage"}.get(theirs, theirs) == ours
    rng = np.random.default_rng(0)
    for _ in range(20):
        lmk = (faces.ARCFACE_DST * rng.uniform(0.5, 4) + rng.uniform(-50, 400, 2)).astype(np.float32)
        lmk += rng.normal(0, 2, (5, 2)).astype(np.float32)
        for size in (112, 224, 256, 336, 512):
            np.testing.assert_array_equal(faces.estimate_norm(lmk, size), face_align.estimate_norm(lmk, size))


@needs_insightface
def test_insightface_backend_never_downloads(tmp_path, pack, no_downloads):
    found = faces.make_analyzer(os.path.dirname(os.path.dirname(os.path.dirname(pack.folder))), provider="CPU")
    assert isinstance(found, faces.InsightFaceAnalyzer) and found.recognizer_name == "w600k_r50.onnx"
    gone = faces.ModelPack("buffalo_l", str(tmp_path / "insightface" / "models" / "buffalo_l"), "", "", "w600k_r50.onnx")
    with pytest.raises(faces.FaceModelError, match="not downloaded automatically"):
        faces.InsightFaceAnalyzer(gone, CPU)


# --- a face that fills the frame --------------------------------------------------------------------------

def test_a_face_that_fills_the_frame_is_found_with_a_margin(tmp_path):
    """Detectors miss faces that fill the picture (a tight crop). This detector does too (its score falls with the
    box width): the plain analysis finds nothing, the one with a black margin finds the face, in the image's pixels."""
    sf.write_pack(tmp_path, files={"det_10g.onnx": sf.detector_model(width_penalty=0.015),
                                   "w600k_r50.onnx": sf.recognizer_model()})
    strict = faces.OnnxFaceAnalyzer(faces.find_model_pack(str(tmp_path)), CPU)
    image = sf.squares_image([(0, 0, 512)], 512, 512)  # the face is the whole photo
    assert strict.analyze(image) == []
    found, padded = faces.analyze_with_margin(strict, image)
    assert padded and len(found) == 1
    assert inside(found[0].box, (0, 0, 512), tol=16) and found[0].box[2] - found[0].box[0] > 480
    direct = strict.analyze(np.pad(image, ((256, 256), (256, 256), (0, 0))))[0]  # what the margin shows the detector
    assert np.array_equal(found[0].landmarks, direct.landmarks - 256) and np.array_equal(found[0].crop, direct.crop)
    assert np.array_equal(found[0].embedding, direct.embedding)
    small = sf.squares_image(ONE, 512, 768)
    assert faces.analyze_with_margin(strict, small)[1] is False  # found at once: no second try
