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
buffer entries. When that can happen, the whole matrix is passed to the Cython module in one call
instead (the numpy ranking below carries the buffer across blocks itself).

The Cython module is looked up when ``evaluate_rank`` is called (fastreid decides once, when its rank.py
is first imported, so a module built later would be ignored). Without it, ``eval_market1501_numpy``
reproduces the Cython results bit for bit, quirks included; fastreid's pure-Python ranking is never used
for this protocol: it fails on a query that keeps fewer than ``max_rank`` gallery entries, and its AP is
computed in float64, so its numbers differ from the Cython ones.
"""
import importlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fastreid.evaluation.roc import evaluate_roc as fastreid_evaluate_roc

logger = logging.getLogger(__name__)

NO_VALID_QUERY = 'Error: all query identities do not appear in gallery'  # fastreid's assertion message


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


def cython_ranking_module():
    """fastreid's compiled ranking module, or None. Looked up at each call, not once at import as fastreid does,
    so that a module built (or removed) since is seen."""
    try:
        return importlib.import_module("fastreid.evaluation.rank_cylib.rank_cy")
    except ImportError:
        return None


def _kept_matches(distmat, q_pids, g_pids, q_camids, g_camids):
    """Rank one block of query rows as the Cython code does. Per query: the number of gallery entries kept
    (same-identity same-camera ones are removed) and the number of true matches; and, query after query,
    each true match's position in the kept ranking (ascending)."""
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1)  # the Cython code's call on the same float32 values: ties order alike
    rows, ranks = np.nonzero(g_pids[indices] == q_pids[:, None])  # same-identity entries, row by row, by rank
    removed = g_camids[indices[rows, ranks]] == q_camids[rows]
    # a kept match's position is its rank less the removed entries ranked before it in its row
    removed_before = np.cumsum(removed) - removed
    removed_before -= removed_before[np.searchsorted(rows, rows)]  # less those of the rows above
    kept = ~removed
    return (num_g - np.bincount(rows[removed], minlength=num_q), np.bincount(rows[kept], minlength=num_q),
            ranks[kept] - removed_before[kept])


def _average_precision(positions, starts, counts):
    """AP accumulated as the Cython code does, in a C float: the k-th true match, at kept position g, adds
    ``k / (g + 1.0)`` in double, rounded back to float; the sum is then divided by the count in float.
    The loop runs over match ranks k, for all queries with at least k matches at once."""
    order = np.argsort(-counts, kind="stable")
    sorted_counts, sorted_starts = counts[order], starts[order]
    active = np.searchsorted(-sorted_counts, -np.arange(1, sorted_counts[0] + 1), side="right")
    sums = np.zeros(len(counts), dtype=np.float32)
    for k, num_active in enumerate(active, start=1):
        g = positions[sorted_starts[:num_active] + (k - 1)]
        sums[:num_active] = (sums[:num_active].astype(np.float64) + k / (g + 1.0)).astype(np.float32)
    all_ap = np.empty_like(sums)
    all_ap[order] = sums / sorted_counts.astype(np.float32)
    return all_ap


def _cmc(kept_count, first_match, max_rank, chunk_entries=1 << 22):
    """Average CMC of the valid queries, in query order, with the Cython code's reused buffer: a query writes
    entries ``r < min(kept, max_rank)`` (1 from its first match on, 0 before) and its CMC row is the buffer's
    first ``max_rank`` entries, so a query that keeps fewer entries inherits the others from the last valid
    query that wrote them (0 if none did). The rows hold 0 and 1, so the Cython float32 sums are exact counts."""
    ranks = np.arange(max_rank)
    counts = np.zeros(max_rank, dtype=np.int64)
    last_writer = np.full(max_rank, -1, dtype=np.int64)
    step = max(1, chunk_entries // max(1, max_rank))
    for start in range(0, len(kept_count), step):
        queries = np.arange(start, min(start + step, len(kept_count)))
        writer = np.where(kept_count[queries, None] > ranks, queries[:, None], -1)  # who wrote entry r
        writer[0] = np.maximum(writer[0], last_writer)
        np.maximum.accumulate(writer, axis=0, out=writer)  # the last writer of entry r up to each query
        last_writer = writer[-1].copy()
        counts += ((writer >= 0) & (ranks >= first_match[writer])).sum(axis=0)
    return counts.astype(np.float32) / np.float32(len(kept_count))


def eval_market1501_numpy(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, block_rows=256, workers=1):
    """fastreid's Cython ``eval_market1501_cy`` in numpy, for when the module is not built: the same
    ``(cmc, all_AP, all_INP)`` (float32) bit for bit, its quirks included (reused CMC buffer, float AP sums).
    Blocks of ``block_rows`` queries are ranked ``workers`` at a time."""
    distmat = np.asarray(distmat)
    q_pids, g_pids, q_camids, g_camids = (np.asarray(a, dtype=np.int64) for a in (q_pids, g_pids, q_camids, g_camids))
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        logger.debug("number of gallery samples is quite small, got %d: max_rank reduced to it", num_g)
        max_rank = num_g

    def rank_block(rows):
        block = slice(rows[0], rows[-1] + 1)  # consecutive rows: a view, not a copy
        return _kept_matches(np.asarray(distmat[block], dtype=np.float32), q_pids[block], g_pids,
                             q_camids[block], g_camids)

    parts = _run_blocks(rank_block, np.arange(num_q), block_rows, workers)
    kept_count, num_matches, positions = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64)
                                          for i in range(3))
    valid = num_matches > 0  # the others do not appear in the Cython results at all
    if not valid.any():
        raise AssertionError(NO_VALID_QUERY)
    ends = np.cumsum(num_matches)[valid]
    counts = num_matches[valid]
    starts = ends - counts
    first, last = positions[starts], positions[ends - 1]
    all_inp = (counts / (last + 1.0)).astype(np.float32)
    all_ap = _average_precision(positions, starts, counts)
    return _cmc(kept_count[valid], first, max_rank), all_ap, all_inp


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_cython=True,
                  block_rows=256, workers=None):
    """fastreid's ``evaluate_rank`` (market1501 protocol) with its Cython numbers: ``(cmc, all_AP, all_INP)``.
    The Cython module is used when ``use_cython`` and it imports now; ``eval_market1501_numpy`` otherwise."""
    q_pids, g_pids, q_camids, g_camids = _as_int_arrays(q_pids, g_pids, q_camids, g_camids)
    workers = default_workers() if workers is None else workers
    rank_cy = cython_ranking_module() if use_cython else None
    if rank_cy is None:
        return eval_market1501_numpy(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, block_rows, workers)
    num_gallery = distmat.shape[1]
    valid, kept = query_validity(q_pids, g_pids, q_camids, g_camids)
    if not valid.any() or kept[valid].min() < min(max_rank, num_gallery):
        return rank_cy.evaluate_cy(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, False)

    def evaluate_block(rows):
        return rank_cy.evaluate_cy(distmat[rows], q_pids[rows], g_pids, q_camids[rows], g_camids, max_rank, False)

    results = _run_blocks(evaluate_block, np.flatnonzero(valid), block_rows, workers)
    counts = sum(np.rint(np.asarray(cmc, dtype=np.float64) * len(ap)) for cmc, ap, _ in results)
    cmc = counts.astype(np.float32) / np.float32(int(valid.sum()))
    return (cmc, np.concatenate([np.asarray(ap) for _, ap, _ in results]),
            np.concatenate([np.asarray(inp) for _, _, inp in results]))


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
