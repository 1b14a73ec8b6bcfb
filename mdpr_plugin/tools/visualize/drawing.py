"""Pillow drawing shared by the ranking and attention pictures: colours, captions, tiles, heatmaps."""
import functools

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ...resources import check_fits
from ...text_escapes import escaped

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
CORRECT = (0, 170, 0)     # frame of a gallery image of the query's identity
WRONG = (220, 0, 0)       # frame of a gallery image of another identity
QUERY = (128, 128, 128)   # frame of the query itself

FRAME = 4     # frame width around a ranked image, px
GAP = 6       # space between tiles, px
MARGIN = 8    # space around the whole picture, px
LINE = 13     # height of one caption line, px

# The heatmap colours: the classic "jet" ramp, dark blue (0) -> cyan -> yellow -> dark red (1).
_JET_STOPS = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
_JET_COLOURS = np.array([(0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0)],
                        dtype=np.float64)


@functools.lru_cache(maxsize=None)
def font():
    return ImageFont.load_default()


def check_picture_fits(size, more_bytes=0):
    """Refuse, before anything is drawn, a picture of ``size`` (w, h) (with the tiles pasted in, about twice its RGB
    bytes) and ``more_bytes`` besides, when this process's memory cannot hold them: a large --scale would otherwise
    be killed by the system or fail deep inside Pillow."""
    width, height = size
    check_fits(2 * 3 * width * height + more_bytes, f"A picture of {width} x {height} pixels", "lower --scale.")


def blank(size):
    """A white RGB picture of ``size`` (w, h) and a pen on it."""
    picture = Image.new("RGB", size, WHITE)
    return picture, ImageDraw.Draw(picture)


def text_width(text):
    return font().getlength(text)


def fit(text, width):
    """``text`` cut (with "..") so that it is at most ``width`` pixels wide."""
    if text_width(text) <= width:
        return text
    while text and text_width(text + "..") > width:
        text = text[:-1]
    return text + ".."


def write(draw, x, y, text, width, colour=BLACK):
    """One caption line at (x, y), cut to ``width`` pixels; a file name's bytes that are not UTF-8 as ``\\xNN``."""
    draw.text((x, y), fit(escaped(text), width), fill=colour, font=font())


def to_pil(image, size=None):
    """A 3 x H x W tensor of 0-255 RGB values (the model's input) as a PIL image, optionally resized."""
    array = image.detach().cpu().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(np.ascontiguousarray(array), "RGB")
    return picture if size is None or picture.size == size else picture.resize(size, Image.BILINEAR)


def framed(canvas, picture, x, y, colour):
    """Paste ``picture`` at (x + FRAME, y + FRAME) inside a FRAME-wide border of ``colour``."""
    width, height = picture.size
    ImageDraw.Draw(canvas).rectangle(
        [x, y, x + width + 2 * FRAME - 1, y + height + 2 * FRAME - 1], fill=colour)
    canvas.paste(picture, (x + FRAME, y + FRAME))


def jet(values):
    """H x W values in [0, 1] -> H x W x 3 uint8 colours (values outside are clipped)."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    channels = [np.interp(values, _JET_STOPS, _JET_COLOURS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def heat_overlay(picture, values, alpha=0.5):
    """``picture`` blended with the heatmap of ``values`` (H x W in [0, 1], the picture's size)."""
    heat = Image.fromarray(jet(values), "RGB")
    if heat.size != picture.size:
        raise ValueError(f"heatmap {heat.size} and picture {picture.size} differ in size")
    return Image.blend(picture, heat, alpha)
