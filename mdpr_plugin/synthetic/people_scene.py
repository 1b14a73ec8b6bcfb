"""A synthetic street scene for trackers: real person crops (the bundled Market-1501 images) pasted on a fixed
background, walking across the frame, crossing and hiding one another, with a detector's jittered boxes.

Each person walks in segments of random speed and direction (sometimes turning back or pausing), is drawn at a size
that grows towards the bottom of the frame (nearer) and in front of everyone farther away, and changes to another
of its identity's images every ``pose_frames`` frames (the images come from different cameras: a change of pose and
light a tracker's appearance model must bridge). A person counts as seen in a frame when at least ``min_visible``
of its box is inside the frame and not hidden: only those are detected (their boxes jittered by ``jitter`` pixels,
not clipped to the frame, as some detectors give them) and scored by :mod:`mdpr_plugin.evaluation.tracking_metrics`.
"""
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..data import BUNDLED_ROOT

SPLITS = ("bounding_box_train", "bounding_box_test", "query")
HELD_OUT = ("bounding_box_test", "query")  # identities that configs/MDPR/demo.yml does not train on


@dataclass
class Sequence:
    """``frames``: H x W x 3 uint8 BGR (OpenCV's order). Per frame: ``detections`` N x 6 float32 (x1, y1, x2, y2,
    confidence, class 0), ``detection_people`` the person (index into ``identities``) behind each detection, and
    ``truth`` the true boxes of the people seen, ``truth_people`` who they are."""
    frames: list
    detections: list
    detection_people: list
    truth: list
    truth_people: list
    identities: list


def identity_images(splits=HELD_OUT, root=BUNDLED_ROOT):
    """``{identity: [paths]}`` of the bundled images in ``splits``, identities in sorted order."""
    folder = os.path.join(root, "Market-1501-v15.09.15")
    images = defaultdict(list)
    for split in splits:
        for name in sorted(os.listdir(os.path.join(folder, split))):
            if name.endswith(".jpg"):
                images[name.split("_")[0]].append(os.path.join(folder, split, name))
    return dict(sorted(images.items()))


def background(width, height, rng):
    """A fixed street-like background: smooth coloured blotches over a darker ground, with fine noise."""
    blotches = rng.integers(60, 200, (6, 10, 3), dtype=np.uint8)
    picture = np.asarray(Image.fromarray(blotches).resize((width, height), Image.BICUBIC), dtype=np.float32)
    picture[int(height * 0.45):] *= 0.6  # the ground people walk on
    picture += rng.normal(0, 6, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


def walk(num_frames, width, height, rng):
    """One person's T x 4 boxes: it is in the scene from the start (at a random place) or enters from a side at a
    random frame, and walks in segments of 12-40 frames, each with its own speed (sometimes back the other way, or a
    pause); NaN rows before it enters."""
    boxes = np.full((num_frames, 4), np.nan)
    direction = rng.choice([-1.0, 1.0])
    foot = rng.uniform(0.55, 0.97) * height
    size = lambda y: 0.6 * y  # noqa: E731  (height in pixels: nearer people, lower in the frame, are larger)
    if rng.random() < 0.6:
        start, x = 0, rng.uniform(0.1, 0.9) * width  # x: the centre
    else:
        start = int(rng.integers(0, max(1, num_frames // 2)))
        x = -0.3 * size(foot) if direction > 0 else width + 0.3 * size(foot)  # just outside the frame
    t = start
    while t < num_frames:
        speed = rng.choice([0.0, 1.5, 2.5, 3.5, 5.0], p=[0.1, 0.25, 0.3, 0.2, 0.15])
        turn = -1.0 if rng.random() < 0.2 else 1.0
        drift = rng.uniform(-0.4, 0.4)
        for _ in range(int(rng.integers(12, 41))):
            if t >= num_frames:
                break
            x += direction * turn * speed
            foot = float(np.clip(foot + drift, 0.55 * height, 0.97 * height))
            h = size(foot)
            boxes[t] = (x - h / 4, foot - h, x + h / 4, foot)
            t += 1
        direction *= turn
    return boxes


def visible_fractions(boxes, width, height):
    """For each box (rows of a frame, NaN: absent), the share of its area inside the frame and not covered by a
    box whose bottom is lower (a person nearer the camera)."""
    fractions = np.zeros(len(boxes))
    order = np.argsort(-np.nan_to_num(boxes[:, 3], nan=-np.inf))  # nearest first
    covered = np.zeros((height, width), bool)
    for i in order:
        if np.isnan(boxes[i, 0]):
            continue
        x1, y1, x2, y2 = boxes[i]
        area = (x2 - x1) * (y2 - y1)
        cx1, cy1 = int(round(max(x1, 0))), int(round(max(y1, 0)))
        cx2, cy2 = int(round(min(x2, width))), int(round(min(y2, height)))
        if cx2 > cx1 and cy2 > cy1:
            fractions[i] = (~covered[cy1:cy2, cx1:cx2]).sum() / area
            covered[cy1:cy2, cx1:cx2] = True
    return fractions


def paste(frame, image_bgr, box):
    """Draw ``image_bgr`` resized to ``box`` (rounded to whole pixels) on ``frame``, clipped to it."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return
    person = np.asarray(Image.fromarray(image_bgr).resize((x2 - x1, y2 - y1), Image.BILINEAR))
    fx1, fy1 = max(x1, 0), max(y1, 0)
    fx2, fy2 = min(x2, frame.shape[1]), min(y2, frame.shape[0])
    if fx2 > fx1 and fy2 > fy1:
        frame[fy1:fy2, fx1:fx2] = person[fy1 - y1:fy2 - y1, fx1 - x1:fx2 - x1]


def make_sequence(num_people=6, num_frames=60, width=640, height=360, seed=0, splits=HELD_OUT, pose_frames=25,
                  min_visible=0.4, jitter=1.0):
    """The scene (see the module's text) with the first ``num_people`` identities of ``splits``."""
    rng = np.random.default_rng(seed)
    people = list(identity_images(splits).items())[:num_people]
    images = [[np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1] for p in paths] for _, paths in people]
    ground = background(width, height, rng)
    walks = np.stack([walk(num_frames, width, height, rng) for _ in people], axis=1)  # T x people x 4
    sequence = Sequence([], [], [], [], [], [identity for identity, _ in people])
    for t in range(num_frames):
        frame = ground.copy()
        for i in np.argsort(np.nan_to_num(walks[t, :, 3], nan=-np.inf)):  # farthest first, nearest on top
            if not np.isnan(walks[t, i, 0]):
                paste(frame, images[i][(t // pose_frames) % len(images[i])], walks[t, i])
        seen = np.flatnonzero(visible_fractions(walks[t], width, height) >= min_visible)
        truth = walks[t, seen].astype(np.float32)
        jittered = truth + rng.normal(0, jitter, truth.shape).astype(np.float32)
        scores = rng.uniform(0.6, 0.95, (len(seen), 1)).astype(np.float32)
        sequence.frames.append(frame)
        sequence.truth.append(truth)
        sequence.truth_people.append(seen)
        sequence.detections.append(np.hstack([jittered, scores, np.zeros((len(seen), 1), np.float32)]))
        sequence.detection_people.append(seen)
    return sequence
