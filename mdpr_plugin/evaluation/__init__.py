"""Evaluation at benchmark scale: fastreid's metrics, bounded memory, re-ranking on the CPU.

For the trainer: ``ReidEvaluator(cfg, num_query, output_dir)`` (fastreid's constructor) from
``build_evaluator``, and ``inference_on_dataset(model, loader, evaluator, flip_test=...)`` from
``test``. The pieces are usable on their own: ``pairwise_distance`` (= fastreid's ``build_dist``),
``evaluate_rank`` / ``evaluate_roc`` (= fastreid's, over blocks of queries), ``rerank_distance``
(fastreid's k-reciprocal re-ranking, sparse) and ``aqe``. A tracker's identity metrics (IDF1, ID switches)
are in ``tracking_metrics``.
"""
from .dataset_inference import inference_on_dataset
from .distance import pairwise_distance
from .evaluator import ReidEvaluator
from .query_expansion import aqe
from .rank import evaluate_rank, evaluate_roc
from .rerank import rerank_distance

__all__ = ["ReidEvaluator", "inference_on_dataset", "pairwise_distance", "evaluate_rank", "evaluate_roc",
           "rerank_distance", "aqe"]
