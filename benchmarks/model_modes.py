"""The execution modes the model benchmark compares: how a model is prepared and what wraps its calls.

* ``fp32``: eager float32, the reference every other mode is compared with;
* ``channels_last``: model and input in NHWC memory format (oneDNN / cuDNN prefer it for convolutions);
* ``bf16``: ``torch.autocast`` to bfloat16 (CPU or GPU; no gradient scaler is needed for bf16);
* ``fp16``: ``torch.autocast`` to float16 with a ``GradScaler`` (GPU only: CPU float16 is not faster);
* ``compile``: ``torch.compile`` of the module in place (``nn.Module.compile``, so the state-dict keys
  stay those of the eager model and checkpoints keep working); its first calls, which compile, are
  timed separately;
* ``onnxruntime``: inference only, the plugin's ONNX export run by ONNX Runtime's CPU / CUDA provider.
"""
import contextlib

import torch

from mdpr_plugin.errors import MDPRError

MODES = ("fp32", "channels_last", "bf16", "fp16", "compile", "onnxruntime")
CPU_MODES = ("fp32", "channels_last", "bf16", "onnxruntime", "compile")
GPU_MODES = ("fp32", "channels_last", "fp16", "bf16", "compile", "onnxruntime")
INFERENCE_ONLY = ("onnxruntime",)


class ModeUnavailable(MDPRError, RuntimeError):
    """The mode cannot run here (e.g. float16 on a CPU, ONNX Runtime missing); the reason is the message."""


def check_mode(mode, device):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "fp16" and device.type != "cuda":
        raise ModeUnavailable("float16 autocast with a gradient scaler needs CUDA")


def prepare(model, mode):
    """Convert ``model`` in place for ``mode`` (before the optimizer is built); returns it."""
    if mode == "channels_last":
        model.to(memory_format=torch.channels_last)
    elif mode == "compile":
        model.compile()
    return model


def prepare_input(images, mode):
    return images.contiguous(memory_format=torch.channels_last) if mode == "channels_last" else images


def autocast(mode, device):
    """The context a forward runs in: autocast for bf16 / fp16, nothing otherwise."""
    if mode in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)
    return contextlib.nullcontext()


def grad_scaler(mode, device):
    """float16 gradients underflow without loss scaling; bf16 has float32's range and needs none."""
    return torch.amp.GradScaler(device.type, enabled=mode == "fp16" and device.type == "cuda")


class OnnxRuntimeModel:
    """The eval model exported with the plugin's ``export_onnx`` and run by an ONNX Runtime session.

    Call it like the eval model: a B x 3 x H x W float tensor of 0-255 RGB values in, features out.
    """

    def __init__(self, model, path, height, width, threads, device):
        try:
            from mdpr_plugin.onnx_runtime import onnx_session
            from mdpr_plugin.tools.export import export_onnx
            export_onnx(model, path, height, width)
            # the session mdpr-extract uses, with the benchmark's thread count
            self.session = onnx_session(path, threads, cuda=device.type == "cuda")
        except ImportError as error:  # the onnx extra (MissingExtraError is an ImportError)
            raise ModeUnavailable(f"ONNX export / ONNX Runtime not available: {error}") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images):
        features = self.session.run(None, {self.input_name: images.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(features)
