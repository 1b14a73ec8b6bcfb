"""mdpr_plugin.FeatureExtractor: the features train_net.py --eval-only computes, for every kind of input and for the
boxes of a frame, and for a tracker (BoxMOT's get_features); one clear error for bad input; the README's feature
example and docs/trackers.md's tracker example run as written, the latter against BoxMOT itself."""
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from helpers import (MDPR_DEMO_CONFIG, colour_onnx, code_after_marker, evaluation_features, load_config, logged,
                     market1501_copy, save_demo_checkpoint)
from PIL import Image

from mdpr_plugin import FeatureExtractor
from mdpr_plugin.errors import InputError, MDPRError, MissingExtraError, MissingFileError
from mdpr_plugin.inference import pixel_boxes, tracker_pixel_boxes

TOLERANCE = 1e-5      # the extractor against the evaluation, on unit rows
SIZE = (128, 64)      # the demo's INPUT.SIZE_TEST (height, width)
FEATURE_EXAMPLE = ("README.md", "<!-- the feature example, run by tests/test_inference.py -->")
TRACKER_EXAMPLE = ("docs/trackers.md", "<!-- the tracker example, run by tests/test_inference.py -->")
EXAMPLE_WEIGHTS = os.path.join("logs", "demo", "mdpr", "model_final.pth")  # the checkpoint the example names


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    return save_demo_checkpoint(tmp_path_factory.mktemp("demo_weights"))


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """A Market-1501-layout copy of the bundled images that fastreid's Market1501 reads; two query images are
    stored at other sizes (one a PNG under its .jpg name), so that the test transforms resize them."""
    root = tmp_path_factory.mktemp("market")
    folder = market1501_copy(root)
    query = sorted(os.path.join(folder, "query", name) for name in os.listdir(os.path.join(folder, "query")))
    with Image.open(query[0]) as image:
        image.resize((image.width * 2, image.height * 2), Image.BILINEAR).save(query[0], format="JPEG", quality=95)
    with Image.open(query[1]) as image:
        image.resize((45, 101), Image.BILINEAR).save(query[1], format="PNG")
    with pytest.MonkeyPatch.context() as patch:
        import fastreid.data.build as data_build

        patch.setattr(data_build, "_root", str(root))
        yield query


def demo_cfg(weights, *overrides):
    return load_config(MDPR_DEMO_CONFIG, "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
                       "DATASETS.TESTS", '("Market1501",)', *overrides)


def rgb(path):
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def assert_close(features, reference, what):
    assert features.dtype == np.float32 and features.shape == reference.shape, what
    difference = float(np.abs(features - reference).max(initial=0))
    print(f"{what}: max abs diff {difference:.2g}")
    assert difference < TOLERANCE, what


# ------------------------------------------------------------------------------------------ features
@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_features_equal_the_evaluation_s_for_every_kind_of_input(demo_weights, market, flip):
    reference_of = evaluation_features(demo_cfg(demo_weights, "TEST.FLIP.ENABLED", str(flip)), "Market1501")
    paths = market[:12]
    reference = np.stack([reference_of[p] for p in paths])
    extractor = FeatureExtractor(MDPR_DEMO_CONFIG, demo_weights, device="cpu", batch_size=5,
                                 opts=["TEST.FLIP.ENABLED", str(flip)])
    assert extractor.flip is flip
    arrays = [rgb(p) for p in paths]
    assert {a.shape[:2] for a in arrays} >= {SIZE, (2 * SIZE[0], 2 * SIZE[1]), (101, 45)}  # some are resized
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float() for a in arrays]
    at_size = [i for i, a in enumerate(arrays) if a.shape[:2] == SIZE]

    assert_close(extractor(paths), reference, "paths")
    assert_close(extractor(arrays), reference, "RGB arrays")
    assert_close(extractor([a[:, :, ::-1] for a in arrays], bgr=True), reference, "BGR arrays")
    assert_close(extractor([Image.fromarray(a) for a in arrays]), reference, "PIL images")
    assert_close(extractor(tensors), reference, "3 x H x W tensors of any size")
    assert_close(extractor(torch.stack([tensors[i] for i in at_size])), reference[at_size], "a B x 3 x H x W batch")
    assert_close(extractor(paths[3]), reference[3:4], "one path")


