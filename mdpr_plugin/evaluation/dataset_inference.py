"""fastreid's ``inference_on_dataset`` with a correct flip test and feature-extraction progress.

fastreid (evaluation/evaluator.py:117) runs the model, then flips ``inputs["images"]`` and runs it
again; but fastreid's models normalise ``inputs["images"]`` in place (``Baseline.preprocess_image``:
``images.sub_(mean).div_(std)``), so the flipped pass sees an image normalised twice. Here the
flipped copy is taken from the untouched images before the first pass.
"""
import logging
import time

import torch

from fastreid.evaluation.evaluator import inference_context

from ..devices import model_device
from ..resources import resource_failures_explained
from .progress import Progress

logger = logging.getLogger(__name__)


def _flipped_inputs(inputs):
    # flip() copies, so this copy is unaffected by what the model does to inputs["images"] later.
    flipped = dict(inputs)
    flipped["images"] = inputs["images"].flip(dims=[3])
    return flipped


def inference_on_dataset(model, data_loader, evaluator, flip_test=False, progress_period=5.0):
    """Run ``model`` (in eval mode) over ``data_loader``, feed ``evaluator``, return its results.

    With ``flip_test`` the features are the mean of the model's output on the images and on their
    horizontally flipped copy, each normalised once by the model.
    """
    total = len(data_loader)
    dataset = getattr(data_loader, "dataset", None)
    logger.info("Start inference on %s images%s", len(dataset) if dataset is not None else "?",
                " with flip test" if flip_test else "")
    evaluator.reset()
    progress = Progress("Feature extraction (batches)", total, logger, progress_period)
    compute_time = 0.0
    explained = resource_failures_explained("the evaluation", "TEST.IMS_PER_BATCH or INPUT.SIZE_TEST",
                                            model_device(model), getattr(data_loader, "num_workers", 0))
    with explained, inference_context(model), torch.no_grad():
        for idx, inputs in enumerate(data_loader):
            flipped = _flipped_inputs(inputs) if flip_test else None
            start = time.perf_counter()
            outputs = model(inputs)
            if flip_test:
                outputs = (outputs + model(flipped)) / 2
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - start
            evaluator.process(inputs, outputs)
            progress.update(idx + 1)
    progress.done()
    logger.info("Model compute time: %.1f s (%.4f s / batch)", compute_time, compute_time / max(total, 1))
    with resource_failures_explained("the evaluation's ranking", "the number of query and gallery images (each "
                                     "query is ranked against the whole gallery)"):
        results = evaluator.evaluate()
    return {} if results is None else results
