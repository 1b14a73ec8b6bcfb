"""A device-aware replacement for fastreid's ``AMPTrainer``.

fastreid's ``AMPTrainer`` asserts CUDA (engine/train_loop.py:335) and uses the deprecated
``torch.cuda.amp`` names. This one uses ``torch.amp`` on CUDA and, on any other device, warns once and
trains in float32: CPU float16 autocast is slower than float32 and the loss scaler is CUDA-only.
"""
import logging
import time

import torch
from fastreid.engine.train_loop import SimpleTrainer
from fastreid.utils.params import ContiguousParams
from torch.nn.parallel import DataParallel, DistributedDataParallel

logger = logging.getLogger(__name__)


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
        if isinstance(self.param_wrapper, ContiguousParams):
            self.param_wrapper.assert_buffer_is_valid()
