"""MDPR features from Python: ``FeatureExtractor(config, weights)(images)``, and one feature per detector box of
a video frame (``extractor.crops(frame, boxes)``); for multi-object trackers, the extractor is a BoxMOT appearance
model itself (``extractor.get_features(boxes, bgr_frame)``: ``BotSort(reid_model=extractor)``).

Every input takes the path ``train_net.py --eval-only`` takes: files through the plugin's image reader, an RGB
PIL image, the test transforms (resize to INPUT.SIZE_TEST), the eval model, TEST.FLIP as the evaluation does it.
The rows are L2-normalised: an inner product is the cosine similarity, ``1 - inner product`` fastreid's cosine
distance.
"""
import logging
import numbers
import os

import numpy as np
import torch
import torch.nn.functional as F
from fastreid.config import CfgNode
from PIL import Image

from .authors_keys import warn_authors_keys
from .config import build_config, prepare_user_code
from .data import build_transforms, read_image
from .data.images import to_rgb
from .devices import resolve_device
from .errors import InputError, MDPRError, MissingFileError
from .onnx_runtime import INPUT_NAME, OUTPUT_NAME, onnx_cuda_available, onnx_session

logger = logging.getLogger(__name__)

IMAGES_HELP = ("a path, a PIL image, an H x W x 3 uint8 array (RGB, or BGR with bgr=True) or a 3 x H x W tensor "
               "of 0-255 values, or a list of them, or a B x 3 x H x W tensor")
NORM_EPS = 1e-12  # what torch's F.normalize and mdpr-search divide by at the least


def non_finite_rows(features):
    """Indices of the rows of ``features`` holding a NaN or an infinity."""
    return np.flatnonzero(~np.isfinite(features.reshape(len(features), -1)).all(axis=1))


def zero_rows(features):
    """Indices of the rows of ``features`` that are all zero (L2 norm below ``NORM_EPS``): normalising leaves them
    at zero, and a zero row is at the same cosine distance from every feature, so a search ranks it at random."""
    return np.flatnonzero(np.linalg.norm(features.reshape(len(features), -1), axis=1) < NORM_EPS)


def first_few(names, shown=5):
    """``a, b, c and 4 more``: a list of names short enough for a one-line message."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _checked_array(array, name):
    """``array`` if it is an H x W x 3 uint8 image, else the one error saying what it is."""
    if not (array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8 and min(array.shape[:2]) > 0):
        raise InputError(f"{name} is a {array.dtype} array of shape {array.shape}; an image must be H x W x 3 "
                         "uint8 (RGB, or BGR with bgr=True as OpenCV gives it)")
    return array


def _checked_pixel_values(tensor, name):
    """``tensor`` if its values can be 0-255 pixels. The model normalises its input itself, so a tensor on
    another scale runs without error and gives wrong features: a float tensor of 0-1 values (torchvision's
    ``ToTensor``) or a normalised one (negative values) is refused, naming the image and its range."""
    low, high = (float(v) for v in torch.aminmax(tensor.detach().float()))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{name} is a tensor holding NaN or inf; give 0-255 pixel values")
    if low < 0 or high > 255:
        raise InputError(f"{name} is a tensor of values from {low:.3g} to {high:.3g}, outside 0-255: give "
                         "unnormalised 0-255 RGB values (the model normalises them itself; clamp(0, 255) after a "
                         "resize that overshoots)")
    if tensor.is_floating_point() and 0 < high <= 1:
        raise InputError(f"{name} is a float tensor of values from {low:.3g} to {high:.3g}: the 0-1 scale of "
                         "torchvision's ToTensor, but the model takes 0-255 values; multiply it by 255 (or give a "
                         "uint8 tensor, e.g. from PILToTensor)")
    return tensor


def _image_list(images):
    """``images`` (one image or many, see ``IMAGES_HELP``) as a list of single images."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    raise InputError(f"images is of type {type(images).__name__}; give {IMAGES_HELP}")


