"""CMC / mAP / mINP and ROC through fastreid's own functions, over blocks of query rows.

fastreid's ``evaluate_rank`` argsorts the whole (num_query, num_gallery) matrix into int64 indices
(7.7 GB at MSMT17 size, next to the 3.8 GB distance) on one core. Every query's result depends only
on its own row, so the same function is run here on blocks of rows, two blocks at a time (numpy's
sort releases the GIL), and the per-block results are combined into exactly fastreid's:

* AP and INP are per-query lists: the blocks' lists, concatenated in query order, are fastreid's.
* CMC: fastreid returns ``float32(count_r) / float32(num_valid)``, where ``count_r`` (the number of
  valid queries matched within rank r) is summed exactly in float32 (counts below 2**24). Each
  block's count is recovered exactly from its CMC and its number of valid queries, and the final
  division is done once, in float32, as fastreid does it.
* Queries without a true match (fastreid's "query identity does not appear in gallery") contribute
  nothing to fastreid's result; they are left out of the blocks, which also avoids fastreid's
  assertion on a block where none is valid.

One fastreid quirk makes a query's CMC depend on the previous query: when fewer than ``max_rank``
gallery entries remain after removing same-identity same-camera ones, the Cython code copies stale
buffer entries. When that can happen, the whole matrix is passed to fastreid in one call instead.
"""
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fastreid.evaluation.rank import evaluate_rank as fastreid_evaluate_rank
from fastreid.evaluation.roc import evaluate_roc as fastreid_evaluate_roc


def _as_int_arrays(*arrays):
    return [np.asarray(a).astype(np.int64, copy=False).ravel() for a in arrays]


def query_validity(q_pids, g_pids, q_camids, g_camids):
    """Per query: does it have a true match, and how many gallery entries does fastreid keep for it."""
    identity = Counter(g_pids.tolist())
    identity_camera = Counter(zip(g_pids.tolist(), g_camids.tolist()))
    ignored = np.array([identity_camera[(p, c)] for p, c in zip(q_pids.tolist(), q_camids.tolist())],
                       dtype=np.int64)
    matches = np.array([identity[p] for p in q_pids.tolist()], dtype=np.int64)
    return matches > ignored, len(g_pids) - ignored


def default_workers():
    return max(1, min(2, torch.get_num_threads()))


def _run_blocks(function, rows, block_rows, workers):
    blocks = [rows[i:i + block_rows] for i in range(0, len(rows), block_rows)]
    if workers <= 1 or len(blocks) <= 1:
        return [function(block) for block in blocks]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, blocks))


def _concatenate(parts):
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return [value for part in parts for value in part]  # fastreid's Python path returns lists


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_cython=True,
                  block_rows=256, workers=None):
    """fastreid's ``evaluate_rank`` (market1501 protocol): returns ``(cmc, all_AP, all_INP)``."""
    q_pids, g_pids, q_camids, g_camids = _as_int_arrays(q_pids, g_pids, q_camids, g_camids)
    num_gallery = distmat.shape[1]
    valid, kept = query_validity(q_pids, g_pids, q_camids, g_camids)
    if not valid.any() or kept[valid].min() < min(max_rank, num_gallery):
        return fastreid_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                                      use_metric_cuhk03=False, use_cython=use_cython)

    def evaluate_block(rows):
        return fastreid_evaluate_rank(distmat[rows], q_pids[rows], g_pids, q_camids[rows], g_camids,
                                      max_rank, use_metric_cuhk03=False, use_cython=use_cython)

    results = _run_blocks(evaluate_block, np.flatnonzero(valid), block_rows,
                          default_workers() if workers is None else workers)
    counts = sum(np.rint(np.asarray(cmc, dtype=np.float64) * len(ap)) for cmc, ap, _ in results)
    cmc = counts.astype(np.float32) / np.float32(int(valid.sum()))
    return (cmc, _concatenate([ap for _, ap, _ in results]), _concatenate([inp for _, _, inp in results]))


def evaluate_roc(distmat, q_pids, g_pids, q_camids, g_camids, use_cython=True, block_rows=256, workers=None):
    """fastreid's ``evaluate_roc``: ``(scores, labels)``, positives (label 0) then negatives (label 1),
    each in query order, as fastreid builds them. Its output is O(num_query x num_gallery) itself."""
    q_pids, g_pids, q_camids, g_camids = _as_int_arrays(q_pids, g_pids, q_camids, g_camids)

    def evaluate_block(rows):
        scores, labels = fastreid_evaluate_roc(distmat[rows], q_pids[rows], g_pids, q_camids[rows], g_camids,
                                               use_cython=use_cython)
        scores, labels = np.asarray(scores), np.asarray(labels)
        return scores[labels == 0], scores[labels == 1], labels.dtype

    results = _run_blocks(evaluate_block, np.arange(len(q_pids)), block_rows,
                          default_workers() if workers is None else workers)
    positives = np.concatenate([p for p, _, _ in results])
    negatives = np.concatenate([n for _, n, _ in results])
    label_dtype = results[0][2] if results else np.float32
    labels = np.concatenate([np.zeros(len(positives), label_dtype), np.ones(len(negatives), label_dtype)])
    return np.concatenate([positives, negatives]), labels
