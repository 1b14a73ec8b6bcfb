"""The plugin's training hooks: subclasses of fastreid's and hooks of its own.

- :class:`EvalHook`: fastreid's, but no evaluation after a run stopped by an error in its last epoch
  (fastreid's guard, engine/hooks.py:382, misses that case and evaluates the failed model).
- :class:`PeriodicCheckpointer` / :class:`BestCheckpointer`: fastreid's hook split in two, so that the epoch's
  checkpoint is written before its evaluation and ``model_best`` after it; no weights that hold NaN or
  infinite values are saved (a step can leave them behind a finite loss, which is computed before the step).
- :class:`StopIfNotLearning`: stops a run whose trainable parameters do not change (frozen, a learning rate of
  0, an optimizer stepping on copies), which fastreid would train to the end with exit status 0.
- :class:`SeedEachIteration`: the global generators re-seeded before every step, for an exactly resumable run.
"""
import logging
import os

import numpy as np
import torch
from fastreid.engine import hooks as fastreid_hooks
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..data.samplers import seed_all
from ..errors import MDPRError
from .train_loop import NON_FINITE_FIXES

logger = logging.getLogger(__name__)


class NonFiniteWeightsError(MDPRError, FloatingPointError):
    """The model holds NaN or infinite values where a checkpoint was to be written."""


class EvalHook(fastreid_hooks.EvalHook):
    """fastreid's ``EvalHook``, skipping the final evaluation when training stopped before its last iteration
    (fastreid's then evaluates the failed model: 7 s on the demo, an hour on MSMT17, and prints a results
    table under the error as if the run had finished)."""

    def after_train(self):
        max_iter = getattr(self.trainer, "max_iter", None)
        if max_iter is not None and self.trainer.iter < max_iter:
            del self._func  # as fastreid does: the closure holds the trainer
            return
        super().after_train()


def non_finite_tensors(model):
    """Names of the model's parameters and buffers holding NaN or infinite values (one host sync)."""
    tensors = [(name, t) for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_floating_point()]
    if not tensors:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist()
    return [name for (name, _), ok in zip(tensors, finite) if not ok]


class PeriodicCheckpointer(fastreid_hooks.PeriodicCheckpointer):
    """fastreid's ``PeriodicCheckpointer`` hook writing ``model_<epoch>`` / ``model_final`` only, and refusing
    to save a model with non-finite weights. The plugin's trainer runs it before the epoch's evaluation, so
    that an evaluation that fails never costs the checkpoint; :class:`BestCheckpointer` runs after it.

    The weights are checked only at the epochs that save (once per SOLVER.CHECKPOINT_PERIOD).
    """

    def _saves_at(self, epoch):
        return (epoch + 1) % self.period == 0 or epoch >= self.max_epoch - 1

    def _latest_metric(self):
        latest = self.trainer.storage.latest()
        return latest[self.metric_name][0] if self.metric_name in latest else -1

    def after_epoch(self):
        epoch = self.trainer.epoch
        if not self._saves_at(epoch):
            return
        bad = non_finite_tensors(self.checkpointer.model)
        if bad:
            raise NonFiniteWeightsError(
                f"Not saving the checkpoint of epoch {epoch} (after {self.trainer.iter} iterations): {len(bad)} "
                f"weight tensors hold NaN or infinite values ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); the checkpoints in OUTPUT_DIR are from before. "
                f"{NON_FINITE_FIXES}")
        name = "model_final" if epoch >= self.max_epoch - 1 else f"model_{epoch:04d}"
        self.checkpointer.save(name, epoch=epoch, metric=self._latest_metric())


class BestCheckpointer(PeriodicCheckpointer):
    """``model_best``: at the epochs that save, after the epoch's evaluation, when its metric is the best seen
    by this process (as fastreid's hook chooses it). ``last_checkpoint`` keeps naming the epoch's checkpoint."""

    def after_epoch(self):
        epoch, metric = self.trainer.epoch, self._latest_metric()
        if not self._saves_at(epoch) or metric <= self.best_metric:
            return
        last = self.checkpointer.get_checkpoint_file()
        self.checkpointer.save("model_best", epoch=epoch, metric=metric)
        self.best_metric = metric
        if last:
            self.checkpointer.tag_last_checkpoint(os.path.basename(last))


