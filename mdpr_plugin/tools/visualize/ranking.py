"""Ranked lists: each query with its top-k gallery images, framed green (same identity) or red.

The distances, the per-query AP and the exclusion of gallery images of the query's identity taken by
the query's own camera are the evaluation's (``ReidEvaluator``, fastreid's market1501 protocol), so
the pictures show exactly what ``train_net.py --eval-only`` scores.
"""
import csv
import logging
import os
from dataclasses import dataclass
from typing import List

import numpy as np

from ...errors import InputError
from ...engine import Trainer
from ...evaluation import ReidEvaluator, evaluate_rank, inference_on_dataset
from ...evaluation.rank import query_validity
from ...inference import FeatureExtractor
from ...output_files import staged_outputs
from ..common import spreadsheet_safe
from . import drawing

logger = logging.getLogger(__name__)

ORDERS = {
    "ap-ascending": "lowest AP first (the hardest queries first)",
    "ap-descending": "highest AP first",
    "query": "the test set's query order",
}
TITLE_LINES = 2    # query name; AP, rank-1 and position in the order
CAPTION_LINES = 2  # rank and distance; identity and camera
QUERY_GAP = 4 * drawing.GAP  # the query stands apart from its ranked list


@dataclass
class RankedQuery:
    index: int            # the query's position in the test set's query list
    path: str
    pid: int
    camid: int
    ap: float             # fastreid's average precision; NaN when no true match is findable
    gallery: List[int]    # top-k gallery indices, same-identity-same-camera images left out
    gallery_paths: List[str]
    distances: List[float]
    correct: List[bool]   # gallery image i has the query's identity

    @property
    def rank1_correct(self):
        return bool(self.correct) and self.correct[0]


def _int_array(values):
    return np.asarray(values).astype(np.int64, copy=False).ravel()


def average_precisions(dist, q_pids, g_pids, q_camids, g_camids):
    """fastreid's AP per query (the evaluation's numbers); NaN for a query whose identity appears in
    the gallery only under the query's own camera (or not at all): fastreid skips those."""
    valid, _ = query_validity(q_pids, g_pids, q_camids, g_camids)
    if not valid.any():
        raise InputError("no query has a gallery image of its identity from another camera: "
                         "the test set cannot be ranked (check DATASETS.TESTS)")
    _, all_ap, _ = evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids)
    ap = np.full(len(q_pids), np.nan)
    ap[valid] = np.asarray(all_ap, dtype=np.float64)  # fastreid lists APs of the valid queries, in order
    return ap


def order_queries(ap, order):
    """Query indices in ``order`` (a key of ORDERS); ties and NaN APs (put last) keep query order."""
    index = np.arange(len(ap))
    if order == "query":
        return index
    if order not in ORDERS:
        raise InputError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    key = ap if order == "ap-ascending" else -ap
    return np.lexsort((index, key))  # numpy sorts NaN last


def top_gallery(row, q_pid, q_camid, g_pids, g_camids, topk):
    """The ``topk`` nearest gallery indices of one query, skipping its identity under its own camera."""
    ignored = (g_pids == q_pid) & (g_camids == q_camid)
    candidates = min(len(row), topk + int(ignored.sum()))
    # Only the nearest few are needed: partition first, then sort those by (distance, index).
    nearest = np.argpartition(row, candidates - 1)[:candidates] if candidates < len(row) else np.arange(len(row))
    nearest = nearest[np.lexsort((nearest, row[nearest]))]
    return nearest[~ignored[nearest]][:topk]


