"""mdpr-extract: the eval feature of every image in a folder, with PyTorch or an exported ONNX model.

    mdpr-extract --config-file configs/MDPR/demo.yml --input FOLDER --output feats.npz MODEL.WEIGHTS model.pth
    mdpr-extract --config-file configs/MDPR/demo.yml --input FOLDER --output feats.npz --onnx model.onnx

Images (.jpg/.jpeg/.png, recursively, any size) are resized as at test time (INPUT.SIZE_TEST). The
.npz holds:

* ``features``: N x D float32, each row L2-normalised, so an inner product is the cosine similarity
  and ``1 - inner product`` is fastreid's cosine distance (the evaluation's default TEST.METRIC);
* ``paths``: N strings, each image's path relative to ``root`` with "/" separators (they stay valid
  when the folder moves; the sorted order is the rows' order);
* ``root``: the input folder's absolute path at extraction time;
* metadata: ``config_file``, ``backend`` (torch / onnx), ``model`` (MODEL.WEIGHTS or the .onnx file),
  ``feature_dim``, ``image_size`` (H, W), ``normalized`` (True).
"""
import logging
import math
import os
import time
import zipfile
import zlib

import numpy as np

from ..errors import InputError, MissingFileError, reporting_errors
from ..evaluation.progress import Progress
from ..inference import FeatureExtractor, first_few, non_finite_rows, zero_rows
from ..output_files import atomic_open
from ..resources import check_fits, resource_failures_explained
from .common import check_output_file, list_images, setup_tool_config, setup_tool_logging, tool_parser

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
REQUIRED_KEYS = ("features", "paths")
NOT_AN_NPZ = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError)  # what reading a damaged one raises


# ---------------------------------------------------------------------------------------- extraction
def build_extractor(cfg, backend, onnx_path=None, batch_size=64):
    """The :class:`FeatureExtractor` for ``backend``: ``"torch"`` (MODEL.WEIGHTS) or ``"onnx"`` (``onnx_path``)."""
    if backend not in BACKENDS:
        raise InputError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if backend == "onnx" and not onnx_path:
        raise InputError("--backend onnx needs --onnx FILE (a model written by mdpr-export)")
    return FeatureExtractor(cfg, batch_size=batch_size, onnx=onnx_path if backend == "onnx" else None)


def extract_features(paths, extractor, progress_period=5.0):
    """N x D float32 features of the images at ``paths``, each row L2-normalised, with progress lines."""
    progress = Progress(f"extracting features ({extractor.backend})", len(paths), logger, progress_period)
    batches, done = [], 0
    for features in extractor.feature_batches(paths):
        batches.append(features)
        done += len(features)
        progress.update(done)
    progress.done()
    return np.concatenate(batches)


def extract_folder(folder, extractor, config_file="", paths=None):
    """Features of every image under ``folder`` (or of ``paths``, images in it): a record as
    ``save_features`` writes it."""
    paths = list_images(folder) if paths is None else paths
    logger.info("%d images under %s, batches of %d, %s backend", len(paths), folder, extractor.batch_size,
                extractor.backend)
    start = time.perf_counter()
    features = extract_features(paths, extractor)
    seconds = time.perf_counter() - start
    logger.info("Extracted %d features of dim %d in %.1f s (%.1f images/s)",
                len(paths), features.shape[1], seconds, len(paths) / seconds)
    root = os.path.abspath(folder)
    return {
        "features": features,
        "paths": [os.path.relpath(os.path.abspath(p), root).replace(os.sep, "/") for p in paths],
        "root": root,
        "config_file": config_file,
        "backend": extractor.backend,
        "model": extractor.source,
        "feature_dim": features.shape[1],
        "image_size": list(extractor.size),
        "normalized": True,
        "images_per_second": len(paths) / seconds,
    }


# --------------------------------------------------------------------------------------------- files
def save_features(path, record, option="--output"):
    """Write ``record`` (``extract_folder``'s dict) to ``path`` as an .npz, no pickled objects; the previous file
    is replaced only once the new one is complete."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {key: np.asarray(value) for key, value in record.items() if key != "images_per_second"}
    with atomic_open(path, "wb", option) as f:  # a file object: np.savez would append ".npz" to a name without it
        np.savez(f, **arrays)
    return path


def npz_arrays(path):
    """``{name: (shape, dtype)}`` of the arrays of the .npz at ``path``, read from their .npy headers: nothing
    else is decompressed (a small .npz can inflate to more than any memory)."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                               np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
            arrays[member[:-len(".npy")]] = (shape, dtype)
    return arrays