FRAME_W, FRAME_H = 360, 240
# boxes (x1, y1, x2, y2) and the pixels their crops must cover: clipped to the frame, rounded outward
BOXES = [((12.4, 20.6, 91.2, 180.0), (12, 20, 92, 180)),
         ((300.5, 100.2, 400.0, 260.0), (300, 100, 360, 240)),   # beyond the right and bottom edges
         ((-15.0, -3.5, 50.3, 90.9), (0, 0, 51, 91)),           # beyond the left and top edges
         ((150.0, 40.0, 230.0, 200.0), (150, 40, 230, 200))]    # whole pixels


@pytest.fixture(scope="module")
def frame(market):
    """A FRAME_W x FRAME_H RGB frame: noise with three bundled people pasted in, enlarged."""
    picture = np.random.default_rng(0).integers(0, 256, (FRAME_H, FRAME_W, 3), dtype=np.uint8)
    for (x, y), path in zip(((10, 20), (150, 40), (280, 70)), market[2:5]):
        picture[y:y + 160, x:x + 80] = np.asarray(Image.fromarray(rgb(path)).resize((80, 160), Image.BILINEAR))
    return picture


def test_pixel_boxes_are_clipped_and_rounded_outward():
    pixels = pixel_boxes([box for box, _ in BOXES], FRAME_W, FRAME_H)
    assert pixels.tolist() == [list(expected) for _, expected in BOXES]


@pytest.mark.slow
def test_crops_equal_the_evaluation_s_features_of_the_same_regions(demo_weights, frame, tmp_path, monkeypatch):
    """The regions saved as PNG files (under .jpg names) in a Market-1501 folder, evaluated as --eval-only does."""
    import fastreid.data.build as data_build

    folder = market1501_copy(tmp_path)
    names = []
    for i, (_, (x1, y1, x2, y2)) in enumerate(BOXES):
        names.append(os.path.join(folder, "query", f"{1500 - i:04d}_c1s1_00000{i}_00.jpg"))
        Image.fromarray(frame[y1:y2, x1:x2]).save(names[-1], format="PNG")
    monkeypatch.setattr(data_build, "_root", str(tmp_path))
    for flip in (False, True):
        reference_of = evaluation_features(demo_cfg(demo_weights, "TEST.FLIP.ENABLED", str(flip)), "Market1501")
        reference = np.stack([reference_of[name] for name in names])
        extractor = FeatureExtractor(MDPR_DEMO_CONFIG, demo_weights, device="cpu", batch_size=3,
                                     opts=["TEST.FLIP.ENABLED", str(flip)])
        boxes = np.array([box for box, _ in BOXES])
        assert_close(extractor.crops(frame, boxes), reference, f"crops, flip {flip}")
        assert_close(extractor.crops(np.ascontiguousarray(frame[:, :, ::-1]), boxes, bgr=True), reference,
                     f"crops of a BGR frame, flip {flip}")


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def extractor(demo_weights):
    return FeatureExtractor("MDPR/demo.yml", demo_weights, device="cpu")


def one_clear_error(kind, call, *fragments):
    """``call()`` raises one ``kind`` (an MDPRError), whose one-line message holds every fragment."""
    with pytest.raises(kind) as raised:
        call()
    message = str(raised.value)
    assert isinstance(raised.value, MDPRError) and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_zero_boxes_give_a_0_x_d_array(extractor):
    frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    width = extractor(frame).shape[1]
    for boxes in (np.zeros((0, 4)), [], np.zeros((0, 6))[:, :4]):
        empty = extractor.crops(frame, boxes)
        assert empty.shape == (0, width) and empty.dtype == np.float32
    assert extractor([]).shape == (0, width)