def rank_queries(dist, q_pids, g_pids, q_camids, g_camids, q_paths, g_paths, topk, order="query",
                 num_queries=None):
    """The ranked lists of the first ``num_queries`` queries in ``order`` (all when None)."""
    dist = np.asarray(dist)
    q_pids, g_pids, q_camids, g_camids = (_int_array(a) for a in (q_pids, g_pids, q_camids, g_camids))
    ap = average_precisions(dist, q_pids, g_pids, q_camids, g_camids)
    chosen = order_queries(ap, order)[:num_queries]
    ranked = []
    for q in chosen:
        gallery = top_gallery(dist[q], q_pids[q], q_camids[q], g_pids, g_camids, topk)
        ranked.append(RankedQuery(
            index=int(q), path=q_paths[q], pid=int(q_pids[q]), camid=int(q_camids[q]), ap=float(ap[q]),
            gallery=gallery.tolist(), gallery_paths=[g_paths[g] for g in gallery],
            distances=dist[q, gallery].astype(float).tolist(),
            correct=(g_pids[gallery] == q_pids[q]).tolist()))
    return ranked


# ------------------------------------------------------------------------------------------ drawing
def canvas_size(tile_size, topk):
    """(width, height) of a ranked-list picture of ``topk`` gallery tiles of ``tile_size`` (w, h)."""
    framed_w, framed_h = tile_size[0] + 2 * drawing.FRAME, tile_size[1] + 2 * drawing.FRAME
    width = 2 * drawing.MARGIN + (topk + 1) * framed_w + QUERY_GAP + (topk - 1) * drawing.GAP
    height = 2 * drawing.MARGIN + TITLE_LINES * drawing.LINE + framed_h + CAPTION_LINES * drawing.LINE
    return width, height


def tile_origin(slot, tile_size):
    """Top-left corner of the framed tile in ``slot`` (0: the query, 1..k: the ranked gallery)."""
    framed_w = tile_size[0] + 2 * drawing.FRAME
    x = drawing.MARGIN + slot * framed_w + (QUERY_GAP + (slot - 1) * drawing.GAP if slot else 0)
    return x, drawing.MARGIN + TITLE_LINES * drawing.LINE


def describe_ap(query):
    if np.isnan(query.ap):
        return "AP n/a: identity not in the gallery under another camera"
    return f"AP {100 * query.ap:.1f}%  rank-1 {'correct' if query.rank1_correct else 'wrong'}"


def draw_ranking(query, position, total, order, images, g_pids, g_camids, tile_size, topk):
    """The picture of one ranked list; ``images`` are the query's then its gallery's 3 x H x W tensors."""
    canvas, draw = drawing.blank(canvas_size(tile_size, topk))
    text_width = canvas.size[0] - 2 * drawing.MARGIN
    drawing.write(draw, drawing.MARGIN, drawing.MARGIN, f"query {os.path.basename(query.path)}", text_width)
    drawing.write(draw, drawing.MARGIN, drawing.MARGIN + drawing.LINE,
                  f"{describe_ap(query)}  ({position}/{total}, {order})", text_width)

    tiles = [(drawing.QUERY, "query", f"id {query.pid} cam {query.camid}")]
    for rank, (g, distance, correct) in enumerate(zip(query.gallery, query.distances, query.correct), 1):
        tiles.append((drawing.CORRECT if correct else drawing.WRONG, f"#{rank} d {distance:.3f}",
                      f"id {g_pids[g]} cam {g_camids[g]}"))
    caption_width = tile_size[0] + 2 * drawing.FRAME
    for slot, ((colour, line1, line2), image) in enumerate(zip(tiles, images)):
        x, y = tile_origin(slot, tile_size)
        drawing.framed(canvas, drawing.to_pil(image, tile_size), x, y, colour)
        caption_y = y + tile_size[1] + 2 * drawing.FRAME
        drawing.write(draw, x, caption_y, line1, caption_width)
        drawing.write(draw, x, caption_y + drawing.LINE, line2, caption_width)
    return canvas


def file_name(position, total, path):
    """``0007_<query file name>.png``: sorting the names gives the chosen order."""
    digits = max(4, len(str(total)))
    return f"{position:0{digits}d}_{os.path.splitext(os.path.basename(path))[0]}.png"


