"""Attention pictures: the soft branch's M foreground maps and its background map, at layer4 and layer3.

Each picture is a grid with one row per granularity (layer4, then layer3): the input image, then
each foreground map, then the background map, upsampled (bilinear) to the image and drawn as a
heatmap on it. The colour scale is absolute, 0 (dark blue) to 1 (dark red): at every pixel the M
foreground maps and the background map are one softmax, so they add up to 1.
"""
import os

import torch
import torch.nn.functional as F

from ...errors import InputError, MissingFileError
from ...engine import Trainer
from ...inference import FeatureExtractor
from ...output_files import staged_outputs
from ..common import list_images
from . import drawing

LEVELS = ("4", "3")        # layer4 (coarse) first: layer3's attention is guided by it
CAPTION_LINES = 2          # map name; its maximum
TITLE_LINES = 1            # the image's file name
PARTITION_TOLERANCE = 1e-4


def check_model_config(cfg, config_file):
    """Refuse a config whose model has no soft content branch, before loading any weights."""
    if cfg.MODEL.META_ARCHITECTURE != "MDPR":
        raise InputError(
            f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE} ({config_file}): attention maps "
            "come from MDPR's soft content branch; use an MDPR config (META_ARCHITECTURE MDPR)")
    if not cfg.SOFT_BRANCH_ENABLE:
        raise InputError(
            f"SOFT_BRANCH_ENABLE is False ({config_file} or the command line): this MDPR has no soft "
            "content branch, so it has no attention maps; use a model trained with SOFT_BRANCH_ENABLE True")


def check_partition(foreground, background, where):
    """The maps must be one softmax: foreground (B x M x H x W) sums to at most 1, plus background to 1."""
    total = foreground.sum(dim=1, keepdim=True)
    excess = (total - 1).max().item()
    off = (total + background - 1).abs().max().item()
    if excess > PARTITION_TOLERANCE or off > PARTITION_TOLERANCE:
        raise InputError(f"{where}: foreground maps sum up to {1 + excess:.6f} and foreground + background "
                         f"is off 1 by {off:.2e}; the model's attention is not a softmax over M+1 maps")


def attention_at(model, images, size):
    """``{level: (foreground B x M x h x w, background B x 1 x h x w)}`` upsampled to ``size`` (h, w)."""
    with torch.no_grad():
        maps = model.attention_maps(images, include_background=True)
    upsampled = {}
    for level in LEVELS:
        # Bilinear weights add up to 1, so the upsampled maps still sum to 1 at every pixel.
        foreground, background = (
            F.interpolate(maps[f"{kind}{level}"].float(), size=size, mode="bilinear", align_corners=False).cpu()
            for kind in ("attention", "background"))
        check_partition(foreground, background, f"layer{level} attention")
        upsampled[level] = (foreground, background)
    return upsampled


# ------------------------------------------------------------------------------------------ drawing
def grid_shape(num_attn):
    """(columns, rows): the image, M foreground maps, the background; one row per level."""
    return 2 + num_attn, len(LEVELS)


def canvas_size(tile_size, num_attn):
    """(width, height) of an attention picture with ``num_attn`` foreground maps of ``tile_size`` (w, h)."""
    columns, rows = grid_shape(num_attn)
    width = 2 * drawing.MARGIN + columns * tile_size[0] + (columns - 1) * drawing.GAP
    cell_height = tile_size[1] + CAPTION_LINES * drawing.LINE
    height = 2 * drawing.MARGIN + TITLE_LINES * drawing.LINE + rows * cell_height + (rows - 1) * drawing.GAP
    return width, height


def tile_origin(column, row, tile_size):
    cell_height = tile_size[1] + CAPTION_LINES * drawing.LINE
    return (drawing.MARGIN + column * (tile_size[0] + drawing.GAP),
            drawing.MARGIN + TITLE_LINES * drawing.LINE + row * (cell_height + drawing.GAP))


