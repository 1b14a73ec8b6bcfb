"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in fastreid's formulation, sparse and in blocks.

fastreid's ``compute_jaccard_distance`` (utils/compute_dist.py) builds three dense (N x N) float32
matrices for N = queries + gallery, two of them alive at once (35 GB each at MSMT17 size), and loops
over them in Python. The same quantities are computed here, step for step:

1. ``initial_rank``: the k1 nearest rows of every row (squared L2, the row itself included);
2. ``R(i)``: the k-reciprocal neighbours of i among its first k1 (``k_reciprocal_neigh``), and the
   same with k = round(k1 / 2) (``R_half``);
3. the expansion ``E(i) = R(i) + R_half(c)`` for each ``c`` in ``R(i)`` sharing more than 2/3 of
   ``R_half(c)`` with ``R(i)``;
4. ``V[i, E(i)] = softmax(-squared distance to E(i))``;
5. local query expansion: ``V[i] = mean of V over the k2 nearest rows of i``;
6. ``jaccard(i, j) = 1 - sum(min(V[i], V[j])) / (2 - sum(min(V[i], V[j])))``, clipped at 0;

but V is a sparse matrix (each row holds |E(i)| entries, about k1; after step 5 a few k2 times
that), step 6 is evaluated only for query x gallery pairs, block of queries by block of queries,
and the final ``jaccard * (1 - lambda) + original * lambda`` is written into the original distance
in place. Memory is O(N * k1 * k2 + num_query * num_gallery) instead of O(N^2). The result agrees
with fastreid's to float32 rounding (the order of sums differs), given the same neighbours.
"""
import logging

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..errors import InputError
from .distance import check_metric, pairwise_distance
from .knn import faiss_knn, gemm_knn, resolve_backend, torch_knn
from .progress import Progress

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- neighbours
def reciprocal_neighbours(initial_rank, k):
    """fastreid's ``k_reciprocal_neigh`` for every row at once.

    Returns ``forward`` (the first k+1 columns of ``initial_rank``, as fastreid slices them) and a
    mask of the same shape: True where the neighbour j of i also has i among its first k+1.
    """
    forward = initial_rank[:, :k + 1]
    mask = np.empty(forward.shape, dtype=bool)
    rows = np.arange(len(forward))[:, None, None]
    for start in range(0, len(forward), 8192):  # bounds the (rows, k+1, k+1) gather
        stop = min(start + 8192, len(forward))
        backward = forward[forward[start:stop]]
        mask[start:stop] = (backward == rows[start:stop]).any(axis=2)
    return forward, mask


def expansion_sets(neighbours, half_neighbours, rows):
    """``E(i)`` for ``rows``: a (len(rows), width) array, each row -1 padding then E(i) sorted.

    ``neighbours`` and ``half_neighbours`` are ``reciprocal_neighbours`` for k1 and round(k1 / 2).
    """
    forward, mask = neighbours
    half_forward, half_mask = half_neighbours
    reciprocal = np.where(mask[rows], forward[rows], -1)                       # R(i)
    candidates = forward[rows]                                                 # c, for each i
    # R_half(c), padded with -2 so that padding never matches R(i)'s -1
    half_sets = np.where(half_mask[candidates], half_forward[candidates], -2)
    shared = (half_sets[..., None] == reciprocal[:, None, None, :]).any(axis=3).sum(axis=2)
    half_size = half_mask.sum(axis=1)[candidates]
    # fastreid: len(intersect1d(R_half(c), R(i))) > 2 / 3 * len(R_half(c)), in float64 as there
    accepted = mask[rows] & (shared > 2 / 3 * half_size.astype(np.float64))
    added = np.where(accepted[..., None] & (half_sets >= 0), half_sets, -1)
    members = np.sort(np.concatenate([reciprocal, added.reshape(len(rows), -1)], axis=1), axis=1)
    duplicate = np.zeros(members.shape, dtype=bool)
    duplicate[:, 1:] = members[:, 1:] == members[:, :-1]
    members[duplicate] = -1
    return np.sort(members, axis=1)  # the -1 padding first, then each set in increasing order


def expansion_pattern(initial_rank, k1, chunk=4096):
    """The sparsity pattern of V: CSR ``(indptr, indices)`` of the expansion sets of all rows."""
    neighbours = reciprocal_neighbours(initial_rank, k1)
    half_neighbours = reciprocal_neighbours(initial_rank, int(np.around(k1 / 2)))
    lengths, indices = [], []
    for start in range(0, len(initial_rank), chunk):
        rows = np.arange(start, min(start + chunk, len(initial_rank)))
        members = expansion_sets(neighbours, half_neighbours, rows)
        valid = members >= 0
        lengths.append(valid.sum(axis=1))
        indices.append(members[valid])
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(lengths))])
    return indptr, np.concatenate(indices)


def _pair_distances(x, rows, columns, batch=4096):
    """Squared L2 distance of each (row, column) pair of ``x``, fastreid's ``x^2 + y^2 - 2 x.y``.

    numpy, not torch: its gathers and row-wise dot products ran 4x faster here.
    """
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), batch):
        a, b = x[rows[start:start + batch]], x[columns[start:start + batch]]
        dot, aa, bb = (np.einsum("ij,ij->i", u, v) for u, v in ((a, b), (a, a), (b, b)))
        out[start:start + batch] = aa + bb - 2 * dot
    return out


def _segment_softmax(values, lengths):
    """softmax of each consecutive segment of ``values`` (segments of the given, non-zero lengths)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    shifted = values - np.repeat(np.maximum.reduceat(values, starts), lengths)
    exp = np.exp(shifted)
    return exp / np.repeat(np.add.reduceat(exp, starts), lengths)


