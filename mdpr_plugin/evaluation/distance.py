"""Query x gallery distances exactly as fastreid's ``build_dist`` computes them, in gallery blocks.

fastreid (utils/compute_dist.py) builds the whole distance matrix in one expression, which holds two
to three query x gallery float32 matrices at once (the product, the expanded norms, the result). Here
the result array is allocated once and filled block by block, with the same operations on the same
operands: the features are normalised (cosine) or squared-summed (euclidean) over the whole set, as
fastreid does, and only the matrix product is split along the gallery axis. That the result is
bit-for-bit fastreid's rests on the BLAS computing each output element the same way whatever the
number of output columns: true of torch's MKL here, checked by the tests and by the benchmark at
Duke and MSMT17 shapes, but not a promise every BLAS makes.
"""
import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .progress import Progress

logger = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")


def check_metric(metric):
    if metric not in METRICS:
        raise InputError(f"TEST.METRIC must be one of {METRICS}, got {metric!r}")


def prepare_features(features, metric):
    """The rows the distance is a function of: unit rows for cosine, raw float32 rows for euclidean."""
    check_metric(metric)
    features = features.float()
    if metric == "cosine":
        return F.normalize(features, p=2, dim=1)
    return features


def squared_norms(features):
    # fastreid's expression (compute_euclidean_distance), over the whole set so each row's sum is
    # reduced exactly as there.
    return torch.pow(features, 2).sum(dim=1, keepdim=True)


def distance_block(query, gallery, metric, query_sq=None, gallery_sq=None):
    """One block of fastreid's distance, from prepared features (and squared norms for euclidean)."""
    if metric == "cosine":
        return 1 - torch.mm(query, gallery.t())
    m, n = query.size(0), gallery.size(0)
    block = query_sq.expand(m, n) + gallery_sq.expand(n, m).t()
    return block.addmm_(query, gallery.t(), beta=1, alpha=-2)


@torch.no_grad()
def pairwise_distance(query, gallery, metric="cosine", block_size=4096, progress_period=5.0):
    """``fastreid.utils.compute_dist.build_dist(query, gallery, metric)`` for cosine / euclidean.

    Returns a float32 numpy array (num_query, num_gallery), filled ``block_size`` gallery columns
    at a time, so the peak memory is the result plus one query x block product.
    """
    query = prepare_features(query, metric)
    gallery = prepare_features(gallery, metric)
    query_sq = gallery_sq = None
    if metric == "euclidean":
        query_sq, gallery_sq = squared_norms(query), squared_norms(gallery)

    num_gallery = gallery.size(0)
    result = np.empty((query.size(0), num_gallery), dtype=np.float32)
    out = torch.from_numpy(result)
    progress = Progress("query x gallery distances", num_gallery, logger, progress_period)
    for start in range(0, num_gallery, block_size):
        stop = min(start + block_size, num_gallery)
        g_sq = None if gallery_sq is None else gallery_sq[start:stop]
        out[:, start:stop] = distance_block(query, gallery[start:stop], metric, query_sq, g_sq)
        progress.update(stop)
    return result