def _numeric_array(boxes_xyxy):
    """``boxes_xyxy`` as a float64 array, refusing values that are not numbers: text ("10" would be read as 10),
    booleans, complex numbers, dates, None."""
    if isinstance(boxes_xyxy, torch.Tensor):
        boxes_xyxy = boxes_xyxy.detach().cpu()
    try:
        boxes = np.asarray(boxes_xyxy)
    except (TypeError, ValueError) as error:
        raise InputError(f"boxes_xyxy must be an N x 4 array of x1, y1, x2, y2 pixels ({error})") from None
    if boxes.dtype.kind not in "iuf":  # object arrays of numbers pass (a list mixing Python and numpy numbers)
        values = [value.item() if isinstance(value, np.generic) else value for value in boxes.flat]
        wrong = [value for value in values if not isinstance(value, numbers.Real) or isinstance(value, bool)]
        if wrong:
            raise InputError(f"boxes_xyxy holds values that are not numbers ({boxes.dtype}: {wrong[0]!r} ...); it "
                             "must be an N x 4 array of x1, y1, x2, y2 pixels")
    return boxes.astype(np.float64)


def _box_array(boxes_xyxy, columns=(4,)):
    """``boxes_xyxy`` as an N x 4 float64 array (the first four columns of an N x ``columns`` one), refusing what is
    not a box: values that are not numbers or not finite, x2 before x1 or y2 before y1."""
    boxes = _numeric_array(boxes_xyxy)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] not in columns:
        accepted = ("N x 4 (x1, y1, x2, y2 in pixels), e.g. dets[:, :4] of N x 6 detections" if columns == (4,) else
                    " or ".join(f"N x {n}" for n in columns) + " (x1, y1, x2, y2 in pixels, then any other columns)")
        raise InputError(f"boxes_xyxy has shape {boxes.shape}; it must be {accepted}")
    boxes = boxes[:, :4]
    for wrong, what, fix in (
            (~np.isfinite(boxes).all(axis=1), "not finite", "drop these, or check the detector's output"),
            ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]), "inverted (x2 < x1 or y2 < y1)",
             "boxes are x1, y1, x2, y2 in pixels: check the detector's box format (x, y, w, h boxes give x2 = x + w, "
             "y2 = y + h)")):
        if wrong.any():
            named = _named_boxes(boxes, np.flatnonzero(wrong))
            raise InputError(f"{len(named)} of {len(boxes)} boxes are {what}: {first_few(named)}; {fix}")
    return boxes


def _clipped(boxes, width, height):
    return np.clip(boxes, 0, [width, height, width, height])


def _rounded_outward(clipped):
    """Integer crops covering every pixel the clipped boxes touch: x1, y1 floored, x2, y2 ceiled."""
    return np.concatenate([np.floor(clipped[:, :2]), np.ceil(clipped[:, 2:])], axis=1).astype(np.int64)


def _named_boxes(boxes, rows):
    return [f"box {i} ({', '.join(f'{v:g}' for v in boxes[i])})" for i in rows]


def pixel_boxes(boxes_xyxy, width, height):
    """N x 4 integer crops ``x1, y1, x2, y2`` of a ``width`` x ``height`` frame for boxes in pixels: clipped to
    the frame, then rounded outward (x1, y1 floored, x2, y2 ceiled), so that a crop covers every pixel its box
    touches. A box that is not one (see :func:`_box_array`) or is empty after clipping (zero width or height) is an
    error naming it."""
    boxes = _box_array(boxes_xyxy)
    clipped = _clipped(boxes, width, height)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if empty.any():
        named = _named_boxes(boxes, np.flatnonzero(empty))
        raise InputError(f"{len(named)} of {len(boxes)} boxes are empty in the {width} x {height} frame after "
                         f"clipping to it (zero width or height): {first_few(named)}; boxes are x1, y1, x2, y2 in "
                         "pixels: drop these, or check the detector's box format")
    return _rounded_outward(clipped)


