"""ONNX Runtime for an mdpr-export graph: its input and output names, and the session that runs it.

The library's :class:`mdpr_plugin.inference.FeatureExtractor` runs the graph and the export tool writes and
checks it, so both take these from here. ``onnxruntime`` (the ``onnx`` extra) is imported only when a session
is made: importing this module keeps the PyTorch-only path free of it.
"""
import os

import torch

from .errors import MissingFileError, require

INPUT_NAME, OUTPUT_NAME = "images", "features"


def onnx_session(path, threads=None, cuda=False, device_id=0):
    """An onnxruntime session for ``path`` (CPU; CUDA first when ``cuda`` and ONNX Runtime has it, on GPU
    ``device_id``), with ``threads`` intra-op threads (None: ONNX Runtime's default), and a clear message if it
    is not there."""
    ort = require("onnxruntime", "onnx")
    if not os.path.isfile(path):
        raise MissingFileError(f"ONNX model {path} does not exist; make it with mdpr-export")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
    return ort.InferenceSession(path, options, providers=providers)


def onnx_cuda_available():
    """Whether the installed ONNX Runtime has a CUDA provider (onnxruntime-gpu) and torch sees a GPU."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
