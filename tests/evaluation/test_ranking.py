"""CMC / mAP / mINP / ROC: the plugin's numbers are fastreid's."""
import numpy as np
import pytest

import mdpr_plugin  # noqa: F401
import fastreid.evaluation.rank as fastreid_rank
from fastreid.evaluation.roc import evaluate_roc as fastreid_roc
from fastreid.utils.compute_dist import build_dist
from mdpr_plugin.evaluation import evaluate_rank, evaluate_roc, pairwise_distance
from evaluation.planted import planted


def assert_same_ranking(mine, theirs, atol=1e-6):
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                                   rtol=0, atol=atol)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_cmc_map_minp_equal_fastreid(metric):
    q, g, qp, gp, qc, gc = planted()
    dist = pairwise_distance(q, g, metric)
    mine = evaluate_rank(dist, qp, gp, qc, gc, block_rows=7, workers=2)  # several blocks, two threads
    theirs = fastreid_rank.evaluate_rank(build_dist(q, g, metric), qp, gp, qc, gc)
    assert_same_ranking(mine, theirs)
    # and not merely close: the same bits
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(mine, theirs))
    assert 0.2 < np.mean(mine[1]) < 0.95  # the planted identities make a non-trivial task


def test_same_camera_same_identity_entries_are_ignored():
    q, g, qp, gp, qc, gc = planted()
    dist = pairwise_distance(q, g, "cosine")
    copies = np.arange(0, len(q), 5)
    copy_columns = len(g) - len(copies) + np.arange(len(copies))
    assert (dist[copies].argmin(axis=1) == copy_columns).all()  # each copy is its query's nearest entry
    cmc, all_ap, _ = evaluate_rank(dist, qp, gp, qc, gc)
    gc_moved = gc.copy()
    gc_moved[copy_columns] = (qc[copies] + 1) % 4  # the same copies on another camera now count
    cmc_counted, all_ap_counted, _ = evaluate_rank(dist, qp, gp, qc, gc_moved)
    assert cmc_counted[0] > cmc[0] and np.mean(all_ap_counted) > np.mean(all_ap)


def test_fast_ranking_module_equals_pure_python():
    assert fastreid_rank.IS_CYTHON_AVAI, "fastreid's Cython ranking module is not built (make setup)"
    q, g, qp, gp, qc, gc = planted(seed=1)
    dist = pairwise_distance(q, g, "cosine")
    fast = evaluate_rank(dist, qp, gp, qc, gc, use_cython=True)
    python = fastreid_rank.evaluate_rank(dist, qp, gp, qc, gc, use_cython=False)
    assert_same_ranking(fast, python)
    assert_same_ranking(evaluate_rank(dist, qp, gp, qc, gc, use_cython=False, block_rows=9), python, atol=0)


def test_queries_without_match_and_tiny_gallery_follow_fastreid():
    q, g, qp, gp, qc, gc = planted(seed=2)
    qp = qp.copy()
    qp[::4] = 999  # identities absent from the gallery
    dist = pairwise_distance(q, g, "cosine")
    assert_same_ranking(evaluate_rank(dist, qp, gp, qc, gc, block_rows=5),
                        fastreid_rank.evaluate_rank(dist, qp, gp, qc, gc), atol=0)
    small = dist[:, :30]  # fewer gallery entries than max_rank: fastreid's single-call path
    assert_same_ranking(evaluate_rank(small, qp, gp[:30], qc, gc[:30], block_rows=5),
                        fastreid_rank.evaluate_rank(small, qp, gp[:30], qc, gc[:30]), atol=0)
    with pytest.raises(AssertionError):
        evaluate_rank(dist, np.full_like(qp, 999), gp, qc, gc)


def test_roc_equals_fastreid():
    q, g, qp, gp, qc, gc = planted(seed=3)
    dist = pairwise_distance(q, g, "cosine")
    scores, labels = evaluate_roc(dist, qp, gp, qc, gc, block_rows=8)
    ref_scores, ref_labels = fastreid_roc(dist, qp, gp, qc, gc)
    np.testing.assert_array_equal(scores, ref_scores)
    np.testing.assert_array_equal(labels, ref_labels)
