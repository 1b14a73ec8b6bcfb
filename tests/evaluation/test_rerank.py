"""Re-ranking agrees with fastreid's compute_jaccard_distance (CPU search) on the same features."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mdpr_plugin  # noqa: F401
from fastreid.evaluation.rank import evaluate_rank as fastreid_rank
from fastreid.utils import compute_dist
from mdpr_plugin.evaluation import evaluate_rank, pairwise_distance, rerank_distance
from mdpr_plugin.evaluation.knn import faiss_knn, gemm_knn, resolve_backend, torch_knn
from evaluation.planted import planted

# Stated tolerance: the two differ only in float32 rounding (summation order of the softmax weights,
# the query expansion mean and the Jaccard sums); observed differences are below 3e-7.
TOLERANCE = 1e-5


def fastreid_rerank(q, g, metric, k1, k2, lam):
    """What fastreid's ReidEvaluator computes with TEST.RERANK.ENABLED, with the CPU faiss search."""
    dist = compute_dist.build_dist(q, g, metric)
    qn, gn = (F.normalize(q, dim=1), F.normalize(g, dim=1)) if metric == "cosine" else (q, g)
    jaccard = compute_dist.compute_jaccard_distance(torch.cat((qn, gn)), k1=k1, k2=k2, search_option=3)
    return jaccard[:len(q), len(q):] * (1 - lam) + dist * lam


@pytest.mark.parametrize("metric,knn,k1,k2,lam", [
    ("cosine", "gemm", 20, 6, 0.3),
    ("cosine", "faiss", 20, 6, 0.3),
    ("cosine", "torch", 20, 6, 0.3),
    ("cosine", "gemm", 15, 1, 0.0),  # odd k1 (rounding of k1 / 2), no query expansion, pure Jaccard
    ("euclidean", "gemm", 20, 6, 0.3),
])
def test_rerank_agrees_with_fastreid(metric, knn, k1, k2, lam):
    q, g, qp, gp, qc, gc = planted(seed=4)
    if metric == "euclidean":  # small norms, so that the softmax weights are not all one-hot
        q, g = q / 6, g / 6
    mine = rerank_distance(q, g, metric, k1, k2, lam, knn=knn)
    theirs = fastreid_rerank(q, g, metric, k1, k2, lam)
    assert mine.shape == theirs.shape and mine.dtype == np.float32
    assert np.abs(mine - theirs).max() <= TOLERANCE
    assert not np.allclose(mine, pairwise_distance(q, g, metric))  # re-ranking did change the distance
    mine_map = np.mean(evaluate_rank(mine, qp, gp, qc, gc)[1])
    theirs_map = np.mean(fastreid_rank(theirs, qp, gp, qc, gc)[1])
    assert abs(mine_map - theirs_map) * 100 <= 0.1


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_blocked_search_finds_faiss_neighbours(metric):
    q, g, *_ = planted(seed=5)
    if metric == "cosine":
        q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    features = torch.cat([q, g])
    # blocks far smaller than the data: many dense and sparse merges, a partial last block
    neighbours, distances, query_gallery = gemm_knn(features, len(q), 20, metric, block_size=48)
    ref_neighbours, ref_distances = faiss_knn(features, 20)
    np.testing.assert_array_equal(np.sort(neighbours, axis=1), np.sort(ref_neighbours, axis=1))
    np.testing.assert_allclose(distances, ref_distances, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(query_gallery, pairwise_distance(q, g, metric), rtol=0, atol=1e-4)


@pytest.mark.parametrize("block_size", [4096, 37])  # one block; many blocks with a partial last one
def test_torch_search_finds_faiss_neighbours(block_size):
    q, g, *_ = planted(seed=7)
    features = F.normalize(torch.cat([q, g]), dim=1)
    neighbours, distances = torch_knn(features, 20, device="cpu", block_size=block_size)
    ref_neighbours, ref_distances = faiss_knn(features, 20)
    assert neighbours.dtype == np.int64 and distances.dtype == np.float32 and neighbours.shape == (len(features), 20)
    np.testing.assert_array_equal(neighbours[:, 0], np.arange(len(features)))  # each row is its own nearest
    np.testing.assert_array_equal(np.sort(neighbours, axis=1), np.sort(ref_neighbours, axis=1))
    np.testing.assert_allclose(distances, ref_distances, rtol=1e-5, atol=1e-4)
    assert (np.diff(distances, axis=1) >= 0).all()  # sorted by increasing distance, as faiss's


def test_auto_search_without_cuda_is_the_blocked_cpu_search(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "gemm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("mdpr_plugin.evaluation.knn.faiss_gpu_available", lambda: False)
    assert resolve_backend("auto") == "torch"  # CUDA without faiss-gpu: the GPU search in torch


def test_rerank_on_cpu_gives_finite_metrics():
    q, g, qp, gp, qc, gc = planted(seed=6)
    dist = rerank_distance(q, g, "cosine")
    cmc, all_ap, all_inp = evaluate_rank(dist, qp, gp, qc, gc)
    assert np.isfinite(dist).all() and np.isfinite(cmc).all()
    assert np.isfinite(np.mean(all_ap)) and np.isfinite(np.mean(all_inp))


def test_too_few_images_for_k1_is_refused():
    q, g, *_ = planted()
    with pytest.raises(ValueError, match="K1"):
        rerank_distance(q[:5], g[:10], "cosine", k1=20)