def tracker_pixel_boxes(boxes_xyxy, width, height):
    """``(crops, outside)`` for a tracker's boxes (N x 4, or the first four columns of N x 6 detections): the
    crops of :func:`pixel_boxes`, except that a box with no pixel left in the frame after clipping is not an error
    (a detection drifting out of view must not stop a tracking loop): each side that has no pixel becomes the one
    pixel row or column of the frame nearest to it, so its crop is the 1-pixel-wide strip of the frame nearest to the
    box. ``outside`` marks those boxes. A box that is not one (not finite, inverted: see :func:`_box_array`) is
    still an error: no strip stands for it."""
    boxes = _box_array(boxes_xyxy, columns=(4, 6))
    crops = _rounded_outward(_clipped(boxes, width, height))
    outside = (crops[:, 2] <= crops[:, 0]) | (crops[:, 3] <= crops[:, 1])
    crops[:, :2] = np.minimum(crops[:, :2], [width - 1, height - 1])
    crops[:, 2:] = np.maximum(crops[:, 2:], crops[:, :2] + 1)
    return crops, outside


def crop_regions(frame, boxes_xyxy):
    """The regions of ``frame`` (H x W x 3 uint8) that :func:`pixel_boxes` gives for ``boxes_xyxy``, as arrays."""
    frame = _checked_array(np.asarray(frame), "frame")
    return [frame[y1:y2, x1:x2] for x1, y1, x2, y2 in pixel_boxes(boxes_xyxy, frame.shape[1], frame.shape[0])]


def _loaded_onnx_session(path, **options):
    """``onnx_session(path, **options)``; a file ONNX Runtime cannot load is the one error naming it."""
    try:
        return onnx_session(path, **options)
    except MDPRError:
        raise
    except Exception as error:  # noqa: BLE001  ONNX Runtime's errors (InvalidProtobuf, ...) derive from Exception
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise InputError(f"{path} could not be loaded as an ONNX model: it is truncated, corrupt or not an ONNX "
                         f"file; export it again with mdpr-export ({reason})") from None


def eval_feature_width(cfg):
    """D, the width of the eval feature of ``cfg``'s model, without weights: the model is built and run on the
    meta device, which computes shapes alone (0.2 s for the demo, 0.5 s for a ResNet-50 MDPR; on the CPU, 0.4 and
    1.4 s). A model that cannot run there (data-dependent code of a user's module) runs once on the CPU."""
    from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.PRETRAIN = False  # the width does not depend on the weights
    build = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)

    def width_on(device):
        with torch.device(device), torch.no_grad():
            return int(build(cfg).eval()(torch.zeros(1, 3, *cfg.INPUT.SIZE_TEST)).shape[1])

    try:
        return width_on("meta")
    except (NotImplementedError, RuntimeError):  # a meta tensor's values were asked for
        return width_on("cpu")


def _check_onnx_features(session, path, cfg):
    """Refuse an ONNX model whose ``features`` output is not the width of the config's eval feature: a graph
    exported from another model (or config) would otherwise run and give features of another space."""
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if OUTPUT_NAME not in outputs or len(outputs[OUTPUT_NAME]) != 2:
        raise InputError(f"{path} has no B x D output named '{OUTPUT_NAME}' (its outputs: {outputs}); export the "
                         "model with mdpr-export")
    width = outputs[OUTPUT_NAME][1]
    if not isinstance(width, int):  # a symbolic width: run the graph once
        image = np.zeros((1, 3, *cfg.INPUT.SIZE_TEST), np.float32)
        width = session.run([OUTPUT_NAME], {INPUT_NAME: image})[0].shape[1]
    expected = eval_feature_width(cfg)
    if width != expected:
        raise InputError(f"{path} gives {width}-d features but the config's model ({cfg.MODEL.META_ARCHITECTURE}) "
                         f"gives {expected}-d: the file was exported from another model or config; pass the config "
                         "it was exported with, or export this model with mdpr-export")


