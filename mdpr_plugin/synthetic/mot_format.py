"""The synthetic street scene of :mod:`.people_scene` written as a MOTChallenge-format sequence, as a tracker's
own video would be: ``SEQ/img1/000001.jpg ...``, ``SEQ/gt/gt.txt`` and ``SEQ/seqinfo.ini``.

gt.txt holds, per frame, the true box of every person the scene counts as seen (at least ``min_visible`` of the box
inside the frame and not hidden): ``frame,id,x,y,w,h,1,1,1`` with the person's index + 1 as the track id, the class
1 (pedestrian) and a visibility of 1 (the scene lists only the people it counts as seen). :func:`read_mot_sequence`
reads such a folder back as a scene to track on, its gt boxes as the detections.
"""
import os

import numpy as np
from PIL import Image

from .people_scene import Sequence

FRAME_RATE = 25


def write_mot_sequence(scene, folder, name=None):
    """Write ``scene`` (a :class:`.people_scene.Sequence`) into ``folder``; returns ``folder``."""
    name = name or os.path.basename(os.path.abspath(folder))
    os.makedirs(os.path.join(folder, "img1"), exist_ok=True)
    os.makedirs(os.path.join(folder, "gt"), exist_ok=True)
    for t, frame in enumerate(scene.frames, 1):
        Image.fromarray(frame[:, :, ::-1]).save(os.path.join(folder, "img1", f"{t:06d}.jpg"), quality=95)
    rows = [f"{t},{person + 1},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1,1,1"
            for t, (people, boxes) in enumerate(zip(scene.truth_people, scene.truth), 1)
            for person, (x1, y1, x2, y2) in zip(people, boxes)]
    with open(os.path.join(folder, "gt", "gt.txt"), "w") as f:
        f.write("".join(row + "\n" for row in rows))
    height, width = scene.frames[0].shape[:2]
    with open(os.path.join(folder, "seqinfo.ini"), "w") as f:
        f.write(f"[Sequence]\nname={name}\nimDir=img1\nframeRate={FRAME_RATE}\nseqLength={len(scene.frames)}\n"
                f"imWidth={width}\nimHeight={height}\nimExt=.jpg\n")
    return folder


def read_mot_sequence(folder):
    """A MOTChallenge-format sequence folder (img1/<frame>.jpg, gt/gt.txt) as a :class:`.people_scene.Sequence`:
    its frames (BGR, OpenCV's order, as a video reader gives them), the gt boxes of each frame as both the truth and
    the detections (confidence 0.9, class 0), the track ids as the people."""
    from ..tools.dataset import frame_files, read_gt, read_sequence

    sequence = read_sequence(folder)
    frames = frame_files(sequence)
    rows = {}
    for box in read_gt(sequence.gt_path):
        rows.setdefault(box.frame, []).append((box.track, box.x, box.y, box.x + box.w, box.y + box.h))
    scene = Sequence([], [], [], [], [], sorted({r[0] for found in rows.values() for r in found}))
    for frame in sorted(frames):
        found = np.array(rows.get(frame, []), np.float32).reshape(-1, 5)
        people, boxes = found[:, 0].astype(int), found[:, 1:]
        scene.frames.append(np.asarray(Image.open(frames[frame]).convert("RGB"))[:, :, ::-1].copy())
        scene.truth.append(boxes)
        scene.truth_people.append(people)
        scene.detections.append(np.hstack([boxes, np.full((len(boxes), 1), 0.9, np.float32),
                                           np.zeros((len(boxes), 1), np.float32)]))
        scene.detection_people.append(people)
    return scene