@torch.no_grad()
def expansion_weights(features, indptr, indices, known, known_dist, chunk=1 << 20):
    """V's values: for each row i, softmax over E(i) of minus the squared L2 distance to row i.

    ``known`` / ``known_dist``: the k1 nearest rows of each row and their squared distances, as the
    search returned them. Most members of E(i) are among them (87% on the benchmark's Duke-size
    set); only the others are computed.
    """
    lengths = np.diff(indptr)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    dist = np.empty(len(indices), dtype=np.float32)
    found = np.zeros(len(indices), dtype=bool)
    for start in range(0, len(indices), chunk):  # bounds the (entries, known) comparison
        part = slice(start, start + chunk)
        match = known[rows[part]] == indices[part, None]
        found[part] = match.any(axis=1)
        dist[part] = known_dist[rows[part], match.argmax(axis=1)]
    missing = np.flatnonzero(~found)
    dist[missing] = _pair_distances(features.numpy(), rows[missing], indices[missing])
    logger.debug("expansion weights: %d of %d distances computed anew", len(missing), len(indices))
    if not len(indices):
        return dist
    return _segment_softmax(-dist, lengths[lengths > 0])  # empty rows hold no entries


def local_query_expansion(V, initial_rank, k2):
    """fastreid's ``V[i] = mean(V[initial_rank[i, :k2]])`` as one sparse product."""
    nearest = initial_rank[:, :k2]
    n, width = nearest.shape
    averaging = sp.csr_matrix(
        (np.ones(n * width, dtype=np.float32), nearest.ravel(), np.arange(0, n * width + 1, width)),
        shape=(n, n))
    expanded = (averaging @ V).tocsr()
    expanded.data /= np.float32(width)
    return expanded


# -------------------------------------------------------------------------------------- Jaccard
def _min_overlap(query_rows, gallery_columns, num_gallery):
    """``sum_k min(V[q, k], V[g, k])`` for the given query rows and every gallery row g.

    Walks, for each stored entry (q, k) of the query rows, the gallery rows that also store k
    (``gallery_columns`` is V[gallery].T in CSR, so its row k lists them); only those pairs have a
    non-zero minimum. Returns a dense (rows, num_gallery) float64 array.
    """
    counts = np.diff(gallery_columns.indptr)[query_rows.indices]
    total = int(counts.sum())
    entry_row = np.repeat(np.arange(query_rows.shape[0]), np.diff(query_rows.indptr))
    offsets = np.cumsum(counts) - counts
    first = gallery_columns.indptr[query_rows.indices].astype(np.int64)
    positions = np.arange(total) + np.repeat(first - offsets, counts)
    minimum = np.minimum(np.repeat(query_rows.data, counts), gallery_columns.data[positions])
    flat = np.repeat(entry_row, counts) * num_gallery + gallery_columns.indices[positions]
    overlap = np.bincount(flat, weights=minimum, minlength=query_rows.shape[0] * num_gallery)
    return overlap.reshape(query_rows.shape[0], num_gallery)