EMPTY = f"1 of 2 boxes are empty in the {FRAME_W} x {FRAME_H} frame after clipping to it (zero width or height): "
INVERTED = "1 of 2 boxes are inverted (x2 < x1 or y2 < y1): "


@pytest.mark.parametrize("box, refusal", [
    ((50.0, 20.0, 50.0, 90.0), EMPTY),                                   # zero width
    ((10.0, 80.0, 60.0, 30.0), INVERTED),                                # y2 above y1
    ((400.0, 10.0, 450.0, 90.0), EMPTY),                                 # right of the frame
    ((10.0, -40.0, 60.0, -1.0), EMPTY),                                  # above the frame
    ((10.0, np.nan, 60.0, 90.0), "1 of 2 boxes are not finite: "),       # not a number
])
def test_an_empty_box_is_named_with_its_coordinates(extractor, box, refusal):
    frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    one_clear_error(InputError, lambda: extractor.crops(frame, [(0, 0, 10, 10), box]),
                    refusal + "box 1 (" + ", ".join(f"{v:g}" for v in box) + ")")


@pytest.mark.parametrize("images, kind, fragments", [
    (np.zeros((128, 64), np.uint8), InputError, ["image 0 is a uint8 array of shape (128, 64)", "H x W x 3 uint8"]),
    (np.zeros((128, 64, 4), np.uint8), InputError, ["shape (128, 64, 4)"]),
    ([np.zeros((128, 64, 3), np.uint8), np.zeros((128, 64, 3))], InputError, ["image 1 is a float64 array"]),
    (torch.zeros(2, 1, 128, 64), InputError, ["image 0 is a tensor of shape (1, 128, 64)", "3 x H x W"]),
    (["missing.jpg"], MissingFileError, ["image missing.jpg does not exist"]),
    (7, InputError, ["images is of type int"]),
    ([None], InputError, ["image 0 is of type NoneType"]),
])
def test_bad_images_give_one_clear_error(extractor, images, kind, fragments):
    one_clear_error(kind, lambda: extractor(images), *fragments)


def test_bad_frames_and_box_arrays_give_one_clear_error(extractor):
    frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    one_clear_error(InputError, lambda: extractor.crops(frame, np.zeros((2, 3))), "boxes_xyxy has shape (2, 3)",
                    "N x 4")
    one_clear_error(InputError, lambda: extractor.crops(frame[:, :, 0], [(0, 0, 5, 5)]),
                    f"frame is a uint8 array of shape ({FRAME_H}, {FRAME_W})")


def test_bad_arguments_give_one_clear_error(demo_weights, monkeypatch):
    build = lambda **options: lambda: FeatureExtractor("MDPR/demo.yml", demo_weights, **options)  # noqa: E731
    one_clear_error(InputError, build(batch_size=0), "batch_size must be a whole number of at least 1, got 0")
    one_clear_error(InputError, build(device="abacus"), "device 'abacus' is not a torch device")
    one_clear_error(InputError, build(onnx="model.onnx"), "give weights (PyTorch) or onnx (ONNX Runtime), not both")
    one_clear_error(MissingFileError, lambda: FeatureExtractor("MDPR/nothing.yml", demo_weights),
                    "Config file MDPR/nothing.yml not found")
    one_clear_error(MDPRError, lambda: FeatureExtractor("MDPR/demo.yml", "missing.pth"), "missing.pth not found")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    one_clear_error(MissingExtraError, lambda: FeatureExtractor("MDPR/demo.yml", onnx="model.onnx"),
                    "onnxruntime is not installed", "pip install -e '.[onnx]'")


def test_non_finite_features_name_the_images(demo_weights, market):
    extractor = FeatureExtractor("MDPR/demo.yml", demo_weights, device="cpu", batch_size=4)
    model = extractor.model

    def nan_in_row_2(images):
        features = model(images)
        features[2] = float("nan")
        return features

    extractor.model = nan_in_row_2
    one_clear_error(InputError, lambda: extractor(market[:4]), f"non-finite features (NaN or inf) for 1 of 4 images: "
                                                               f"{market[2]}")


