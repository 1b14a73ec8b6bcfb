"""What every tool shares: train_net.py's config handling, image folders, logging (the model and its
preprocessing come from :class:`mdpr_plugin.FeatureExtractor`)."""
import argparse
import logging
import os
import sys

from ..config import build_config
from ..errors import MissingFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def tool_parser(description):
    """``--config-file`` and trailing ``KEY VALUE`` overrides, exactly as train_net.py takes them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS logs/demo/model_final.pth")
    return parser


def setup_tool_config(args):
    """The config train_net.py would build, for inference: the backbone weights come from MODEL.WEIGHTS."""
    cfg = build_config(args.config_file, args.opts)
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.freeze()
    return cfg


def list_images(folder):
    """Every jpg/jpeg/png under ``folder`` (recursive), sorted."""
    if not os.path.isdir(folder):
        raise MissingFileError(f"image folder {folder} does not exist")
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names if name.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise MissingFileError(f"no .jpg/.jpeg/.png images under {folder}")
    return paths


def setup_tool_logging(level=logging.INFO):
    """Progress and timing lines of the plugin, fastreid and the tool on stderr (stdout stays free for
    results); other libraries (the ONNX exporter's passes log every step) only warn."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("mdpr_plugin", "fastreid", "__main__"):
        logging.getLogger(name).setLevel(level)
