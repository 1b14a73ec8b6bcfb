"""The plugin's training-loop and hook subclasses of fastreid's.

- :class:`AMPTrainer`: fastreid's ``AMPTrainer`` asserts CUDA (engine/train_loop.py:335) and uses the
  deprecated ``torch.cuda.amp`` names. This one uses ``torch.amp`` on CUDA and, on any other device, warns
  once and trains in float32: CPU float16 autocast is slower than float32 and the loss scaler is CUDA-only.
- :class:`CheckedTrainer` / :class:`CheckedAMPTrainer`: every loss term checked on every process after
  ``backward`` and before ``optimizer.step``. fastreid checks only the sum, on the main process
  (train_loop.py:293), and names neither the term nor a fix. A non-finite term stops the run there, so
  the weights never take the step and no checkpoint is written after it (the checkpointer saves only
  after a completed epoch).
- :class:`EvalHook`: fastreid's, but no evaluation after a run stopped by an error in its last epoch
  (fastreid's guard, engine/hooks.py:382, misses that case and evaluates the failed model).
- :class:`PeriodicCheckpointer` / :class:`BestCheckpointer`: fastreid's hook split in two, so that the epoch's
  checkpoint is written before its evaluation and ``model_best`` after it; no weights that hold NaN or
  infinite values are saved (a step can leave them behind a finite loss, which is computed before the step).
- :class:`MetricPrinter`: fastreid's progress printer, without its division by zero in short runs.
- :class:`StopIfNotLearning`: stops a run whose trainable parameters do not change (frozen, a learning rate of
  0, an optimizer stepping on copies), which fastreid would train to the end with exit status 0.
"""
import logging
import math
import os
import time

import numpy as np
import torch
from fastreid.engine import hooks
from fastreid.utils.events import CommonMetricPrinter, get_event_storage
from fastreid.engine.train_loop import HookBase, SimpleTrainer
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..errors import MDPRError
from ..resources import resource_failures_explained

logger = logging.getLogger(__name__)


class NonFiniteLossError(MDPRError, FloatingPointError):
    """A loss term became NaN or infinite (a FloatingPointError, as fastreid's own check raises)."""


class NonFiniteWeightsError(MDPRError, FloatingPointError):
    """The model holds NaN or infinite values where a checkpoint was to be written."""


_FIXES = ("Usual fixes: lower SOLVER.BASE_LR, set SOLVER.CLIP_GRADIENTS.ENABLED True, or disable AMP "
          "(SOLVER.AMP.ENABLED False), then continue from the last checkpoint with --resume (which takes them from "
          "the config), or restart; a longer warm-up (SOLVER.WARMUP_ITERS) needs a restart.")


def _model_device(model):
    return next(model.parameters()).device


class AMPTrainer(SimpleTrainer):
    """fastreid's SimpleTrainer step under ``torch.autocast`` with a gradient scaler (CUDA only)."""

    def __init__(self, model, data_loader, optimizer, param_wrapper, grad_scaler=None):
        unsupported = "AMPTrainer does not support single-process multi-device training!"
        if isinstance(model, DistributedDataParallel):
            assert not (model.device_ids and len(model.device_ids) > 1), unsupported
        assert not isinstance(model, DataParallel), unsupported
        super().__init__(model, data_loader, optimizer, param_wrapper)

        self.device_type = _model_device(model).type
        self.amp_enabled = self.device_type == "cuda"
        if not self.amp_enabled:
            logger.warning(
                "SOLVER.AMP.ENABLED is True but the model is on %s: AMP needs CUDA, "
                "training in float32 instead.", self.device_type)
        self.grad_scaler = grad_scaler or torch.amp.GradScaler("cuda", enabled=self.amp_enabled)

    def run_step(self):
        assert self.model.training, "[AMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device_type, enabled=self.amp_enabled):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()


class CheckedTrainer(SimpleTrainer):
    """fastreid's ``SimpleTrainer`` whose ``_write_metrics`` first checks every loss term on this process, and whose
    step reports running out of memory or of a loader's resources in one line."""

    def run_step(self):
        with resource_failures_explained("a training step", "SOLVER.IMS_PER_BATCH or INPUT.SIZE_TRAIN",
                                         _model_device(self.model), self.data_loader.num_workers,
                                         after="; the checkpoints written before are intact"):
            super().run_step()

    def _write_metrics(self, loss_dict, data_time):
        # The values are read to the host once, as fastreid reads them anyway (no extra sync per step);
        # fastreid's gathering and logging then runs on those host values.
        device = next(iter(loss_dict.values())).device
        # a side stream, as fastreid's: reading the values need not wait for backward or DDP
        with torch.cuda.stream(torch.cuda.Stream() if device.type == "cuda" else None):
            values = {name: value.detach().cpu().item() for name, value in loss_dict.items()}
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        if bad:
            terms = ", ".join(f"{name} = {value}" for name, value in bad.items())
            raise NonFiniteLossError(
                f"Training stopped at iteration {self.iter}: loss term(s) {terms} (all terms: {values}). The "
                "weights did not take this step and no checkpoint was written after it; the checkpoints in "
                f"OUTPUT_DIR are from before. {_FIXES}")
        super()._write_metrics({name: torch.tensor(value) for name, value in values.items()}, data_time)


class CheckedAMPTrainer(CheckedTrainer, AMPTrainer):
    """:class:`AMPTrainer` with :class:`CheckedTrainer`'s loss check."""


class EvalHook(hooks.EvalHook):
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


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
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
                f"{', ...' if len(bad) > 3 else ''}); the checkpoints in OUTPUT_DIR are from before. {_FIXES}")
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


class MetricPrinter(CommonMetricPrinter):
    """fastreid's progress printer, writing at most once per iteration: a second write at the same iteration
    (a run of three or fewer iterations ends that way) divides by zero in fastreid's ETA estimate."""

    def write(self):
        if self._last_write is not None and self._last_write[0] == get_event_storage().iter:
            return
        super().write()


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