# ------------------------------------------------------------------------------------------ trackers
def test_get_features_takes_boxmot_s_boxes_and_equals_crops_of_the_bgr_frame(extractor, frame):
    bgr = np.ascontiguousarray(frame[:, :, ::-1])
    boxes = np.array([box for box, _ in BOXES])
    reference = extractor.crops(bgr, boxes, bgr=True)
    detections = np.hstack([boxes, np.full((len(boxes), 1), 0.9), np.zeros((len(boxes), 1))])  # x1..y2, conf, class
    for given, what in ((boxes, "float64"), (boxes.astype(np.float32), "float32"),
                        (boxes.astype(np.float16), "float16"), (torch.tensor(boxes, dtype=torch.float32), "a tensor"),
                        (detections, "N x 6 detections")):
        assert_close(extractor.get_features(given, bgr), reference, f"get_features, boxes as {what}")
    assert extractor.get_features(np.zeros((0, 4), np.float32), bgr).shape == (0, reference.shape[1])


# boxes with no pixel in the FRAME_W x FRAME_H frame, and the 1-pixel-wide strip of the frame nearest to each
OUTSIDE = [((400.0, 10.0, 450.0, 90.0), (359, 10, 360, 90)),     # right of the frame: its last column
           ((10.0, -40.0, 60.0, -1.0), (10, 0, 60, 1)),           # above: its first row
           ((-50.0, 300.0, -5.0, 320.0), (0, 239, 1, 240)),      # below left: the corner pixel
           ((50.0, 20.0, 50.0, 90.0), (50, 20, 51, 90))]         # zero width: the column at x1


def test_tracker_pixel_boxes_give_a_box_outside_the_frame_its_nearest_strip():
    crops, outside = tracker_pixel_boxes([box for box, _ in BOXES + OUTSIDE], FRAME_W, FRAME_H)
    assert crops.tolist() == [list(expected) for _, expected in BOXES + OUTSIDE]
    assert outside.tolist() == [False] * len(BOXES) + [True] * len(OUTSIDE)


def test_a_box_outside_the_frame_does_not_stop_a_tracker_and_is_reported_once(demo_weights, frame):
    extractor = FeatureExtractor("MDPR/demo.yml", demo_weights, device="cpu")  # new: it warns once in its life
    boxes = [BOXES[0][0]] + [box for box, _ in OUTSIDE]
    with logged() as warnings:
        features = extractor.get_features(boxes, frame)
        extractor.get_features(boxes, frame)
    assert_close(features[1:], extractor.crops(frame, [strip for _, strip in OUTSIDE], bgr=True),
                 "boxes outside: their strips' features")
    assert_close(features[:1], extractor.crops(frame, [BOXES[0][0]], bgr=True), "the box inside")
    assert len(warnings) == 1, warnings
    assert f"4 of 5 boxes have no pixel in the {FRAME_W} x {FRAME_H} frame (box 1 (400, 10, 450, 90)" in warnings[0]


def test_get_features_batch_equals_get_features_frame_by_frame(extractor, frame):
    other = np.ascontiguousarray(frame[::-1])
    boxes = [np.array([box for box, _ in BOXES]), np.zeros((0, 4)), np.array([box for box, _ in BOXES[1:3]])]
    batched = extractor.get_features_batch(boxes, [frame, other, other])
    for features, frame_boxes, image in zip(batched, boxes, [frame, other, other]):
        assert_close(features, extractor.get_features(frame_boxes, image), "a frame of the batch")