def _onnx_session(path, size, device):
    """An ONNX Runtime session for an mdpr-export graph taking ``size`` (h, w) images, on torch's thread count,
    with the CUDA provider for a CUDA ``device``."""
    cuda = device.type == "cuda"
    session = _loaded_onnx_session(path, threads=torch.get_num_threads(), cuda=cuda, device_id=device.index or 0)
    if cuda and "CUDAExecutionProvider" not in session.get_providers():
        raise InputError(f"device {device}: ONNX Runtime could not run {path} on the GPU (its providers: "
                         f"{session.get_providers()}); check that onnxruntime-gpu matches this machine's CUDA, or "
                         "give device 'cpu'")
    inputs = {i.name: i.shape for i in session.get_inputs()}
    if INPUT_NAME not in inputs:
        raise InputError(f"{path} has no input named '{INPUT_NAME}' (it has {sorted(inputs)}); "
                         "export the model with mdpr-export")
    graph_size = list(inputs[INPUT_NAME][2:])
    if graph_size != list(size):
        raise InputError(f"{path} takes {graph_size[0]}x{graph_size[1]} images but INPUT.SIZE_TEST is "
                         f"{size[0]}x{size[1]}; pass the config the model was exported with")
    return session


_UNUSABLE_FEATURES = [  # (rows found by, what they are, the fix) for the extractor's error
    (non_finite_rows, "non-finite features (NaN or inf)",
     "Check the model's weights for NaN (a diverged training run) and those images."),
    (zero_rows, "all-zero features (at the same distance from every feature)",
     "Check the model's weights (an untrained or broken head) and those images."),
]