def check_npz_fits(path):
    """Refuse an .npz whose arrays, once read, would not fit in the memory this process can get."""
    arrays = npz_arrays(path)
    needed = sum(math.prod(shape) * dtype.itemsize for shape, dtype in arrays.values())
    if "features" in arrays and arrays["features"][1] != np.float32:  # converted: a second copy
        needed += math.prod(arrays["features"][0]) * 4
    described = ", ".join(f"'{name}' {' x '.join(map(str, shape)) or 'scalar'} {dtype}"
                          for name, (shape, dtype) in arrays.items() if shape)
    check_fits(needed, f"{path}: its arrays ({described})", "extract the gallery in parts (a folder at a time), "
               "or run on a machine with more memory")


def load_features(path):
    """An .npz written by mdpr-extract as a dict: ``features`` (N x D float32), ``paths`` (list of str),
    ``root`` and the metadata present; a clear error for anything else, and for a file that would not fit in
    memory before it is decompressed."""
    if not os.path.isfile(path):
        raise MissingFileError(f"features file {path} does not exist; make it with mdpr-extract")
    try:
        if zipfile.is_zipfile(path):
            check_npz_fits(path)
        data = np.load(path, mmap_mode="r", allow_pickle=False)  # a .npy is mapped, not read, to be refused
    except NOT_AN_NPZ as error:
        raise InputError(f"{path} is not an .npz of features written by mdpr-extract ({error})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):  # a .npy: one bare array, without the image paths
        shape = " x ".join(map(str, data.shape))
        raise InputError(f"{path} is a .npy file (a bare {shape} array, without image paths); an .npz written by "
                         "mdpr-extract is expected: make it with mdpr-extract --input FOLDER --output FILE.npz")
    try:
        with data:
            record = {key: data[key] for key in data.files}
    except NOT_AN_NPZ as error:
        raise InputError(f"{path} is not an .npz of features written by mdpr-extract ({error})") from None
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise InputError(f"{path} has no {' or '.join(repr(k) for k in missing)} array (it has "
                         f"{sorted(record)}); make it with mdpr-extract")
    features, paths = record["features"], record["paths"]
    if features.ndim != 2 or 0 in features.shape:
        raise InputError(f"{path}: 'features' must be a non-empty N x D array, got shape {features.shape}")
    if paths.ndim != 1:
        raise InputError(f"{path}: 'paths' must be a list of N image paths, got an array of shape {paths.shape}; "
                         "make the file with mdpr-extract")
    if len(paths) != len(features):
        raise InputError(f"{path}: {len(paths)} paths for {len(features)} feature rows")
    if features.dtype.kind not in "fiu":
        raise InputError(f"{path}: 'features' must hold numbers, got {features.dtype}; make it with mdpr-extract")
    # a search would drop non-finite rows or give them NaN distances, and put a zero row at distance 0.5 from all
    for find, what in ((non_finite_rows, "not finite (NaN or inf)"),
                       (zero_rows, "all zero (at the same distance from every feature)")):
        rows = find(features)
        if len(rows):
            raise InputError(f"{path}: {len(rows)} of {len(features)} feature rows are {what}: "
                             f"{first_few([f'row {i} ({paths[i]})' for i in rows])}; extract those images again "
                             "with mdpr-extract")
    record["features"] = features.astype(np.float32, copy=False)
    record["paths"] = [str(p) for p in paths]
    for key, value in record.items():  # 0-d arrays back to Python scalars
        if isinstance(value, np.ndarray) and value.ndim == 0:
            record[key] = value.item()
    return record


# ----------------------------------------------------------------------------------------------- CLI
def add_backend_arguments(parser):
    """--backend / --onnx / --batch-size, shared with ``mdpr-search query --images``."""
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="torch (MODEL.WEIGHTS) or onnx (--onnx); default: onnx if --onnx is given")
    parser.add_argument("--onnx", metavar="FILE", help="a model written by mdpr-export (the onnx backend)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")


def backend_of(args):
    return args.backend or ("onnx" if args.onnx else "torch")


def parse_args(argv=None):
    parser = tool_parser("Extract MDPR features of every image in a folder into an .npz.")
    parser.prog = "mdpr-extract"  # also under `python -m`
    parser.add_argument("--input", required=True, metavar="FOLDER", help="images, searched recursively")
    parser.add_argument("--output", required=True, metavar="FILE", help="the .npz to write")
    add_backend_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    setup_tool_logging()
    args = parse_args(argv)
    with reporting_errors("mdpr-extract"), resource_failures_explained(
            "feature extraction", f"--batch-size (now {args.batch_size}) or INPUT.SIZE_TEST"):
        check_output_file(args.output)  # before the work, not after it
        cfg = setup_tool_config(args)
        paths = list_images(args.input)  # an empty folder fails before the model is loaded
        extractor = build_extractor(cfg, backend_of(args), args.onnx, args.batch_size)
        record = extract_folder(args.input, extractor, args.config_file, paths)
        save_features(args.output, record)
    print(f"{args.output}: {len(record['paths'])} images, {record['feature_dim']}-d features "
          f"({record['backend']} backend, {record['images_per_second']:.1f} images/s)")


if __name__ == "__main__":
    main()
