"""The plugin's training-loop subclasses of fastreid's (its hooks: engine/hooks.py).

- :class:`AMPTrainer`: fastreid's ``AMPTrainer`` asserts CUDA (engine/train_loop.py:335) and uses the
  deprecated ``torch.cuda.amp`` names. This one uses ``torch.amp`` on CUDA and, on any other device, warns
  once and trains in float32: CPU float16 autocast is slower than float32 and the loss scaler is CUDA-only.
- :class:`CheckedTrainer` / :class:`CheckedAMPTrainer`: every loss term checked on every process after
  ``backward`` and before ``optimizer.step``. fastreid checks only the sum, on the main process
  (train_loop.py:293), and names neither the term nor a fix. A non-finite term stops the run there, so
  the weights never take the step and no checkpoint is written after it (the checkpointer saves only
  after a completed epoch).
"""
import logging
import math
import time

import torch
from fastreid.engine.train_loop import SimpleTrainer
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..devices import model_device
from ..errors import MDPRError
from ..resources import resource_failures_explained

logger = logging.getLogger(__name__)


class NonFiniteLossError(MDPRError, FloatingPointError):
    """A loss term became NaN or infinite (a FloatingPointError, as fastreid's own check raises)."""


# after a non-finite loss (here) or non-finite weights (engine/hooks.py)
NON_FINITE_FIXES = ("Usual fixes: lower SOLVER.BASE_LR, set SOLVER.CLIP_GRADIENTS.ENABLED True, or disable AMP "
                    "(SOLVER.AMP.ENABLED False), then continue from the last checkpoint with --resume (which takes "
                    "them from the config), or restart; a longer warm-up (SOLVER.WARMUP_ITERS) needs a restart.")


class AMPTrainer(SimpleTrainer):
    """fastreid's SimpleTrainer step under ``torch.autocast`` with a gradient scaler (CUDA only)."""

    def __init__(self, model, data_loader, optimizer, param_wrapper, grad_scaler=None):
        unsupported = "AMPTrainer does not support single-process multi-device training!"
        if isinstance(model, DistributedDataParallel):
            assert not (model.device_ids and len(model.device_ids) > 1), unsupported
        assert not isinstance(model, DataParallel), unsupported
        super().__init__(model, data_loader, optimizer, param_wrapper)

        self.device_type = model_device(model).type
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
                                         model_device(self.model), self.data_loader.num_workers,
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
                f"OUTPUT_DIR are from before. {NON_FINITE_FIXES}")
        super()._write_metrics({name: torch.tensor(value) for name, value in values.items()}, data_time)


class CheckedAMPTrainer(CheckedTrainer, AMPTrainer):
    """:class:`AMPTrainer` with :class:`CheckedTrainer`'s loss check."""