class FeatureExtractor:
    """``FeatureExtractor(config, weights)(images)``: N x D float32 features, each row L2-normalised, equal to what
    ``train_net.py --eval-only`` computes for the same images.

    ``config``: a config file, a packaged config's name ("MDPR/demo.yml") or a config built with
    :func:`mdpr_plugin.config.build_config`; ``weights``: the checkpoint (MODEL.WEIGHTS); ``device``: "auto"
    (MODEL.DEVICE where this machine has it, else the CPU; the CPU with ``onnx``) or a torch device; ``onnx``: an
    .onnx file written by mdpr-export, run by ONNX Runtime instead of PyTorch, on the CPU (with as many threads as
    torch uses) or, with a CUDA ``device``, by onnxruntime-gpu's CUDA provider;
    ``opts``: ``KEY VALUE`` config overrides. ``model`` is the PyTorch eval model (None with ``onnx``). An
    ``onnx`` file whose feature width is not that of the config's model is refused.

    Tensors must hold 0-255 RGB values, as the model takes them (it normalises them itself): a float tensor of
    values within 0-1 (torchvision's ``ToTensor``; multiply it by 255) or one with values outside 0-255 (a
    normalised tensor) is refused, naming the image, rather than guessed at. An all-black float tensor (all zero)
    is the same on both scales and accepted. Features that come out all zero, or not finite, are refused.
    """

    def __init__(self, config, weights=None, device="auto", batch_size=64, onnx=None, opts=()):
        if isinstance(config, CfgNode):
            if opts:
                raise InputError("opts apply to a config file; set the keys on the config node you pass instead")
            cfg = prepare_user_code(config.clone())
        else:
            cfg = build_config(config, opts)
            warn_authors_keys(cfg)
        cfg.defrost()
        if weights is not None:
            cfg.MODEL.WEIGHTS = os.fspath(weights)
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise InputError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.device = self._device(device, cfg, onnx)
        cfg.MODEL.DEVICE = str(self.device)
        cfg.freeze()
        self.model = self.session = None
        if onnx is not None:
            if weights is not None:
                raise InputError("give weights (PyTorch) or onnx (ONNX Runtime), not both")
            self.session = _onnx_session(os.fspath(onnx), cfg.INPUT.SIZE_TEST, self.device)
            _check_onnx_features(self.session, os.fspath(onnx), cfg)
            self.backend, self.source = "onnx", onnx
        else:
            from .engine import build_eval_model  # the trainer's imports, only for the PyTorch backend

            self.model, cfg = build_eval_model(cfg)
            self.backend, self.source = "torch", cfg.MODEL.WEIGHTS
        self.cfg = cfg
        self.size = tuple(cfg.INPUT.SIZE_TEST)
        self.flip = cfg.TEST.FLIP.ENABLED
        self.transform = build_transforms(cfg, is_train=False)
        self._feature_dim = None
        self._warned_outside = False

    @staticmethod
    def _device(device, cfg, onnx):
        if device == "auto":
            return torch.device("cpu") if onnx is not None else resolve_device(cfg.MODEL.DEVICE)
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise InputError(f"device {device!r} is not a torch device ({error}); give 'auto', 'cpu' or "
                             "'cuda[:N]'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {device}: CUDA is not available here; give device 'auto' or 'cpu'")
        if onnx is not None and device.type not in ("cpu", "cuda"):
            raise InputError(f"device {device}: the ONNX backend runs on the CPU or a CUDA GPU")
        if onnx is not None and device.type == "cuda":
            if not onnx_cuda_available():
                raise InputError(f"device {device}: this ONNX Runtime has no CUDA provider; install onnxruntime-gpu "
                                 "in place of onnxruntime, or give device 'cpu'")
        return device

    # ------------------------------------------------------------------------------------- features
    def __call__(self, images, bgr=False):
        """N x D float32 features of ``images`` (see ``IMAGES_HELP``), rows L2-normalised; ``bgr``: arrays and
        tensors hold B, G, R channels (OpenCV's order); files and PIL images carry their own."""
        return self._concatenated(self.feature_batches(images, bgr))

    def crops(self, frame, boxes_xyxy, bgr=False):
        """One feature per box of ``frame`` (H x W x 3 uint8; ``bgr`` for OpenCV frames): N x D, rows
        L2-normalised. Boxes are N x 4 ``x1, y1, x2, y2`` pixels, clipped to the frame and rounded outward (see
        :func:`pixel_boxes`); zero boxes give a 0 x D array; a box with no pixel in the frame is an error (a
        tracker's :meth:`get_features` gives it a feature instead)."""
        return self._concatenated(self._feature_batches(crop_regions(frame, boxes_xyxy), bgr, "box"))

    def get_features(self, boxes_xyxy, image):
        """A tracker's call (BoxMOT's appearance-model protocol, so ``BotSort(reid_model=extractor)`` works): one
        feature per box of ``image``, an OpenCV frame (H x W x 3 uint8, BGR), as an N x D float32 array, rows
        L2-normalised. ``boxes_xyxy``: N x 4 ``x1, y1, x2, y2`` pixels of any dtype (or N x 6 detections), clipped
        and rounded as :meth:`crops` does, whose features these equal (``crops(image, boxes, bgr=True)``). Unlike
        :meth:`crops`, a box with no pixel left in the frame does not raise: its row is the feature of the frame's
        1-pixel-wide strip nearest to it (see :func:`tracker_pixel_boxes`), with a warning the first time."""
        return self.get_features_batch([boxes_xyxy], [image])[0]

    def get_features_batch(self, boxes_per_frame, images):
        """:meth:`get_features` for several frames (of one stream or several) in one batched pass: one N_i x D
        array per frame, for embeddings computed before the trackers' updates (BoxMOT's ``Detections``)."""
        if len(boxes_per_frame) != len(images):
            raise InputError(f"{len(boxes_per_frame)} box arrays for {len(images)} images; give one N x 4 array of "
                             "boxes per image")
        regions = [self._tracker_regions(image, boxes) for boxes, image in zip(boxes_per_frame, images)]
        features = self._concatenated(self._feature_batches([r for frame in regions for r in frame], True, "box"))
        return np.split(features, np.cumsum([len(frame) for frame in regions])[:-1])

    def _tracker_regions(self, image, boxes_xyxy):
        """The regions of ``image`` that :func:`tracker_pixel_boxes` gives, the first box outside it reported."""
        frame = _checked_array(np.asarray(image), "image")
        height, width = frame.shape[:2]
        crops, outside = tracker_pixel_boxes(boxes_xyxy, width, height)
        if outside.any() and not self._warned_outside:
            self._warned_outside = True  # once: a tracker calls this every frame
            named = _named_boxes(_box_array(boxes_xyxy, columns=(4, 6)), np.flatnonzero(outside))
            logger.warning("%d of %d boxes have no pixel in the %d x %d frame (%s): each gets the feature of the "
                           "frame's 1-pixel-wide strip nearest to it. Said once per FeatureExtractor.",
                           len(named), len(crops), width, height, first_few(named))
        return [frame[y1:y2, x1:x2] for x1, y1, x2, y2 in crops]

    def feature_batches(self, images, bgr=False):
        """The features of ``images`` one batch (``batch_size`` images) at a time, for progress over long lists."""
        return self._feature_batches(_image_list(images), bgr, "image")

    def preprocess(self, images, bgr=False):
        """``images`` as the model takes them: a B x 3 x H x W float tensor of 0-255 RGB values at INPUT.SIZE_TEST,
        on the extractor's device."""
        return self._batch(_image_list(images), bgr, "image", 0)

    @property
    def feature_dim(self):
        """D, the width of a feature (found by running the model once)."""
        if self._feature_dim is None:
            with torch.no_grad():
                self._feature_dim = self._run(torch.zeros(1, 3, *self.size, device=self.device)).shape[1]
        return self._feature_dim

    def _concatenated(self, batches):
        batches = list(batches)
        return np.concatenate(batches) if batches else np.zeros((0, self.feature_dim), np.float32)

    def _feature_batches(self, items, bgr, label):
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            features = self._features(self._batch(chunk, bgr, label, start))
            for find, what, fix in _UNUSABLE_FEATURES:
                bad = find(features)
                if len(bad):
                    names = [self._name(chunk[i], label, start + i) for i in bad]
                    raise InputError(f"The model {self.source} gave {what} for {len(bad)} of {len(chunk)} images: "
                                     f"{first_few(names)}. {fix}")
            yield features

    @torch.no_grad()
    def _features(self, batch):
        """The evaluation's features of ``batch``: with TEST.FLIP the mean of the model's output on the batch and on
        its flipped copy (taken first: fastreid's Baseline normalises its input in place), then L2-normalised."""
        flipped = batch.flip(dims=[3]) if self.flip else None
        outputs = self._run(batch)
        if flipped is not None:
            outputs = (outputs + self._run(flipped)) / 2
        return F.normalize(outputs.float(), dim=1).cpu().numpy()

    def _run(self, batch):
        if self.session is None:
            return self.model(batch)
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: batch.cpu().numpy()})[0])

    # ---------------------------------------------------------------------------------------- images
    @staticmethod
    def _name(item, label, index):
        return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"{label} {index}"

    def _batch(self, items, bgr, label, offset):
        if not items:
            return torch.zeros(0, 3, *self.size, device=self.device)
        return torch.stack([self._model_input(item, bgr, self._name(item, label, offset + i)).to(self.device)
                            for i, item in enumerate(items)])

    def _model_input(self, item, bgr, name):
        """One image as the test transforms make it: 3 x H x W float, 0-255 RGB, at INPUT.SIZE_TEST. A tensor
        already at that size is used as it is; one of another size is resized as an image (values rounded)."""
        if isinstance(item, torch.Tensor):
            if item.ndim != 3 or item.shape[0] != 3 or min(item.shape[1:]) == 0:
                raise InputError(f"{name} is a tensor of shape {tuple(item.shape)}; give 3 x H x W (or a B x 3 x H x W "
                                 "batch) of 0-255 values")
            _checked_pixel_values(item, name)
            item = item.detach().float().flip(0) if bgr else item.detach().float()
            if tuple(item.shape[1:]) == self.size:
                return item
            item, bgr = item.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy(), False
        if isinstance(item, (str, os.PathLike)):
            if not os.path.isfile(item):
                raise MissingFileError(f"image {os.fspath(item)} does not exist")
            picture = read_image(os.fspath(item))
        elif isinstance(item, Image.Image):
            picture = to_rgb(item)
        elif isinstance(item, np.ndarray):
            array = _checked_array(item, name)
            picture = Image.fromarray(np.ascontiguousarray(array[:, :, ::-1] if bgr else array), "RGB")
        else:
            raise InputError(f"{name} is of type {type(item).__name__}; give {IMAGES_HELP}")
        return self.transform(picture)
