"""mdpr-export: a trained model's eval feature as an ONNX graph, checked against PyTorch.

The graph takes ``images``: float32 B x 3 x H x W, RGB values 0-255 at INPUT.SIZE_TEST (the model
normalises them itself, so the normalisation is part of the graph), and returns ``features``: the
B x D eval feature, unnormalised, exactly what ``model(images)`` returns in eval mode. The batch
axis is dynamic.

It uses torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, the default and the
maintained path since torch 2.9); the TorchScript-based one is deprecated. Works for MDPR and for
fastreid's Baseline.

    mdpr-export --config-file configs/MDPR/demo.yml --output model.onnx MODEL.WEIGHTS model_final.pth
"""
import logging
import os
import time

import numpy as np
import torch
from torch import nn

from ..errors import InputError, reporting_errors, require
from ..data.datasets import BUNDLED_ROOT
from ..inference import FeatureExtractor
from ..onnx_runtime import INPUT_NAME, OUTPUT_NAME, onnx_session
from ..output_files import staged_outputs
from ..resources import resource_failures_explained
from .common import check_output_file, list_images, setup_tool_config, setup_tool_logging, tool_parser

logger = logging.getLogger(__name__)

MAX_REL_DIFF = 1e-4       # parity the CLI demands of the exported graph
EXPORT_BATCH = 2          # batch of the example input; the check runs other sizes
PROTOBUF_LIMIT = 2 << 30  # a single .onnx file cannot hold more (weights then go to <path>.data)
LOWEST_OPSET = 18  # torch's exporter implements no lower one: asked for one, it logs a traceback and writes 18


class _ImagesToFeatures(nn.Module):
    """``model(images)`` under one argument name, whatever the model calls its own."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images)


def _parameter_bytes(model):
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def export_onnx(model, path, height, width, opset=None):
    """Export ``model`` (an eval-mode fastreid model: 0-255 images in, B x D features out) to ``path``.

    Returns ``path``. The example input is on the model's device; ``opset`` None is the exporter's
    default. Models too big for one protobuf file get their weights in ``<path>.data`` beside it.
    """
    require("onnx", "onnx")
    require("onnxscript", "onnx")  # the dynamo exporter translates through it
    model = model.eval()
    device = next(model.parameters()).device
    example = torch.rand(EXPORT_BATCH, 3, height, width, device=device) * 255
    batch = torch.export.Dim("batch", min=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    start = time.perf_counter()
    logger.info("Exporting %s (%dx%d input) to %s: this takes from seconds to a few minutes",
                type(model).__name__, height, width, path)
    with torch.no_grad():
        program = torch.onnx.export(_ImagesToFeatures(model).eval(), (example,), None, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: batch}},
                                    opset_version=opset, dynamo=True)
    save_onnx(program, path, external_data=_parameter_bytes(model) > 0.9 * PROTOBUF_LIMIT)
    logger.info("Exported in %.1f s", time.perf_counter() - start)
    return path


def save_onnx(program, path, external_data=False):
    """Write an exported ``program`` to ``path`` (its weights to ``<path>.data`` with ``external_data``), replacing
    the previous file(s) only once complete. The .onnx names its .data file, so both are written under their
    final names in a temporary folder beside ``path``, then moved into place."""
    companions = [".data"] if external_data else []
    with staged_outputs("--output") as outputs, outputs.writing_in_folder(path, companions) as written:
        program.save(written, external_data=external_data)


def check_onnx(path, model, images):
    """Run the graph at ``path`` with onnxruntime on ``images`` (B x 3 x H x W, 0-255) and compare
    with ``model(images)`` in PyTorch.

    Returns ``{"max_abs_diff", "max_rel_diff", "batch", "feature_dim"}``; the relative difference is
    the largest absolute one over the largest feature magnitude (an element-wise ratio explodes
    on features near zero).
    """
    session = onnx_session(path)
    images = images.float()
    with torch.no_grad():
        # a copy: fastreid's Baseline normalises its input in place
        reference = model.eval()(images.clone().to(next(model.parameters()).device)).float().cpu().numpy()
    output = session.run([OUTPUT_NAME], {INPUT_NAME: images.cpu().numpy()})[0]
    if output.shape != reference.shape:
        raise InputError(f"{path}: ONNX output shape {output.shape} differs from PyTorch's {reference.shape}")
    max_abs = float(np.abs(output - reference).max())
    return {"max_abs_diff": max_abs, "max_rel_diff": max_abs / max(float(np.abs(reference).max()), 1e-12),
            "batch": len(images), "feature_dim": int(reference.shape[1])}


def check_opset(opset):
    """Refuse an opset the exporter cannot write: it would log a traceback and write another one, silently."""
    if opset is None:
        return
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not LOWEST_OPSET <= opset <= newest:
        raise InputError(f"--opset {opset} cannot be written: torch's exporter writes opsets {LOWEST_OPSET} to "
                         f"{newest} (this onnx's newest); give one of them, or leave --opset out")


def parse_args(argv=None):
    parser = tool_parser("Export a trained MDPR (or fastreid) model to ONNX and check it against PyTorch.")
    parser.prog = "mdpr-export"  # also under `python -m`
    parser.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--check-images", metavar="FOLDER", default=BUNDLED_ROOT,
                        help="images to check parity on (default: the bundled Market-1501 crops)")
    parser.add_argument("--check-batch", type=int, default=8,
                        help=f"how many of them (any size but {EXPORT_BATCH}, the traced one, shows the "
                             "batch axis is dynamic; default 8)")
    return parser.parse_args(argv)


def main(argv=None):
    setup_tool_logging()
    args = parse_args(argv)
    with reporting_errors("mdpr-export"), resource_failures_explained(
            "the export", f"--check-batch (now {args.check_batch}) or INPUT.SIZE_TEST"):
        for module in ("onnx", "onnxscript", "onnxruntime"):  # before minutes of model building, not after
            require(module, "onnx")
        if args.check_batch < 1:
            raise InputError(f"--check-batch must be at least 1, got {args.check_batch}")
        check_opset(args.opset)
        check_output_file(args.output)  # before the model is built and exported
        check_images = list_images(args.check_images)[:args.check_batch]  # likewise
        cfg = setup_tool_config(args)
        extractor = FeatureExtractor(cfg, device="cpu")  # exported on the CPU: the graph is device-neutral
        height, width = extractor.size
        export_onnx(extractor.model, args.output, height, width, args.opset)
        images = extractor.preprocess(check_images)
        result = check_onnx(args.output, extractor.model, images)
    print(f"{args.output}: input '{INPUT_NAME}' B x 3 x {height} x {width} (0-255 RGB), output "
          f"'{OUTPUT_NAME}' B x {result['feature_dim']}")
    print(f"parity on {result['batch']} images from {args.check_images}: max abs diff "
          f"{result['max_abs_diff']:.3g}, max rel diff {result['max_rel_diff']:.3g}")
    if result["max_rel_diff"] > MAX_REL_DIFF:
        raise SystemExit(f"mdpr-export: error: ONNX and PyTorch features differ by {result['max_rel_diff']:.3g} "
                         f"(relative) > {MAX_REL_DIFF}; {args.output} is not a faithful export")


if __name__ == "__main__":
    main()
