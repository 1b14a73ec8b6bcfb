"""Reading one image as RGB, whatever its mode, with errors that name the file.

fastreid's ``read_image`` (data/data_utils.py:17) converts nothing when called without a format, as
its datasets call it: an RGBA or CMYK file gives a 4-channel image the model refuses, a palette file
gives its palette *indices* as a grey image (wrong colours, silently), a 16-bit grey file fails in
``Image.fromarray``, and an unreadable file raises PIL's message, which does not name the file, from
inside a DataLoader worker.
"""
import os
import stat

import numpy as np
from fastreid.utils.file_io import PathManager
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError


class BadImageError(InputError):
    """An image file that cannot be read (truncated, empty, not an image)."""

    def __init__(self, message, path=None, reason=None):
        super().__init__(message)
        self.path, self.reason = path, reason


# the suffixes of image files a folder of person crops may hold, lower case
IMAGE_FILE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

BAD_IMAGE_FIX = ("Replace the file (re-extract or re-download the dataset), or set DATALOADER.BAD_IMAGES skip "
                 "to leave unreadable images out of the data set.")

# Modes holding more than 8 bits per pixel in one channel: scaled to 8 bits, not clipped (PIL's own
# convert("L") clips a 16-bit value like 40000 to 255, i.e. nearly all white).
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image):
    """``image`` as an 8-bit RGB PIL image. Alpha is dropped, as torchvision's default loader does."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY_MODES or image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        if image.mode != "F" and values.max(initial=0) > 255:
            values = values / 257.0  # 0..65535 onto 0..255
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        # palette transparency: going through RGBA keeps PIL from warning about it
        image = image.convert("RGBA")
    return image.convert("RGB")


class NotAnImageFileError(InputError):
    """A FIFO, socket, device or folder where an image file was expected: opening it may wait forever."""


_SPECIAL_FILES = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def check_regular_file(file_name, file_stat=None):
    """Refuse ``file_name`` unless it is a regular file (or a link to one), by its type, before anything opens it:
    reading a FIFO waits for a writer that never comes, a device never ends."""
    if file_stat is None:
        try:
            file_stat = os.stat(file_name)
        except OSError:
            return  # reported by whatever opens it
    kind = next((name for test, name in _SPECIAL_FILES if test(file_stat.st_mode)), None)
    if kind:
        raise NotAnImageFileError(f"{file_name} is {kind}, not an image file (reading it could wait forever). Remove "
                                  "it from the image folder, or put the image file it stands for in its place.")


def _decode(file_name):
    check_regular_file(file_name)
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now, inside the try: PIL decodes lazily and a truncated file fails here
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # PIL's "cannot identify image file <_io.BufferedReader name=...>" repeats the path
        reason = "empty, or not an image" if isinstance(error, UnidentifiedImageError) else str(error)
        raise BadImageError(f"{file_name} could not be read as an image ({reason}). {BAD_IMAGE_FIX}",
                            path=file_name, reason=reason) from None


def read_image(file_name, format=None):
    """Drop-in for fastreid's ``read_image``: an RGB PIL image (or ``format``), EXIF rotation applied."""
    image = _decode(file_name)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001  a broken EXIF block leaves the image as it is (as fastreid does)
        pass
    image = to_rgb(image)
    if format in (None, "RGB"):
        return image
    if format == "BGR":
        return Image.fromarray(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
    return image.convert(format)


def inspect_image(file_name):
    """``(width, height)`` of a fully decoded image, or raise :class:`BadImageError`."""
    return _decode(file_name).size