def _row_chunks(work, budget, max_rows):
    """Consecutive row ranges of at most ``max_rows`` rows and (unless one row) ``budget`` work."""
    cumulative = np.cumsum(work)
    start = 0
    while start < len(work):
        base = cumulative[start - 1] if start else 0
        stop = int(np.searchsorted(cumulative, base + budget, side="right"))
        stop = min(max(stop, start + 1), start + max_rows, len(work))
        yield start, stop
        start = stop


def jaccard_rerank_into(dist, V, num_query, lambda_value, work_budget=1 << 23, max_rows=256,
                        progress_period=5.0):
    """``dist[q] = jaccard(q, gallery) * (1 - lambda) + dist[q] * lambda`` for every query, in place."""
    V = V.tocsr()
    queries = V[:num_query]
    gallery_columns = V[num_query:].T.tocsr()
    num_gallery = dist.shape[1]
    # work of a query row = number of (query entry, gallery entry) pairs _min_overlap walks for it
    entry_work = np.concatenate([[0], np.cumsum(np.diff(gallery_columns.indptr)[queries.indices])])
    row_work = entry_work[queries.indptr[1:]] - entry_work[queries.indptr[:-1]]
    progress = Progress("re-ranking: Jaccard distance (queries)", num_query, logger, progress_period)
    for start, stop in _row_chunks(row_work, work_budget, max_rows):
        overlap = _min_overlap(queries[start:stop], gallery_columns, num_gallery)
        jaccard = 1 - overlap / (2 - overlap)
        jaccard[jaccard < 0] = 0.0  # fastreid clips rounding below zero
        dist[start:stop] = jaccard.astype(np.float32) * (1 - lambda_value) + dist[start:stop] * lambda_value
        progress.update(stop)


# ----------------------------------------------------------------------------------------- entry
@torch.no_grad()
def rerank_distance(query, gallery, metric="cosine", k1=20, k2=6, lambda_value=0.3, knn="auto",
                    progress_period=5.0):
    """The (num_query, num_gallery) float32 distance fastreid's ``ReidEvaluator`` evaluates with
    ``TEST.RERANK.ENABLED``: ``jaccard * (1 - lambda) + build_dist(query, gallery, metric) * lambda``.

    As in fastreid, the Jaccard step sees unit-normalised features for cosine and the raw ones for
    euclidean. ``knn`` picks the neighbour search (see :mod:`.knn`).
    """
    check_metric(metric)
    num_query = len(query)
    # one (N, d) copy, written in place (no per-set temporaries: 1.7 GB each at MSMT17 size, 4608-d)
    features = torch.empty(len(query) + len(gallery), query.size(1))
    if metric == "cosine":
        F.normalize(query.float(), dim=1, out=features[:num_query])
        F.normalize(gallery.float(), dim=1, out=features[num_query:])
    else:
        features[:num_query], features[num_query:] = query, gallery
    if k1 >= len(features):
        raise InputError(f"TEST.RERANK.K1={k1} needs more than {k1} query + gallery images")

    backend = resolve_backend(knn)
    logger.info("Re-ranking %d queries x %d gallery (k1=%d, k2=%d, lambda=%.2f, k-NN: %s)",
                num_query, len(gallery), k1, k2, lambda_value, backend)
    period = progress_period
    if backend == "gemm":
        initial_rank, knn_dist, dist = gemm_knn(features, num_query, k1, metric, progress_period=period)
    else:
        if backend == "torch":
            initial_rank, knn_dist = torch_knn(features, k1, progress_period=period)
        else:
            initial_rank, knn_dist = faiss_knn(features, k1, gpu=backend == "faiss-gpu", progress_period=period)
        dist = pairwise_distance(query, gallery, metric, progress_period=period)

    indptr, indices = expansion_pattern(initial_rank, k1)
    data = expansion_weights(features, indptr, indices, initial_rank, knn_dist)
    V = sp.csr_matrix((data, indices, indptr), shape=(len(features), len(features)))
    if k2 != 1:  # fastreid skips the expansion (not "expands over one neighbour") for k2 == 1
        V = local_query_expansion(V, initial_rank, k2)
    jaccard_rerank_into(dist, V, num_query, lambda_value, progress_period=progress_period)
    return dist
