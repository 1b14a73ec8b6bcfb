"""CMC / mAP / mINP / ROC: the plugin's numbers are fastreid's (its Cython ones), with or without the
Cython module."""
import os
import sys

import numpy as np
import pytest
import torch

import mdpr_plugin  # noqa: F401
import fastreid.evaluation.rank as fastreid_rank
from fastreid.evaluation.rank_cylib import rank_cy
from fastreid.evaluation.roc import evaluate_roc as fastreid_roc
from fastreid.utils.compute_dist import build_dist
from mdpr_plugin.evaluation import evaluate_rank, evaluate_roc, pairwise_distance
from mdpr_plugin.evaluation.rank import cython_ranking_module, eval_market1501_numpy
from evaluation.planted import planted
from helpers import BUNDLED_IMAGES

RANK_CY = "fastreid.evaluation.rank_cylib.rank_cy"


def assert_same_ranking(mine, theirs, atol=1e-6):
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                                   rtol=0, atol=atol)


def assert_identical(mine, theirs):
    """The same values, bit for bit, and the same dtypes (float32 throughout)."""
    for a, b in zip(mine, theirs):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)


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


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "cosine, rounded"])
def test_numpy_ranking_is_the_cython_ranking(metric):
    """The numpy ranking replaces the Cython module: every bit must agree, ties included (rounding makes many)."""
    q, g, qp, gp, qc, gc = planted(seed=1)
    dist = pairwise_distance(q, g, metric.split(",")[0])
    if metric.endswith("rounded"):
        dist = np.round(dist, 2)
    reference = rank_cy.evaluate_cy(dist, qp, gp, qc, gc, 50)
    assert_identical(eval_market1501_numpy(dist, qp, gp, qc, gc, 50), reference)
    assert_identical(eval_market1501_numpy(dist, qp, gp, qc, gc, 50, block_rows=7, workers=2), reference)
    assert_identical(evaluate_rank(dist, qp, gp, qc, gc, use_cython=False, block_rows=9), reference)
    assert 0.2 < np.mean(reference[1]) < 0.95


def short_gallery(reverse=False):
    """56 gallery entries, 14 per identity on cameras 0 and 1 in turn. A query on camera 0 or 1 keeps 49 of
    them, fewer than max_rank, so its CMC at rank 50 is the Cython buffer's stale value: 0 before any query on
    camera 2 (which keeps all 56) has written it, 1 after."""
    q_camids = np.array([0, 1] * 6 + [2] * 4 + [0, 1] * 4)
    order = slice(None, None, -1) if reverse else slice(None)
    dist = np.random.default_rng(5).random((len(q_camids), 56), dtype=np.float32)
    return dist[order], (np.arange(len(q_camids)) % 4)[order], np.repeat(np.arange(4), 14), q_camids[order], \
        np.tile([0, 1], 28)


@pytest.mark.parametrize("reverse", [False, True])
def test_queries_keeping_fewer_than_max_rank_entries_get_the_stale_cmc_buffer(reverse):
    dist, qp, gp, qc, gc = short_gallery(reverse)
    reference = rank_cy.evaluate_cy(dist, qp, gp, qc, gc, 50)
    assert_identical(eval_market1501_numpy(dist, qp, gp, qc, gc, 50, block_rows=5, workers=2), reference)
    assert_identical(evaluate_rank(dist, qp, gp, qc, gc, use_cython=False, block_rows=5), reference)
    assert_identical(evaluate_rank(dist, qp, gp, qc, gc, use_cython=True, block_rows=5), reference)
    # at rank 50: the 4 camera-2 queries, and the queries after them (8 in this order, 12 reversed)
    assert reference[0][49] == np.float32(16 if reverse else 12) / np.float32(24)
    assert reference[0][48] == 1  # a query's 7 true matches are among its 49 kept entries


def bundled_identities():
    """Person and camera of the bundled test set's images (names ``PPPP_cC...``): query, then gallery."""
    def read(folder):
        names = sorted(os.listdir(os.path.join(BUNDLED_IMAGES, folder)))
        return np.array([int(n[:4]) for n in names]), np.array([int(n.split("_")[1][1]) for n in names])
    return read("query"), read("bounding_box_test")


@pytest.mark.parametrize("seed", range(3))
def test_bundled_test_set_ranks_without_the_cython_module(seed, monkeypatch, capsys):
    """32 gallery images, fewer than max_rank: fastreid's pure-Python ranking fails on this set."""
    (qp, qc), (gp, gc) = bundled_identities()
    assert len(qp) == len(gp) == 32
    generator = torch.Generator().manual_seed(seed)
    dist = pairwise_distance(torch.randn(32, 16, generator=generator), torch.randn(32, 16, generator=generator))
    reference = rank_cy.evaluate_cy(dist, qp, gp, qc, gc, 50)
    with_module = evaluate_rank(dist, qp, gp, qc, gc)
    capsys.readouterr()
    assert_identical(eval_market1501_numpy(dist, qp, gp, qc, gc, 50), reference)
    monkeypatch.setitem(sys.modules, RANK_CY, None)  # as an unbuilt module would, the import fails
    assert cython_ranking_module() is None
    assert_identical(evaluate_rank(dist, qp, gp, qc, gc), with_module)
    assert_identical(with_module, reference)
    assert capsys.readouterr().out == ""  # Cython prints its small-gallery note; the numpy ranking does not


def test_a_cython_module_built_after_fastreid_was_imported_is_used(monkeypatch):
    calls, original = [], rank_cy.evaluate_cy

    def evaluate_cy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(fastreid_rank, "IS_CYTHON_AVAI", False)  # fastreid saw no module at import
    monkeypatch.setattr(cython_ranking_module(), "evaluate_cy", evaluate_cy)
    q, g, qp, gp, qc, gc = planted(seed=4)
    dist = pairwise_distance(q, g, "cosine")
    assert_identical(evaluate_rank(dist, qp, gp, qc, gc, block_rows=16), original(dist, qp, gp, qc, gc, 50))
    assert calls
    calls.clear()
    evaluate_rank(dist, qp, gp, qc, gc, use_cython=False)
    assert not calls


@pytest.mark.parametrize("use_cython", [True, False])
def test_queries_without_match_and_tiny_gallery_follow_fastreid(use_cython):
    q, g, qp, gp, qc, gc = planted(seed=2)
    qp = qp.copy()
    qp[::4] = 999  # identities absent from the gallery
    dist = pairwise_distance(q, g, "cosine")
    assert_identical(evaluate_rank(dist, qp, gp, qc, gc, block_rows=5, use_cython=use_cython),
                     rank_cy.evaluate_cy(dist, qp, gp, qc, gc, 50))
    small = dist[:, :30]  # fewer gallery entries than max_rank: fastreid's single-call path
    assert_identical(evaluate_rank(small, qp, gp[:30], qc, gc[:30], block_rows=5, use_cython=use_cython),
                     rank_cy.evaluate_cy(small, qp, gp[:30], qc, gc[:30], 50))
    with pytest.raises(AssertionError, match="all query identities do not appear in gallery"):
        evaluate_rank(dist, np.full_like(qp, 999), gp, qc, gc, use_cython=use_cython)


def test_roc_equals_fastreid():
    q, g, qp, gp, qc, gc = planted(seed=3)
    dist = pairwise_distance(q, g, "cosine")
    scores, labels = evaluate_roc(dist, qp, gp, qc, gc, block_rows=8)
    ref_scores, ref_labels = fastreid_roc(dist, qp, gp, qc, gc)
    np.testing.assert_array_equal(scores, ref_scores)
    np.testing.assert_array_equal(labels, ref_labels)
