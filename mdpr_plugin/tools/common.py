"""What every tool shares: train_net.py's config handling, image folders, logging (the model and its
preprocessing come from :class:`mdpr_plugin.FeatureExtractor`)."""
import argparse
import logging
import os
import sys
import tempfile
from collections import Counter

from ..authors_keys import warn_authors_keys
from ..config import build_config
from ..data.images import IMAGE_FILE_SUFFIXES
from ..errors import InputError, MissingFileError
from ..text_escapes import escape_unwritable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
logger = logging.getLogger(__name__)

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


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
    warn_authors_keys(cfg)
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.freeze()
    return cfg


def positive_int(text):
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def list_images(folder):
    """Every jpg/jpeg/png under ``folder`` (recursive), sorted; a warning counts image files of other types."""
    if os.path.isfile(folder):
        raise InputError(f"{folder} is a file; give the folder of images")
    if not os.path.isdir(folder):
        raise MissingFileError(f"image folder {folder} does not exist")
    paths, others = [], []
    for root, _, names in os.walk(folder):
        for name in names:
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                paths.append(os.path.join(root, name))
            elif suffix in IMAGE_FILE_SUFFIXES:
                others.append(os.path.join(root, name))
    if others:
        suffixes = Counter(os.path.splitext(path)[1] for path in others)
        logger.warning("Left out %d image files under %s that are not .jpg/.jpeg/.png (%s; e.g. %s): convert them "
                       "to one of those to use them.", len(others), folder,
                       ", ".join(f"{count} {suffix}" for suffix, count in sorted(suffixes.items())), min(others))
    if not paths:
        raise MissingFileError(f"no .jpg/.jpeg/.png images under {folder}")
    return sorted(paths)


def _nearest_existing(path):
    """``path`` or the closest of its parent folders that exists (where the folders it needs are made)."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _check_can_create_in(folder, option, path):
    """Refuse ``folder`` (the nearest existing part of ``path``) unless a file can be created in it."""
    if not os.path.isdir(folder):
        raise InputError(f"{option} {path} cannot be written: {folder} is a file, not a folder; give another path")
    try:  # as root, or on a read-only or special file system, permission bits do not say it: try
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(f"{option} {path} cannot be written: no file can be created in {folder} "
                         f"({error.strerror or error}); give a path in a folder you can write") from None


def check_output_file(path, option="--output"):
    """Refuse, before any work, an output file the tool could not write at the end: a folder of that name, a
    symbolic link (the new file replaces the entry, so it would replace the link, not write where it points), a
    file where one of its folders should be, a folder no file can be created in (the file is written beside itself
    and renamed over the old one), a read-only file (kept, as its owner asked)."""
    if os.path.islink(path):
        raise InputError(f"{option} {path} is a symbolic link (to {os.readlink(path)}): the tool writes a new file in "
                         f"its place and would replace the link; give the path it points to "
                         f"({os.path.realpath(path)}), or remove the link")
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder; give the path of the file to write")
    existing = _nearest_existing(path)
    if existing == os.path.abspath(path):
        if not os.access(path, os.W_OK):
            raise InputError(f"{option} {path} is a read-only file; give another path, or make it writable")
        existing = os.path.dirname(existing)
    _check_can_create_in(existing, option, path)


def check_output_folder(path, option="--output-dir"):
    """Refuse, before any work, an output folder the tool could not write in: a file of that name, a file where
    one of its parent folders should be, a folder no file can be created in."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise InputError(f"{option} {path} is a file; give a folder")
    _check_can_create_in(_nearest_existing(path), option, path)


def spreadsheet_safe(cell):
    """``cell`` for a CSV file that a spreadsheet shows rather than runs: a text starting with =, +, -, @, a tab or a
    carriage return (an image file name can) gets a leading single quote, which the spreadsheet hides, showing the
    cell as text. Numbers, and texts that read as one (-0.5), are left as they are."""
    if not isinstance(cell, str) or not cell.startswith(FORMULA_STARTS):
        return cell
    try:
        float(cell)
        return cell
    except ValueError:
        return "'" + cell


def setup_tool_logging(level=logging.INFO):
    """Progress and timing lines of the plugin, fastreid and the tool on stderr (stdout stays free for
    results); other libraries (the ONNX exporter's passes log every step) only warn. Both streams write what their
    encoding cannot (a file name that is not UTF-8, any name on an ASCII terminal) escaped, rather than fail after
    the work is done."""
    for stream in (sys.stdout, sys.stderr):
        escape_unwritable(stream)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("mdpr_plugin", "fastreid", "__main__"):
        logging.getLogger(name).setLevel(level)