@pytest.mark.parametrize("boxes, refusal", [
    ([(0, 0, 10, 10), (60, 80, 10, 30)], INVERTED + "box 1 (60, 80, 10, 30); boxes are x1, y1, x2, y2 in pixels: "
                                         "check the detector's box format (x, y, w, h boxes give x2 = x + w"),
    ([(0, 0, 10, 10), (10, 30, 60, 20)], INVERTED + "box 1 (10, 30, 60, 20)"),
    ([(0, 0, 10, 10), (10, np.nan, 60, 90)], "1 of 2 boxes are not finite: box 1 (10, nan, 60, 90)"),
    ([(0, 0, 10, 10), (10, np.inf, 60, 90)], "1 of 2 boxes are not finite: box 1 (10, inf, 60, 90)"),
    ([("10", "20", "60", "90")], "boxes_xyxy holds values that are not numbers (<U2: '10' ...)"),
    (np.ones((1, 4), bool), "boxes_xyxy holds values that are not numbers (bool: True ...)"),
    ([(10, 20, 60, None)], "boxes_xyxy holds values that are not numbers (object: None ...)"),
    (np.array([(10j, 20, 60, 90)]), "boxes_xyxy holds values that are not numbers (complex128: 10j ...)"),
    (np.zeros((2, 5)), "boxes_xyxy has shape (2, 5); it must be N x 4 or N x 6"),
    ([(10, 20, 60, 90), (10, 20)], "boxes_xyxy must be an N x 4 array of x1, y1, x2, y2 pixels"),
], ids=["x2 before x1", "y2 before y1", "nan", "inf", "text", "bool", "None", "complex", "5 columns", "ragged"])
def test_boxes_that_are_not_boxes_are_refused_by_a_tracker_s_call(extractor, frame, boxes, refusal):
    """An inverted box inside the frame got the feature of a 1-pixel strip; text, booleans and complex numbers
    were read as numbers."""
    one_clear_error(InputError, lambda: extractor.get_features(boxes, frame), refusal)


def test_bad_tracker_input_gives_one_clear_error(extractor, frame):
    one_clear_error(InputError, lambda: extractor.get_features_batch([np.zeros((0, 4))] * 2, [frame]),
                    "2 box arrays for 1 images")
    one_clear_error(InputError, lambda: extractor.get_features([(0, 0, 10, 10)], frame[:, :, 0]),
                    "image is a uint8 array of shape")