def write_summary(handle, ranked, names):
    """summary.csv's rows to ``handle`` (a text file opened with newline="")."""
    writer = csv.writer(handle)
    writer.writerow(["position", "picture", "query", "pid", "camid", "ap", "rank1_correct",
                     "top1_gallery", "top1_distance"])
    for position, (query, name) in enumerate(zip(ranked, names), 1):
        row = [position, name, query.path, query.pid, query.camid,
               "" if np.isnan(query.ap) else f"{query.ap:.6f}", int(query.rank1_correct),
               query.gallery_paths[0] if query.gallery else "",
               f"{query.distances[0]:.6f}" if query.gallery else ""]
        writer.writerow([spreadsheet_safe(cell) for cell in row])  # paths can start with =


# ------------------------------------------------------------------------------------------ the command
class _DistanceKeepingEvaluator(ReidEvaluator):
    """The evaluator, keeping the distance matrix it scored (with AQE / re-ranking when configured)."""

    def distance(self, query_features, gallery_features):
        self.last_distance = np.asarray(super().distance(query_features, gallery_features))
        return self.last_distance


def evaluate_test_set(cfg, model):
    """Run ``model`` over DATASETS.TESTS[0] as the evaluation does: (results, dist, pids, camids, paths, nq)."""
    loader, num_query = Trainer.build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    evaluator = _DistanceKeepingEvaluator(cfg, num_query)
    results = inference_on_dataset(model, loader, evaluator, flip_test=cfg.TEST.FLIP.ENABLED)
    _, pids, camids = evaluator._features()
    paths = [item[0] for item in loader.dataset.img_items]
    return results, evaluator.last_distance, pids, camids, paths, num_query


def run(cfg, output_dir, topk=10, order="ap-ascending", num_queries=None, scale=1):
    """Write one PNG per query (the first ``num_queries`` in ``order``) and summary.csv; return the lists.
    Images are drawn at ``scale`` times INPUT.SIZE_TEST."""
    if not cfg.DATASETS.TESTS:
        raise InputError("DATASETS.TESTS is empty: name the test set to rank, e.g. DATASETS.TESTS "
                         "'(\"MiniMarket1501\",)'")
    extractor = FeatureExtractor(cfg)
    results, dist, pids, camids, paths, nq = evaluate_test_set(cfg, extractor.model)
    g_pids, g_camids, g_paths = pids[nq:], camids[nq:], paths[nq:]
    if topk > len(g_paths):
        logger.warning("--topk %d is more than the %d gallery images: showing them all", topk, len(g_paths))
        topk = len(g_paths)
    ranked = rank_queries(dist, pids[:nq], g_pids, camids[:nq], g_camids, paths[:nq], g_paths, topk, order,
                          num_queries)

    os.makedirs(output_dir, exist_ok=True)
    tile_size = (scale * cfg.INPUT.SIZE_TEST[1], scale * cfg.INPUT.SIZE_TEST[0])  # SIZE_TEST is (h, w)
    drawing.check_picture_fits(canvas_size(tile_size, topk))
    names = []
    with staged_outputs("--output-dir") as outputs:  # the pictures replace the old ones once all are drawn
        for position, query in enumerate(ranked, 1):
            images = extractor.preprocess([query.path] + query.gallery_paths)
            picture = draw_ranking(query, position, len(ranked), order, images, g_pids, g_camids, tile_size, topk)
            names.append(file_name(position, len(ranked), query.path))
            with outputs.open(os.path.join(output_dir, names[-1])) as f:
                picture.save(f, format="PNG")
        with outputs.open(os.path.join(output_dir, "summary.csv"), "w", newline="") as f:
            write_summary(f, ranked, names)

    print(f"{cfg.DATASETS.TESTS[0]}: mAP {results['mAP']:.2f}%, Rank-1 {results['Rank-1']:.2f}% "
          f"(the evaluation's numbers{', re-ranked' if cfg.TEST.RERANK.ENABLED else ''})")
    print(f"Wrote {len(ranked)} ranked lists (top {topk}) to {output_dir} in order {order}: {ORDERS[order]}; "
          f"sorting the file names gives this order. Summary: {os.path.join(output_dir, 'summary.csv')}")
    return ranked