def draw_attention(title, image, maps):
    """One picture: ``image`` (3 x H x W, 0-255) and ``maps`` ({level: (M x h x w, 1 x h x w)}) of it,
    drawn at the maps' size (h, w)."""
    tile_size = (maps[LEVELS[0]][0].shape[2], maps[LEVELS[0]][0].shape[1])
    num_attn = maps[LEVELS[0]][0].shape[0]
    canvas, draw = drawing.blank(canvas_size(tile_size, num_attn))
    drawing.write(draw, drawing.MARGIN, drawing.MARGIN, title, canvas.size[0] - 2 * drawing.MARGIN)
    picture = drawing.to_pil(image, tile_size)
    for row, level in enumerate(LEVELS):
        foreground, background = maps[level]
        tiles = [(picture, "input", f"layer{level} row")]
        tiles += [(drawing.heat_overlay(picture, m.numpy()), f"L{level} fg {i}", f"max {m.max().item():.2f}")
                  for i, m in enumerate(foreground, 1)]
        tiles.append((drawing.heat_overlay(picture, background[0].numpy()), f"L{level} bg",
                      f"max {background.max().item():.2f}"))
        for column, (tile, line1, line2) in enumerate(tiles):
            x, y = tile_origin(column, row, tile_size)
            canvas.paste(tile, (x, y))
            drawing.write(draw, x, y + tile_size[1], line1, tile_size[0])
            drawing.write(draw, x, y + tile_size[1] + drawing.LINE, line2, tile_size[0])
    return canvas


# ------------------------------------------------------------------------------------------ inputs
def _unique(name, used):
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate


def input_images(inputs):
    """(image path, output name without suffix) for files and folders (searched recursively) in ``inputs``."""
    pairs, used = [], set()
    for item in inputs:
        if os.path.isdir(item):
            for path in list_images(item):
                # keep sub-folders apart in the name: a/x.jpg and b/x.jpg are different images
                relative = os.path.splitext(os.path.relpath(path, item))[0]
                pairs.append((path, _unique(relative.replace(os.sep, "__"), used)))
        elif os.path.isfile(item):
            pairs.append((item, _unique(os.path.splitext(os.path.basename(item))[0], used)))
        else:
            raise MissingFileError(f"--input {item} is neither an image file nor a folder")
    return pairs


def input_batches(extractor, pairs):
    """Batches of (images, [(path, output name)]) of ``input_images``' pairs, as the extractor preprocesses them."""
    for start in range(0, len(pairs), extractor.batch_size):
        chunk = pairs[start:start + extractor.batch_size]
        yield extractor.preprocess([path for path, _ in chunk]), chunk


def test_set_batches(cfg):
    """Batches of DATASETS.TESTS[0]'s query then gallery images, named query/<name> and gallery/<name>."""
    if not cfg.DATASETS.TESTS:
        raise InputError("--test-set needs DATASETS.TESTS: name the test set, e.g. DATASETS.TESTS "
                         "'(\"MiniMarket1501\",)'")
    loader, num_query = Trainer.build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    index = 0
    for batch in loader:
        names = []
        for path in batch["img_paths"]:
            part = "query" if index < num_query else "gallery"
            names.append((path, os.path.join(part, os.path.splitext(os.path.basename(path))[0])))
            index += 1
        yield batch["images"], names


def run(cfg, config_file, output_dir, inputs=None, test_set=False, scale=1):
    """Write one attention picture per image of ``inputs`` (files / folders) or of the test set, drawn
    at ``scale`` times INPUT.SIZE_TEST."""
    check_model_config(cfg, config_file)
    if bool(inputs) == bool(test_set):
        raise InputError("give either --input FOLDER_OR_IMAGES or --test-set")
    # list the inputs now, so that a wrong path stops the command before the model is loaded
    pairs = None if test_set else input_images(inputs)
    size = (scale * cfg.INPUT.SIZE_TEST[0], scale * cfg.INPUT.SIZE_TEST[1])  # (height, width)
    # a batch's maps upsampled to the picture's size (float32, the foreground ones and the background, two levels)
    maps_bytes = cfg.TEST.IMS_PER_BATCH * (cfg.ATTN_NUM + 1) * len(LEVELS) * size[0] * size[1] * 4
    drawing.check_picture_fits(canvas_size((size[1], size[0]), cfg.ATTN_NUM), more_bytes=maps_bytes)
    extractor = FeatureExtractor(cfg, batch_size=cfg.TEST.IMS_PER_BATCH)
    batches = test_set_batches(cfg) if test_set else input_batches(extractor, pairs)
    written = []
    with staged_outputs("--output-dir") as outputs:  # the pictures replace the old ones once all are drawn
        for images, names in batches:
            maps = attention_at(extractor.model, images, size)
            for b, (path, name) in enumerate(names):
                picture = draw_attention(os.path.basename(path), images[b],
                                         {level: (fg[b], bg[b]) for level, (fg, bg) in maps.items()})
                target = os.path.join(output_dir, name + ".png")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with outputs.open(target) as f:
                    picture.save(f, format="PNG")
                written.append(target)
    print(f"Wrote {len(written)} attention pictures to {output_dir}: per image, rows layer4 and layer3; "
          "columns the input, the foreground maps, the background map (colour scale 0 blue .. 1 red)")
    return written
