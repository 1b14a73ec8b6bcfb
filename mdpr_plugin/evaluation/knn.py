"""Exact k nearest neighbours (squared L2) over query + gallery features, for re-ranking.

Four interchangeable searches, all exhaustive, all returning the ``k`` nearest rows (the row
itself included) sorted by increasing distance, like ``faiss.IndexFlatL2.search``:

* ``"faiss"``: faiss-cpu's ``IndexFlatL2``, the search fastreid runs with ``search_option=3``;
* ``"faiss-gpu"``: faiss's ``GpuIndexFlatL2`` (needs CUDA and a faiss build with GPU support);
* ``"torch"``: blocked matrix products and ``topk`` in torch, on the GPU when CUDA is there (else the
  CPU): the GPU search for machines whose faiss has no GPU support;
* ``"gemm"``: blocked matrix products over the upper triangle of the (N x N) distance matrix. Each
  pair is computed once and serves both rows, so it does half of faiss's arithmetic, and the
  query x gallery blocks it passes through are kept as the re-ranking's original distance, which
  therefore costs nothing extra. On two CPU cores this is what brings a 4608-d Duke-size
  re-ranking well under a minute (docs/benchmarks.md compares it with the faiss-cpu search).

``"auto"`` is ``"faiss-gpu"`` when CUDA and faiss-gpu are there, else ``"torch"`` on the GPU when CUDA
is there, else ``"gemm"``. The searches can
disagree only where two neighbours are at the same distance to within float32 rounding.
"""
import logging

import numpy as np
import torch

from .progress import Progress

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "gemm", "torch", "faiss", "faiss-gpu")


def faiss_gpu_available():
    import faiss

    return torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"k-NN backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if faiss_gpu_available():
            return "faiss-gpu"
        return "torch" if torch.cuda.is_available() else "gemm"
    if backend == "faiss-gpu" and not faiss_gpu_available():
        raise RuntimeError("k-NN backend 'faiss-gpu' needs CUDA and a faiss build with GPU support")
    return backend


def faiss_knn(features, k, gpu=False, progress_period=5.0):
    """``IndexFlatL2`` search of every row against all rows: (N, k) int64 neighbour indices and
    their (N, k) float32 squared distances."""
    import faiss

    x = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)
    if gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatL2(resources, x.shape[1])
    else:
        index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    # Batches (a multiple of faiss's query block) only to show progress: faiss finds each query's
    # neighbours independently of the other queries of the call, so the result is one call's.
    batch = max(int(faiss.cvar.distance_compute_blas_query_bs), 1) * 4
    neighbours = np.empty((len(x), k), dtype=np.int64)
    distances = np.empty((len(x), k), dtype=np.float32)
    progress = Progress("re-ranking: faiss k-NN search", len(x), logger, progress_period)
    for start in range(0, len(x), batch):
        stop = min(start + batch, len(x))
        distances[start:stop], neighbours[start:stop] = index.search(x[start:stop], k)
        progress.update(stop)
    return neighbours, distances


