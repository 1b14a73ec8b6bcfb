"""The plugin's re-id evaluator: fastreid's ``ReidEvaluator`` with bounded memory and CPU re-ranking.

Same constructor, same ``process``, same result keys and numbers as fastreid's; ``evaluate`` differs:

* distances are computed in gallery blocks into one float32 matrix (bit-identical to ``build_dist``);
* ranking runs fastreid's ``evaluate_rank`` over blocks of queries (identical results, bounded memory);
* AQE does not build the (N x N) similarity matrix;
* re-ranking (``TEST.RERANK``) finds neighbours on the GPU when there (faiss-gpu, else torch), else on the
  CPU, and computes the Jaccard distance sparse, instead
  of fastreid's CUDA-only search and dense (N x N) matrices;
* ROC is fastreid's, computed over blocks of queries;
* ranking needs no compiled module (fastreid's evaluator compiles one and exits the process when ``make``
  fails): see :mod:`mdpr_plugin.evaluation.rank`.
"""
import copy
import itertools
import logging
from collections import OrderedDict

import numpy as np
import torch
from sklearn import metrics

from fastreid.evaluation import ReidEvaluator as FastreidReidEvaluator
from fastreid.utils import comm

from ..errors import InputError
from .distance import check_metric, pairwise_distance
from .query_expansion import aqe
from .rank import evaluate_rank, evaluate_roc
from .rerank import rerank_distance

logger = logging.getLogger(__name__)


class EmptyEvaluationSetError(InputError):
    """Evaluation with no query or no gallery image."""


def check_not_empty(num_query, num_gallery, dataset_name=None):
    # fastreid's evaluate_rank then asserts "all query identities do not appear in gallery", which misleads
    if num_query > 0 and num_gallery > 0:
        return
    which = " and ".join(name for name, n in (("query", num_query), ("gallery", num_gallery)) if n <= 0)
    dataset = f"{dataset_name}'s" if dataset_name else "the evaluated data set's"
    raise EmptyEvaluationSetError(
        f"Cannot evaluate: {dataset} {which} set is empty ({num_query} query and {num_gallery} gallery images). "
        "Check its query / gallery folders, or the num_query passed with a custom test set (DATASETS.TESTS).")


class ReidEvaluator(FastreidReidEvaluator):
    """``ReidEvaluator(cfg, num_query, output_dir=None)``, a drop-in for fastreid's.

    ``knn`` picks the re-ranking's neighbour search: "auto" (faiss-gpu when CUDA and faiss-gpu are
    there, else torch on the GPU when CUDA is there, else the CPU blocked search), "gemm", "torch",
    "faiss" (faiss-cpu, fastreid's own search) or "faiss-gpu"; see :mod:`mdpr_plugin.evaluation.knn`.
    """

    def __init__(self, cfg, num_query, output_dir=None, knn="auto"):
        super().__init__(cfg, num_query, output_dir)
        check_metric(cfg.TEST.METRIC)
        self.knn = knn

    def _compile_dependencies(self):
        """Nothing: fastreid compiles its Cython ranking here and exits the process when that fails; the
        plugin's ranking gives the same numbers without it."""

    def _gathered_predictions(self):
        """All processes' predictions on the main process (None elsewhere), as fastreid gathers them."""
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            return predictions if comm.is_main_process() else None
        return self._predictions

    def _features(self):
        predictions = self._gathered_predictions()
        if predictions is None:
            return None
        features = torch.cat([p["feats"] for p in predictions], dim=0)
        pids = torch.cat([p["pids"] for p in predictions], dim=0).numpy()
        camids = torch.cat([p["camids"] for p in predictions], dim=0).numpy()
        if comm.get_world_size() == 1:
            # Keep one concatenated copy instead of the per-batch tensors plus the concatenation (two
            # copies of 1.7 GB at MSMT17 size); evaluate() stays repeatable. (With several processes
            # the list must stay this process's own, for the next gather.)
            self._predictions = [{"feats": features, "pids": torch.from_numpy(pids),
                                  "camids": torch.from_numpy(camids)}]
        return features, pids, camids

    def distance(self, query_features, gallery_features):
        """The (num_query, num_gallery) distance the metrics are computed on, as fastreid's evaluator."""
        test = self.cfg.TEST
        if test.AQE.ENABLED:
            logger.info("Test with AQE setting")
            query_features, gallery_features = aqe(query_features, gallery_features,
                                                   test.AQE.QE_TIME, test.AQE.QE_K, test.AQE.ALPHA)
        if test.RERANK.ENABLED:
            logger.info("Test with rerank setting")
            return rerank_distance(query_features, gallery_features, test.METRIC, test.RERANK.K1,
                                   test.RERANK.K2, test.RERANK.LAMBDA, knn=self.knn)
        return pairwise_distance(query_features, gallery_features, test.METRIC)

    def evaluate(self):
        gathered = self._features()
        if gathered is None:
            return {}
        features, pids, camids = gathered
        nq = self._num_query
        check_not_empty(nq, len(features) - nq, getattr(self, "dataset_name", None))
        dist = self.distance(features[:nq], features[nq:])
        q_pids, g_pids, q_camids, g_camids = pids[:nq], pids[nq:], camids[:nq], camids[nq:]

        cmc, all_AP, all_INP = evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids)
        self._results = OrderedDict()
        mAP, mINP = np.mean(all_AP), np.mean(all_INP)
        for r in [1, 5, 10]:
            self._results["Rank-{}".format(r)] = cmc[r - 1] * 100
        self._results["mAP"] = mAP * 100
        self._results["mINP"] = mINP * 100
        self._results["metric"] = (mAP + cmc[0]) / 2 * 100

        if self.cfg.TEST.ROC.ENABLED:
            scores, labels = evaluate_roc(dist, q_pids, g_pids, q_camids, g_camids)
            fprs, tprs, _ = metrics.roc_curve(labels, scores)
            for fpr in [1e-4, 1e-3, 1e-2]:
                self._results["TPR@FPR={:.0e}".format(fpr)] = tprs[np.argmin(np.abs(fprs - fpr))]
        return copy.deepcopy(self._results)
