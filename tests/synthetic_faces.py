"""Tiny synthetic ONNX face models that insightface routes as buffalo_l (SCRFD + ArcFace), and test images.

Nothing is downloaded: the graphs are built here with `onnx.helper` (opset 13, ir_version 8), tens of KB each,
following faceid-kolors.md §2.4. What they compute, so a test can say what it expects:

Detector (9 rank-2 outputs: scores [N,1] x3, boxes [N,4] x3, keypoints [N,10] x3; N = (H/s)(W/s)·2 anchors):
  - a pixel is "bright" when its channel mean is above mid grey (the network sees (v - 127.5)/128, so the
    threshold is v ≈ 127.5, saturated by a steep ramp and Clip); a face is a bright area on a dark image;
  - only stride 16 can fire (strides 8 and 32 have a constant score of sigmoid(-10)); per 16×16 cell,
    f = the fraction of bright pixels, and the cell scores sigmoid(20 f - 15) · (1 - 0.005·w), w = the box
    width in cells, so a fully bright cell scores 0.9933·(1 - 0.005 w): the smaller of two faces scores higher,
    which makes "largest" and "highest score" pick different faces;
  - box distances count bright cells: left = Σ f over the cells left of the anchor in its row, right = Σ f
    from the anchor's cell rightwards, the same up and down its column (each ×16 px by the decoder). Every
    cell inside a bright square therefore predicts the square itself, and NMS leaves one face per square.
    Squares that share rows or columns add up, so test images keep their squares apart in both x and y;
  - the 5 keypoints are the ArcFace template (arcface_dst / 112) placed in that box, so alignment maps the
    square onto the template area of the crop.
Recognizer ([N,3,112,112] -> [N,512]): Conv 8×8 stride 8 -> Relu -> GlobalAveragePool -> Flatten -> Gemm with
fixed-seed random weights: a different crop gives a different embedding. `mxnet=True` builds the variant whose
first nodes are named Sub/Mul (insightface then feeds raw 0..255 pixels, mean 0 std 1) and normalises inside,
so it computes the same embedding as the plain one.
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET, IR_VERSION = 13, 8
ACTIVE_STRIDE = 16
REACH = 40  # cells counted each way by the box distances: 640 px at stride 16, the whole 640×640 detector input
# The 5-point ArcFace template (insightface utils/face_align.py arcface_dst), in a 112×112 crop.
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float32)


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _model(nodes, inputs, outputs, inits, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="synthetic_faces")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def detector_model(strides=(8, 16, 32), anchors=2, keypoints=True, width_penalty=0.005):
    """The SCRFD-shaped detector described in the module docstring.

    width_penalty: the score falls by this much per cell of box width; at 0.015 a face filling the 640 px detector
    input scores 0.4, under the threshold, as real detectors miss faces that fill the frame.

    strides=(8, 16, 32), anchors=2 is buffalo_l's layout (9 outputs with keypoints, 6 without);
    strides=(8, 16, 32, 64, 128), anchors=1 is the 5-stride layout (15 outputs with keypoints, 10 without).
    """
    a = anchors
    nodes, inits = [], []
    inits += [_const("ramp_w", 64.0), _const("ramp_b", 0.5), _const("zero", 0.0), _const("one", 1.0)]
    nodes += [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], axes=[1], keepdims=1, name="reduce_mean"),
        helper.make_node("Mul", ["mean", "ramp_w"], ["ramp0"], name="ramp_mul"),
        helper.make_node("Add", ["ramp0", "ramp_b"], ["ramp1"], name="ramp_add"),
        helper.make_node("Clip", ["ramp1", "zero", "one"], ["bright"], name="bright"),
    ]
    template = ARCFACE_DST / 112.0
    outs = {"score": [], "bbox": [], "kps": []}
    for s in strides:
        p = f"s{s}_"
        nodes.append(helper.make_node("AveragePool", ["bright"], [p + "f"], kernel_shape=[s, s], strides=[s, s],
                                      name=p + "pool"))
        if s == ACTIVE_STRIDE:
            k = 2 * REACH + 1
            wh = np.zeros((2, 1, 1, k), np.float32)
            wh[0, 0, 0, :REACH] = 1  # cells left of the anchor
            wh[1, 0, 0, REACH:] = 1  # the anchor's cell and those right of it
            inits += [_const(p + "wh", wh), _const(p + "wv", wh.transpose(0, 1, 3, 2))]
            nodes += [
                helper.make_node("Conv", [p + "f", p + "wh"], [p + "lr"], pads=[0, REACH, 0, REACH], name=p + "rows"),
                helper.make_node("Conv", [p + "f", p + "wv"], [p + "tb"], pads=[REACH, 0, REACH, 0], name=p + "cols"),
                helper.make_node("Concat", [p + "lr", p + "tb"], [p + "d"], axis=1, name=p + "dist"),  # l, r, t, b
            ]
            # distances (l, t, r, b) per anchor from (l, r, t, b)
            wb = np.zeros((4 * a, 4, 1, 1), np.float32)
            for i in range(a):
                for out_c, in_c in enumerate((0, 2, 1, 3)):
                    wb[4 * i + out_c, in_c] = 1
            # keypoint offsets: x = x1 + ax·(x2 - x1) gives (ax - 1)·l + ax·r, likewise in y
            wk = np.zeros((10 * a, 4, 1, 1), np.float32)
            for i in range(a):
                for j, (ax, ay) in enumerate(template):
                    wk[10 * i + 2 * j, 0], wk[10 * i + 2 * j, 1] = ax - 1, ax
                    wk[10 * i + 2 * j + 1, 2], wk[10 * i + 2 * j + 1, 3] = ay - 1, ay
            wf = np.zeros((a, 4, 1, 1), np.float32)
            wf[:, 0], wf[:, 1] = -width_penalty, -width_penalty  # 1 - width_penalty·(l + r)
            inits += [_const(p + "ws", np.full((a, 1, 1, 1), 20.0)), _const(p + "bs", np.full(a, -15.0)),
                      _const(p + "wb", wb), _const(p + "wk", wk), _const(p + "wf", wf), _const(p + "bf", np.ones(a))]
            nodes += [
                helper.make_node("Conv", [p + "f", p + "ws", p + "bs"], [p + "logit"], name=p + "score_conv"),
                helper.make_node("Sigmoid", [p + "logit"], [p + "sig"], name=p + "sigmoid"),
                helper.make_node("Conv", [p + "d", p + "wf", p + "bf"], [p + "size"], name=p + "size_conv"),
                helper.make_node("Mul", [p + "sig", p + "size"], [p + "score"], name=p + "score_mul"),
                helper.make_node("Conv", [p + "d", p + "wb"], [p + "bbox"], name=p + "bbox_conv"),
                helper.make_node("Conv", [p + "d", p + "wk"], [p + "kps"], name=p + "kps_conv"),
            ]
        else:  # never fires: constant score sigmoid(-10), zero distances
            inits += [_const(p + "ws", np.zeros((a, 1, 1, 1))), _const(p + "bs", np.full(a, -10.0)),
                      _const(p + "wb", np.zeros((4 * a, 1, 1, 1))), _const(p + "wk", np.zeros((10 * a, 1, 1, 1)))]
            nodes += [
                helper.make_node("Conv", [p + "f", p + "ws", p + "bs"], [p + "logit"], name=p + "score_conv"),
                helper.make_node("Sigmoid", [p + "logit"], [p + "score"], name=p + "sigmoid"),
                helper.make_node("Conv", [p + "f", p + "wb"], [p + "bbox"], name=p + "bbox_conv"),
                helper.make_node("Conv", [p + "f", p + "wk"], [p + "kps"], name=p + "kps_conv"),
            ]
        for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
            shape = p + kind + "_shape"
            inits.append(numpy_helper.from_array(np.array([-1, width], np.int64), shape))
            nodes += [
                helper.make_node("Transpose", [p + kind], [p + kind + "_t"], perm=[0, 2, 3, 1], name=p + kind + "_t"),
                helper.make_node("Reshape", [p + kind + "_t", shape], [f"{kind}_{s}"], name=p + kind + "_reshape"),
            ]
            outs[kind].append(helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [f"n{s}", width]))
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])]
    outputs = outs["score"] + outs["bbox"] + (outs["kps"] if keypoints else [])
    if not keypoints:  # drop the keypoint branches so the graph has no dangling outputs
        nodes = [n for n in nodes if "kps" not in n.name]
        inits = [t for t in inits if not t.name.endswith(("wk", "kps_shape"))]
    return _model(nodes, inputs, outputs, inits, "synthetic_scrfd")


def recognizer_model(seed=0, mxnet=False, size=112, width=512):
    """The ArcFace-shaped recognizer: [N,3,size,size] -> [N,width], random fixed-seed weights."""
    rng = np.random.default_rng(seed)
    inits = [_const("conv_w", rng.normal(0, 0.2, (16, 3, 8, 8))), _const("conv_b", rng.normal(0, 0.5, 16)),
             _const("fc_w", rng.normal(0, 1.0, (16, width))), _const("fc_b", rng.normal(0, 0.1, width))]
    nodes = []
    x = "input.1"
    if mxnet:  # raw pixels in, normalised inside, as the mxnet exports do ((x - 127.5) · 1/127.5)
        inits += [_const("minus", 127.5), _const("scale", 1 / 127.5)]
        nodes += [helper.make_node("Sub", [x, "minus"], ["sub"], name="Sub_0"),
                  helper.make_node("Mul", ["sub", "scale"], ["mul"], name="Mul_1")]
        x = "mul"
    nodes += [
        helper.make_node("Conv", [x, "conv_w", "conv_b"], ["c"], strides=[8, 8], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["683"], name="fc"),
    ]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, size, size])]
    outputs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", width])]
    return _model(nodes, inputs, outputs, inits, "synthetic_arcface")


def square_input_model(size, outputs=1):
    """A model insightface routes by its input alone: 192² is a landmark model, 96² gender/age (both ignored)."""
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["fc1"], name="flatten")]
    outs = [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", 3])]
    for i in range(1, outputs):
        nodes.append(helper.make_node("Identity", ["fc1"], [f"extra{i}"], name=f"extra{i}"))
        outs.append(helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, ["None", 3]))
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, size, size])]
    return _model(nodes, inputs, outs, [], f"synthetic_{size}")


def pack_folder(models_root, pack="buffalo_l"):
    return os.path.join(str(models_root), "insightface", "models", pack)


def write_pack(models_root, pack="buffalo_l", files=None):
    """Write {file name: model} into <models_root>/insightface/models/<pack>/ and return that folder.

    The default is buffalo_l's two files that FaceID needs: det_10g.onnx and w600k_r50.onnx.
    """
    folder = pack_folder(models_root, pack)
    os.makedirs(folder, exist_ok=True)
    if files is None:
        files = {"det_10g.onnx": detector_model(), "w600k_r50.onnx": recognizer_model()}
    for name, model in files.items():
        onnx.save(model, os.path.join(folder, name))
    return folder


def squares_image(squares, height=640, width=640, seed=0):
    """A black BGR uint8 image with bright textured squares (x, y, side): each a "face" of the detector.

    The texture (values 150..255, fixed seed, different per square) gives each face its own embedding and
    leaves every pixel of the square bright for the detector.
    """
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    for x, y, side in squares:
        image[y:y + side, x:x + side] = rng.integers(150, 256, (side, side, 3), dtype=np.uint8)
    return image
