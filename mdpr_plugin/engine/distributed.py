"""What fastreid's engine needs to train over several processes, on GPUs and on CPUs.

- DDP: fastreid builds ``DistributedDataParallel(model, device_ids=[local_rank])``
  (engine/defaults.py:210); DDP refuses ``device_ids`` for a CPU model.
- SyncBN (``MODEL.BACKBONE.NORM`` / ``MODEL.HEADS.NORM`` "syncBN"): torch's SyncBatchNorm synchronises
  only CUDA tensors (its statistics kernels are CUDA-only) and raises for CPU inputs under a process
  group. On CPUs the layers are turned back into BatchNorm, with a warning: CPU multi-process runs are
  for running and testing the pipeline, and per-process BatchNorm is what DDP does with plain BN.
- BatchNorm statistics: fastreid's DDP does not broadcast buffers (``broadcast_buffers=False``), so the
  processes' running means and variances drift apart while parameters stay equal. Before evaluating,
  rank 0's buffers are copied to every process, so the features of every shard come from the model
  rank 0 saves in its checkpoint.
- Batch sizes: ``SOLVER.IMS_PER_BATCH`` and ``TEST.IMS_PER_BATCH`` are totals over all processes,
  split by fastreid with an integer division that silently drops the remainder (data/build.py:47,85,147).
"""
import inspect
import logging
import sys

import torch
import torch.distributed as dist
from fastreid.layers.batch_norm import BatchNorm
from fastreid.utils import comm
from fastreid.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.checks import IDENTITY_SAMPLERS, batch_that_fits, triplet_loss_used
from ..errors import InputError

logger = logging.getLogger(__name__)


def _device_of(module):
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def sync_batchnorm_to_batchnorm(module):
    """Replace every ``nn.SyncBatchNorm`` in ``module`` by a BatchNorm with the same state and the same parameter
    objects (the optimizer, built before DDP wraps the model, holds those); returns the number replaced."""
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = BatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                           weight_init=None, bias_init=None)
            bn.load_state_dict(child.state_dict())
            bn.weight, bn.bias = child.weight, child.bias
            bn.to(child.weight.device).train(child.training)
            setattr(module, name, bn)
            replaced += 1
        else:
            replaced += sync_batchnorm_to_batchnorm(child)
    return replaced


def distributed_data_parallel(module, device_ids=None, **kwargs):
    """``DistributedDataParallel`` as fastreid calls it, for GPU and CPU models."""
    if _device_of(module).type != "cuda":
        replaced = sync_batchnorm_to_batchnorm(module)
        if replaced:
            logger.warning(
                "MODEL.BACKBONE.NORM / MODEL.HEADS.NORM is syncBN but the model trains on the CPU: torch's "
                "SyncBatchNorm runs on CUDA only. Using per-process BatchNorm for its %d layers instead "
                "(statistics over this process's SOLVER.IMS_PER_BATCH / %d images).",
                replaced, comm.get_world_size())
        device_ids = None  # DDP takes no device_ids for CPU modules
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    if "broadcast_buffers" in kwargs and renamed:
        # recent torch deprecates the name fastreid passes; the new flag has the same per-step meaning and
        # also copies rank 0's buffers once at start, which fastreid's processes could only gain from
        kwargs["forward_sync_buffers"] = kwargs.pop("broadcast_buffers")
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


def broadcast_buffers(model):
    """Copy rank 0's buffers (BatchNorm statistics) to every process."""
    if comm.get_world_size() == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def check_batch_sizes(cfg, world_size):
    """Refuse batch sizes fastreid would split unevenly over ``world_size`` processes, and per-process batches an
    identity sampler cannot fill with whole identities (its loader would wait forever); the suggestion given
    passes both and :func:`mdpr_plugin.data.checks.check_batch_composition` (two or more identities per batch)."""
    total = cfg.SOLVER.IMS_PER_BATCH
    instances = cfg.DATALOADER.NUM_INSTANCE if cfg.DATALOADER.SAMPLER_TRAIN in IDENTITY_SAMPLERS else 1
    step = world_size * instances
    if total % step:
        suggestion, fitting_instances = batch_that_fits(cfg.DATALOADER.SAMPLER_TRAIN, total, instances, world_size,
                                                        triplet_loss_used(cfg))
        processes = f" over {world_size} processes" if world_size > 1 else ""
        if total % world_size:
            problem = (f"SOLVER.IMS_PER_BATCH {total} is the total{processes} and must be divisible by {world_size} "
                       "(fastreid would drop the remainder)")
        else:
            per_process = (f"{processes} gives {total // world_size} images per process, which is"
                           if world_size > 1 else " is")
            problem = (f"SOLVER.IMS_PER_BATCH {total}{per_process} not a multiple of DATALOADER.NUM_INSTANCE "
                       f"{instances}: {cfg.DATALOADER.SAMPLER_TRAIN} takes whole identities, and its loader would "
                       "wait forever for the rest")
        with_instances = (f" and DATALOADER.NUM_INSTANCE {fitting_instances} (a triplet loss needs two images of each "
                          "identity in a batch)" if fitting_instances != instances else "")
        raise InputError(f"{problem}. Use a multiple of {step}, e.g. SOLVER.IMS_PER_BATCH {suggestion}{with_instances}.")
    if cfg.TEST.IMS_PER_BATCH < world_size:
        raise InputError(f"TEST.IMS_PER_BATCH {cfg.TEST.IMS_PER_BATCH} is the total over {world_size} processes; "
                         f"it must be at least {world_size}.")


def setup_worker_logging(cfg, rank):
    """Logging of a process other than rank 0: no files (rank 0 writes the logs), warnings and errors to
    stderr, prefixed with the rank. fastreid's ``setup_logger`` would write ``log.txt.rank<N>``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(name)s %(levelname)s: %(message)s"))
    for name in ("fastreid", "__main__"):  # the plugin's loggers write through fastreid's (mdpr_plugin.logs)
        setup_logger(None, distributed_rank=rank, name=name).addHandler(handler)