@torch.no_grad()
def torch_knn(features, k, device=None, block_size=4096, progress_period=5.0):
    """Exhaustive squared-L2 search with torch on ``device`` (default: CUDA when available, else the CPU):
    (N, k) int64 neighbour indices and their (N, k) float32 squared distances, as :func:`faiss_knn`."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x = features.detach().to(device, torch.float32)
    sq = (x * x).sum(dim=1)
    neighbours = np.empty((len(x), k), dtype=np.int64)
    distances = np.empty((len(x), k), dtype=np.float32)
    progress = Progress("re-ranking: k-NN search (torch, %s)" % device.type, len(x), logger, progress_period)
    for start in range(0, len(x), block_size):
        stop = min(start + block_size, len(x))
        # ||a||^2 + ||b||^2 - 2 a.b, the expansion faiss and the gemm search use
        block = torch.addmm(sq[None, :], x[start:stop], x.t(), beta=1, alpha=-2).add_(sq[start:stop, None])
        values, indices = block.topk(k, dim=1, largest=False, sorted=True)
        distances[start:stop], neighbours[start:stop] = values.cpu().numpy(), indices.cpu().numpy()
        progress.update(stop)
    return neighbours, distances


def _blocks(num_query, num_total, block_size):
    """Row ranges that never straddle the query / gallery boundary."""
    edges = list(range(0, num_query, block_size)) + list(range(num_query, num_total, block_size))
    return [(a, min(b, num_total)) for a, b in zip(edges, edges[1:] + [num_total])]


class _TopK:
    """Running k smallest distances (and their column indices) of every row.

    A row's first offer is dense (a partial sort of the whole block). Once it holds k neighbours,
    only entries below its current k-th distance can enter, and after the first blocks those are a
    few per row: one comparison over the block picks them out and they are merged sparsely, so the
    selection costs a small fraction of the matrix product that produced the block. The bookkeeping
    is numpy (one thread): on a loaded machine many small multi-threaded torch calls each wait for a
    descheduled thread.
    """

    def __init__(self, num_rows, k):
        self.k = k
        self.dist = np.full((num_rows, k), np.inf, dtype=np.float32)
        self.index = np.full((num_rows, k), -1, dtype=np.int64)

    def offer(self, block, row_start, column_start, transposed=False):
        """Offer ``block`` (float32 numpy, distances of rows row_start.. to rows column_start..) to
        the block's rows, or with ``transposed`` to its columns (the same pairs seen from them)."""
        receiver_start, source_start = (column_start, row_start) if transposed else (row_start, column_start)
        num_receivers = block.shape[1] if transposed else block.shape[0]
        kth = self.dist[receiver_start:receiver_start + num_receivers, -1]
        if not np.isfinite(kth).all():  # rows still filling up: take the block's k best
            values = np.ascontiguousarray(block.T) if transposed else block
            best = self._smallest(values, min(self.k, values.shape[1]))
            self._merge(np.arange(receiver_start, receiver_start + num_receivers),
                        np.take_along_axis(values, best, 1), source_start + best)
            return
        flat = np.flatnonzero(block < (kth[None, :] if transposed else kth[:, None]))
        if not len(flat):
            return
        row, col = np.divmod(flat, block.shape[1])
        receiver, source = (col, row) if transposed else (row, col)
        if transposed:  # group the entries by receiver
            order = np.argsort(receiver, kind="stable")
            receiver, source, flat = receiver[order], source[order], flat[order]
        self._merge_entries(receiver_start + receiver, source_start + source, block.ravel()[flat])

    def _smallest(self, values, k):
        """Column positions of the k smallest entries of each row, in increasing order."""
        part = np.argpartition(values, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(values, part, 1), axis=1, kind="stable")
        return np.take_along_axis(part, order, 1)

    def _merge_entries(self, rows, columns, dist):
        """Merge (row, column, distance) entries, grouped by row, into the rows' top k."""
        receivers, first, count = np.unique(rows, return_index=True, return_counts=True)
        slot = np.arange(len(rows)) - np.repeat(first, count)
        which = np.repeat(np.arange(len(receivers)), count)
        offered = np.full((len(receivers), count.max()), np.inf, dtype=np.float32)
        offered_index = np.full(offered.shape, -1, dtype=np.int64)
        offered[which, slot] = dist
        offered_index[which, slot] = columns
        self._merge(receivers, offered, offered_index)

    def _merge(self, rows, offered, offered_index):
        dist = np.concatenate([self.dist[rows], offered], axis=1)
        index = np.concatenate([self.index[rows], offered_index], axis=1)
        best = self._smallest(dist, self.k)
        self.dist[rows] = np.take_along_axis(dist, best, 1)
        self.index[rows] = np.take_along_axis(index, best, 1)


def _block_distances(rows, cols, sq_rows, sq_cols, gram, l2):
    """Squared L2 distances of a block into ``l2`` (and the dot products into ``gram``).

    numpy's matmul (OpenBLAS) rather than torch's (MKL): on the AMD EPYC this was developed on it
    runs the block products 1.2-1.4x faster. The values match fastreid's to float32 rounding, not
    bit for bit, which the re-ranking does not need (its original distance is blended with the
    Jaccard distance; the ranking-only path uses ``distance.pairwise_distance``, which is exact).
    """
    np.matmul(rows, cols.T, out=gram)
    np.multiply(gram, -2, out=l2)
    l2 += sq_rows[:, None]
    l2 += sq_cols[None, :]


def gemm_knn(features, num_query, k, metric, block_size=2048, progress_period=5.0):
    """k-NN by blocked products over the upper triangle, keeping the query x gallery distances.

    ``features`` are the prepared rows (unit rows for cosine), queries first. Returns the (N, k)
    nearest rows with their (N, k) float32 squared distances, and
    the (num_query, num_gallery) float32 distance in ``metric`` (1 - dot product for cosine, the
    squared L2 distance for euclidean, as fastreid's ``build_dist``).
    """
    x = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)
    num_total = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    blocks = _blocks(num_query, num_total, block_size)
    top = _TopK(num_total, k)
    query_gallery = np.empty((num_query, num_total - num_query), dtype=np.float32)
    gram_buffer = np.empty(block_size * block_size, np.float32)
    l2_buffer = np.empty(block_size * block_size, np.float32)

    pairs = [(a, b) for a in range(len(blocks)) for b in range(a, len(blocks))]
    area = sum((blocks[a][1] - blocks[a][0]) * (blocks[b][1] - blocks[b][0]) for a, b in pairs)
    progress = Progress("re-ranking: k-NN over query+gallery (distances)", area, logger, progress_period)
    done = 0
    for a, b in pairs:
        (r0, r1), (c0, c1) = blocks[a], blocks[b]
        shape = (r1 - r0, c1 - c0)
        gram = gram_buffer[:shape[0] * shape[1]].reshape(shape)
        l2 = l2_buffer[:shape[0] * shape[1]].reshape(shape)
        _block_distances(x[r0:r1], x[c0:c1], sq[r0:r1], sq[c0:c1], gram, l2)
        if r1 <= num_query <= c0:  # a query x gallery block: keep the original distance
            target = query_gallery[r0:r1, c0 - num_query:c1 - num_query]
            if metric == "cosine":
                np.subtract(1, gram, out=target)
            else:
                target[...] = l2
        top.offer(l2, r0, c0)
        if a != b:  # the same pairs seen from the column block's rows
            top.offer(l2, r0, c0, transposed=True)
        done += l2.size
        progress.update(done)
    progress.done()
    return top.index, top.dist, query_gallery
