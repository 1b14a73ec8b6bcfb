"""Identity metrics of a tracker's output against the truth: IDF1 (how long each true person keeps one track id,
over the whole sequence) and ID switches (how often a person's matched track id changes), as the MOT benchmarks
define them. A track box matches a true box at IoU >= 0.5.

Both take, per frame, the true boxes with their person ids and the tracker's boxes with their track ids.
"""
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

MATCH_IOU = 0.5


def iou_matrix(boxes_a, boxes_b):
    """IoU of every box of ``boxes_a`` (N x 4, x1 y1 x2 y2) with every box of ``boxes_b`` (M x 4)."""
    a, b = np.asarray(boxes_a, np.float64).reshape(-1, 4), np.asarray(boxes_b, np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass(frozen=True)
class IdentityScores:
    idf1: float
    id_switches: int
    true_boxes: int
    track_boxes: int
    track_ids: int  # distinct track ids the tracker gave

    def as_dict(self):
        return dict(self.__dict__)


def idf1(truth_ids, truth_boxes, track_ids, track_boxes):
    """IDF1: 2 IDTP / (true boxes + track boxes), IDTP the frames matched under the best one-to-one pairing of whole
    true trajectories with whole track trajectories."""
    overlaps = Counter()  # (person, track) -> frames where their boxes match
    for people, truths, tracks, boxes in zip(truth_ids, truth_boxes, track_ids, track_boxes):
        ious = iou_matrix(truths, boxes)
        for i, j in zip(*np.nonzero(ious >= MATCH_IOU)):
            overlaps[people[i], tracks[j]] += 1
    total = sum(len(p) for p in truth_ids) + sum(len(t) for t in track_ids)
    if not overlaps:
        return 0.0 if total else 1.0
    people = sorted({p for p, _ in overlaps})
    tracks = sorted({t for _, t in overlaps})
    counts = np.zeros((len(people), len(tracks)))
    for (person, track), frames in overlaps.items():
        counts[people.index(person), tracks.index(track)] = frames
    rows, cols = linear_sum_assignment(-counts)
    return 2 * counts[rows, cols].sum() / total


def frame_matches(truths, boxes, people, tracks, last):
    """``{person: track}`` in one frame: each person's last matched track (``last``) kept while their IoU still
    reaches MATCH_IOU, the rest paired for the largest total IoU (CLEAR MOT's rule)."""
    ious = iou_matrix(truths, boxes)
    matches, used_rows, used_cols = {}, set(), set()
    for i, person in enumerate(people):
        track = last.get(person)
        if track in tracks:
            j = tracks.index(track)
            if ious[i, j] >= MATCH_IOU and j not in used_cols:
                matches[person], used_rows, used_cols = track, used_rows | {i}, used_cols | {j}
    free_rows = [i for i in range(len(people)) if i not in used_rows]
    free_cols = [j for j in range(len(tracks)) if j not in used_cols]
    if free_rows and free_cols:
        sub = ious[np.ix_(free_rows, free_cols)]
        for r, c in zip(*linear_sum_assignment(-np.where(sub >= MATCH_IOU, sub, 0))):
            if sub[r, c] >= MATCH_IOU:
                matches[people[free_rows[r]]] = tracks[free_cols[c]]
    return matches


def id_switches(truth_ids, truth_boxes, track_ids, track_boxes):
    """How often a person is matched to another track id than the one it was last matched to."""
    last, switches = {}, 0
    for people, truths, tracks, boxes in zip(truth_ids, truth_boxes, track_ids, track_boxes):
        for person, track in frame_matches(truths, boxes, list(people), list(tracks), last).items():
            switches += person in last and last[person] != track
            last[person] = track
    return switches


def identity_scores(truth_ids, truth_boxes, track_ids, track_boxes):
    """IDF1, ID switches and counts (see :class:`IdentityScores`) of a whole sequence."""
    return IdentityScores(idf1=float(idf1(truth_ids, truth_boxes, track_ids, track_boxes)),
                          id_switches=int(id_switches(truth_ids, truth_boxes, track_ids, track_boxes)),
                          true_boxes=sum(len(p) for p in truth_ids), track_boxes=sum(len(t) for t in track_ids),
                          track_ids=len({int(t) for tracks in track_ids for t in tracks}))