class NotLearningError(MDPRError, RuntimeError):
    """No trainable parameter changed over the first iterations of a run."""


class StopIfNotLearning(HookBase):
    """Stops training when none of the model's trainable parameters has changed after ``patience`` iterations
    (or at the end of a shorter run).

    A few elements of every trainable parameter of the model the trainer runs are kept before the first step and
    compared after each step (one host sync per step) until one differs; from then on the hook does nothing.
    Everything frozen, a learning rate of 0, or an optimizer stepping on copies of the parameters (fastreid's
    contiguous parameter buffer on torch 2) show as no change at all. ``patience`` leaves room for the first
    steps AMP's gradient scaler skips while it finds its scale.

    The plugin's trainer runs it; a stock fastreid ``DefaultTrainer`` takes it with
    ``trainer.register_hooks([StopIfNotLearning()])``.
    """

    def __init__(self, patience=20, samples_per_tensor=4):
        self.patience = patience
        self.samples_per_tensor = samples_per_tensor
        self._watched = None

    def before_train(self):
        model = self.trainer.model
        model = model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model
        trainable = [p for p in model.parameters() if p.requires_grad and p.numel()]
        if not trainable:
            raise NotLearningError(
                f"Training stopped before it started: the model has no trainable parameter (every parameter has "
                f"requires_grad False). {self.causes()}")
        generator = np.random.default_rng(0)
        self._watched = []
        for p in trainable:
            flat = generator.choice(p.numel(), min(self.samples_per_tensor, p.numel()), replace=False)
            index = tuple(torch.as_tensor(i, device=p.device) for i in np.unravel_index(flat, p.shape))
            self._watched.append((p, index, p.detach()[index].clone()))
        self._first_iter = self.trainer.iter

    def after_step(self):
        if not self._watched:
            return
        changed = torch.stack([(p.detach()[index] != before).any() for p, index, before in self._watched])
        if changed.any().item():
            self._watched = None  # learning: nothing more to check
            return
        steps = self.trainer.iter - self._first_iter + 1
        last = self.trainer.iter >= getattr(self.trainer, "max_iter", float("inf")) - 1
        if steps < self.patience and not last:
            return
        scaler = getattr(self.trainer, "grad_scaler", None)
        if steps < self.patience and scaler is not None and scaler.is_enabled():
            # a short AMP run may end inside the steps the gradient scaler skips
            logger.warning("No trainable parameter changed in this %d-iteration AMP run (the gradient scaler may "
                           "have skipped every step). %s", steps, self.causes())
            return
        raise NotLearningError(
            f"Training stopped at iteration {self.trainer.iter}: none of the {len(self._watched)} trainable "
            f"parameters changed over {steps} iterations. {self.causes()}")

    @staticmethod
    def causes():
        return ("Likely causes: every parameter frozen (requires_grad False, or MODEL.FREEZE_LAYERS covering the "
                "whole model for SOLVER.FREEZE_ITERS); a learning rate of 0 or too small to change float32 weights "
                "(SOLVER.BASE_LR, the LR factors, the warm-up); or an optimizer holding copies of the parameters, as "
                "fastreid's build_optimizer does on torch 2 with its contiguous buffer (the plugin's trainer and "
                "patch_fastreid() build it on the parameters).")


class SeedEachIteration(HookBase):
    """Re-seeds the global generators from (seed, iteration, rank) before every step, so that any
    randomness in the model or the loss (dropout, ...) is the same in a resumed run. (The training
    images are drawn from per-sample seeds, independently of these.)"""

    def before_step(self):
        sequence = np.random.SeedSequence((self.trainer.train_sampler.seed, self.trainer.iter, comm.get_rank()))
        seed = int(sequence.generate_state(1)[0])
        seed_all(seed, cuda=True)