@pytest.mark.parametrize("scale, fragments", [
    ("to_tensor", ["image 0 is a float tensor of values from 0", "to 1: the 0-1 scale of torchvision's ToTensor",
                   "multiply it by 255"]),
    ("normalised", ["image 0 is a tensor of values from -2", "outside 0-255: give unnormalised 0-255 RGB values"]),
    ("above_255", ["image 0 is a tensor of values from 2 to 510, outside 0-255"]),
    ("nan", ["image 0 is a tensor holding NaN or inf"]),
])
def test_tensors_on_another_scale_are_refused(extractor, market, scale, fragments):
    """The model normalises 0-255 input itself: ToTensor's 0-1 values gave features at cosine 0.49 from the right
    ones, without an error."""
    from torchvision.transforms import functional as TF

    zero_to_one = TF.to_tensor(Image.open(market[2]).convert("RGB"))
    tensor = {"to_tensor": zero_to_one,
              "normalised": TF.normalize(zero_to_one, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
              "above_255": zero_to_one * 510,
              "nan": zero_to_one.clone().fill_(float("nan"))}[scale]
    one_clear_error(InputError, lambda: extractor(tensor), *fragments)
    one_clear_error(InputError, lambda: extractor.preprocess(tensor[None]), *fragments)


def test_tensors_of_0_255_values_of_either_type_are_the_file_s_features(extractor, market):
    from torchvision.transforms import functional as TF

    picture = Image.open(market[2]).convert("RGB")
    expected = extractor(market[2])
    assert_close(extractor(TF.to_tensor(picture) * 255), expected, "ToTensor's values times 255")
    assert_close(extractor(TF.pil_to_tensor(picture)), expected, "PILToTensor's uint8 values")
    black = extractor(torch.zeros(3, *SIZE))  # zero on either scale
    assert black.shape == expected.shape and np.isfinite(black).all()


def test_all_zero_features_name_the_images(demo_weights, market):
    extractor = FeatureExtractor("MDPR/demo.yml", demo_weights, device="cpu", batch_size=4)
    model = extractor.model

    def zero_in_row_1(images):
        features = model(images)
        features[1] = 0
        return features

    extractor.model = zero_in_row_1
    one_clear_error(InputError, lambda: extractor(market[:4]),
                    f"gave all-zero features (at the same distance from every feature) for 1 of 4 images: "
                    f"{market[1]}. Check the model's weights")


@pytest.mark.parametrize("repeats, symbolic", [(1, False), (2, False), (2, True)], ids=["3", "6", "symbolic"])
def test_an_onnx_file_of_another_width_is_refused(tmp_path, repeats, symbolic):
    """The demo's eval feature is 1152 wide; a graph of another model ran and gave features of another space."""
    path = colour_onnx(tmp_path / "other.onnx", repeats, symbolic)
    one_clear_error(InputError, lambda: FeatureExtractor("MDPR/demo.yml", onnx=path),
                    f"{path} gives {3 * repeats}-d features but the config's model (MDPR) gives 1152-d",
                    "pass the config it was exported with")


def test_eval_feature_width_is_the_model_s_for_each_config():
    from mdpr_plugin.inference import eval_feature_width

    widths = {name: eval_feature_width(load_config(name)) for name in
              ("configs/MDPR/demo.yml", "configs/Baseline-demo.yml", "configs/MDPR/market.yml")}
    assert widths == {"configs/MDPR/demo.yml": 1152, "configs/Baseline-demo.yml": 512, "configs/MDPR/market.yml": 4608}


@pytest.mark.parametrize("damage", ["text", "cut", "checkpoint"])
def test_a_corrupt_onnx_file_is_one_error_naming_it(tmp_path, demo_weights, damage):
    path = tmp_path / "model.onnx"
    if damage == "text":
        path.write_text("not a model\n")
    elif damage == "cut":
        data = open(colour_onnx(tmp_path / "whole.onnx"), "rb").read()
        path.write_bytes(data[: len(data) // 2])
    else:
        shutil.copy(demo_weights, path)
    one_clear_error(InputError, lambda: FeatureExtractor("MDPR/demo.yml", onnx=path),
                    f"{path} could not be loaded as an ONNX model: it is truncated, corrupt or not an ONNX file; "
                    "export it again with mdpr-export")


# ------------------------------------------------------------------------------- the documentation's examples
def run_example(page_and_marker, weights, folder, monkeypatch):
    """Run the example after a marker line of a page in ``folder``, where the checkpoint it names is ``weights``;
    return its variables."""
    os.makedirs(os.path.join(folder, os.path.dirname(EXAMPLE_WEIGHTS)))
    shutil.copy(weights, os.path.join(folder, EXAMPLE_WEIGHTS))
    monkeypatch.chdir(folder)
    variables = {"__name__": "__example__"}
    exec(compile(code_after_marker(*page_and_marker), page_and_marker[0], "exec"), variables)
    return variables


def test_the_readme_feature_example_runs_as_written(demo_weights, tmp_path, monkeypatch):
    variables = run_example(FEATURE_EXAMPLE, demo_weights, tmp_path, monkeypatch)
    extractor, features, crop_features = variables["extractor"], variables["features"], variables["crop_features"]
    assert features.shape == (4, extractor.feature_dim)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    # the frame holds the first two files' people side by side: their boxes give those files' features
    assert crop_features.shape == (2, extractor.feature_dim)
    np.testing.assert_allclose(crop_features, features[:2], atol=TOLERANCE)


def test_the_tracker_example_runs_as_written(demo_weights, tmp_path, monkeypatch, no_downloads):
    from boxmot.structures import Tracks

    variables = run_example(TRACKER_EXAMPLE, demo_weights, tmp_path, monkeypatch)
    features, extractor, tracker = variables["features"], variables["extractor"], variables["tracker"]
    assert features.shape[0] == 4
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    assert tracker._reid_model is extractor, "the tracker owns the extractor"
    assert variables["tracks"].ndim == 2 and variables["tracks"].shape[1] == 8 and len(variables["tracks"])
    assert isinstance(variables["stream_tracks"], Tracks) and len(variables["stream_tracks"])
    assert [t._reid_model for t in variables["trackers"]] == [None, None], "the streams' trackers have no model"
