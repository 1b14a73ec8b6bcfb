"""The plugin's ReidEvaluator gives fastreid's ReidEvaluator's results, and runs re-ranking on the CPU."""
import numpy as np
import pytest
import torch

import mdpr_plugin  # noqa: F401
from fastreid.config import get_cfg
from fastreid.evaluation import ReidEvaluator as FastreidReidEvaluator
from fastreid.evaluation.query_expansion import aqe as fastreid_aqe
from mdpr_plugin import compat
from mdpr_plugin.evaluation import ReidEvaluator, aqe, cython_ranking
from evaluation.planted import planted


def make_cfg(*overrides):
    cfg = get_cfg()
    cfg.merge_from_list(list(overrides))
    return cfg


def evaluate(evaluator_class, cfg, batch=50):
    q, g, qp, gp, qc, gc = planted(seed=7)
    features = torch.cat([q, g])
    pids, camids = np.concatenate([qp, gp]), np.concatenate([qc, gc])
    evaluator = evaluator_class(cfg, num_query=len(q))
    evaluator.reset()
    for start in range(0, len(features), batch):
        part = slice(start, start + batch)
        inputs = {"targets": torch.from_numpy(pids[part]), "camids": torch.from_numpy(camids[part])}
        evaluator.process(inputs, features[part])
    return evaluator.evaluate()


@pytest.mark.parametrize("overrides", [
    ("TEST.METRIC", "cosine"),
    ("TEST.METRIC", "euclidean"),
    ("TEST.METRIC", "cosine", "TEST.ROC.ENABLED", True),
])
def test_results_are_fastreids(overrides):
    cfg = make_cfg(*overrides)
    mine, theirs = evaluate(ReidEvaluator, cfg), evaluate(FastreidReidEvaluator, cfg)
    assert list(mine) == list(theirs)
    for key in theirs:
        assert mine[key] == theirs[key], key


def test_evaluate_is_repeatable():
    cfg = make_cfg()
    q, g, qp, gp, qc, gc = planted(seed=7)
    evaluator = ReidEvaluator(cfg, num_query=len(q))
    evaluator.process({"targets": torch.from_numpy(np.concatenate([qp, gp])),
                       "camids": torch.from_numpy(np.concatenate([qc, gc]))}, torch.cat([q, g]))
    assert evaluator.evaluate() == evaluator.evaluate()


def test_query_expansion_agrees_with_fastreid():
    q, g, *_ = planted(seed=8)
    mine_q, mine_g = aqe(q, g, qe_times=2, qe_k=5, alpha=3.0, block_rows=7)
    ref_q, ref_g = fastreid_aqe(q, g, qe_times=2, qe_k=5, alpha=3.0)
    np.testing.assert_allclose(mine_q.numpy(), ref_q.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mine_g.numpy(), ref_g.numpy(), rtol=1e-4, atol=1e-5)
    cfg = make_cfg("TEST.AQE.ENABLED", True)
    mine, theirs = evaluate(ReidEvaluator, cfg), evaluate(FastreidReidEvaluator, cfg)
    assert abs(mine["mAP"] - theirs["mAP"]) <= 0.1


def test_rerank_through_the_evaluator_on_cpu():
    cfg = make_cfg("TEST.RERANK.ENABLED", True)
    mine = evaluate(ReidEvaluator, cfg)
    assert all(np.isfinite(v) for v in mine.values())
    # fastreid's own evaluator searches on the GPU only; the opt-in patches move it to faiss-cpu here
    compat.patch_fastreid()
    try:
        theirs = evaluate(FastreidReidEvaluator, cfg)
    finally:
        compat.unpatch_fastreid()
    assert abs(mine["mAP"] - theirs["mAP"]) <= 0.1
    assert mine["mAP"] != evaluate(ReidEvaluator, make_cfg())["mAP"]  # re-ranking took effect


def test_unsupported_metric_is_refused_at_construction():
    with pytest.raises(ValueError, match="TEST.METRIC"):
        ReidEvaluator(make_cfg("TEST.METRIC", "jaccard"), num_query=3)


def test_the_fast_ranking_module_was_built_at_setup():
    assert cython_ranking.fast_ranking_available()


@pytest.mark.parametrize("evaluator", ["plugin", "fastreid, patched"])
def test_without_the_cython_module_nothing_is_compiled_and_the_numbers_are_the_modules(evaluator, monkeypatch):
    import sys

    import fastreid.evaluation.rank_cylib

    evaluator_class = ReidEvaluator if evaluator == "plugin" else FastreidReidEvaluator
    if evaluator != "plugin":
        compat.patch_fastreid()
    try:
        with_module = evaluate(evaluator_class, make_cfg())
        # an entry of None in sys.modules makes the import fail, as an unbuilt module would; fastreid's
        # evaluator would then compile it (and exit the process when that fails)
        monkeypatch.setitem(sys.modules, "fastreid.evaluation.rank_cylib.rank_cy", None)
        monkeypatch.setattr(fastreid.evaluation.rank_cylib, "compile_helper", lambda: sys.exit(1))
        without_module = evaluate(evaluator_class, make_cfg())
    finally:
        compat.unpatch_fastreid()
    assert without_module == with_module
