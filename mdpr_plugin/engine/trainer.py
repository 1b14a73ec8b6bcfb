"""The plugin's trainer: fastreid's ``DefaultTrainer``, every difference made through its extension points.

``Trainer`` overrides the ``build_*`` class methods (model on an available device, an optimizer on the
parameters themselves, checked CPU-capable loaders, the plugin's evaluator) and restates ``__init__``
where fastreid hard-codes its choices: DDP that also takes a CPU model, loss-checking ``SimpleTrainer`` /
``AMPTrainer`` subclasses that run without CUDA, and the :class:`MDPRCheckpointer`. fastreid itself is
left as it is.

It also makes training reproducible and exactly resumable (see mdpr_plugin/data/samplers.py): ``SEED``
seeds the initialisation, the sampler stream and each sample's augmentation; the sampler's seed is
checkpointed; ``--resume`` continues the stream where the checkpoint was written, and the global
generators are re-seeded from (seed, iteration, rank) before every step.
"""
import logging
from collections import OrderedDict

import numpy as np
import torch
import fastreid.modeling
import fastreid.solver
from fastreid.engine import DefaultTrainer, default_setup, hooks
from fastreid.engine.train_loop import HookBase, TrainerBase
from fastreid.evaluation import print_csv_format
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from ..config import build_config
from ..data import test_loader, test_loader_parts, train_loader, train_loader_parts
from ..data.samplers import ResumableSampler, SeededDataset, seed_all
from ..devices import on_available_device, resolve_device
from ..evaluation import ReidEvaluator, inference_on_dataset
from .checkpointer import MDPRCheckpointer
from .distributed import broadcast_buffers, check_batch_sizes, distributed_data_parallel, setup_worker_logging
from .train_loop import CheckedAMPTrainer, CheckedTrainer, EvalHook, PeriodicCheckpointer

logger = logging.getLogger(__name__)


def build_model(cfg):
    """fastreid's ``build_model(cfg)`` on the device ``MODEL.DEVICE`` resolves to here (the CPU, with one
    warning, when it names CUDA and there is none: fastreid's would fail, modeling/meta_arch/build.py:25)."""
    return fastreid.modeling.build_model(on_available_device(cfg))


def setup_config(args):
    """fastreid defaults + the MDPR keys + the YAML file + ``KEY VALUE`` overrides, then fastreid's setup
    (on rank 0; other processes write no files) and the seed."""
    cfg = build_config(args.config_file, args.opts)
    cfg.freeze()
    rank, world_size = comm.get_rank(), comm.get_world_size()
    check_batch_sizes(cfg, world_size)
    if rank == 0:
        default_setup(cfg, args)
        # default_setup configures fastreid's logger only; the plugin's progress lines need their own
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=0, name="mdpr_plugin")
    else:
        setup_worker_logging(cfg, rank)
        if not args.eval_only:
            torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK  # as default_setup does
    if world_size > 1:
        logger.info("%d processes (%s): SOLVER.IMS_PER_BATCH %d = %d images per process.", world_size,
                    torch.distributed.get_backend(), cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.IMS_PER_BATCH // world_size)
    # default_setup seeds at random; a set SEED makes the initialisation reproducible (+ rank, so that
    # processes differ where they should; DDP copies rank 0's initial weights to all)
    if cfg.SEED >= 0:
        seed_all(cfg.SEED + rank, cuda=True)
    elif rank > 0:
        seed_all_rng()  # what default_setup does on rank 0
    return cfg


class _SeedEachIteration(HookBase):
    """Re-seeds the global generators from (seed, iteration, rank) before every step, so that any
    randomness in the model or the loss (dropout, ...) is the same in a resumed run. (The training
    images are drawn from per-sample seeds, independently of these.)"""

    def before_step(self):
        sequence = np.random.SeedSequence((self.trainer.train_sampler.seed, self.trainer.iter, comm.get_rank()))
        seed = int(sequence.generate_state(1)[0])
        seed_all(seed, cuda=True)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` that runs on CPUs as on GPUs, checks its data and losses, evaluates with the
    plugin's evaluator (bounded memory, CPU re-ranking, a flip test that normalises once) and resumes
    exactly where its checkpoint was written."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, restated: it hard-codes DDP with device_ids, fastreid's AMPTrainer /
        # SimpleTrainer and the Checkpointer
        TrainerBase.__init__(self)
        if not logging.getLogger("fastreid").isEnabledFor(logging.INFO):  # as fastreid: logging not set up yet
            setup_logger()

        data_loader = self.build_train_loader(cfg)
        cfg = self.auto_scale_hyperparams(cfg, data_loader.dataset.num_classes)
        model = self.build_model(cfg)
        optimizer, param_wrapper = self.build_optimizer(cfg, model)
        if comm.get_world_size() > 1:
            model = distributed_data_parallel(model, device_ids=[comm.get_local_rank()], broadcast_buffers=False)
        loop = CheckedAMPTrainer if cfg.SOLVER.AMP.ENABLED else CheckedTrainer
        self._trainer = loop(model, data_loader, optimizer, param_wrapper)

        self.iters_per_epoch = len(data_loader.dataset) // cfg.SOLVER.IMS_PER_BATCH
        self.scheduler = self.build_lr_scheduler(cfg, optimizer, self.iters_per_epoch)
        self.checkpointer = MDPRCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(),
                                             optimizer=optimizer, **self.scheduler)
        self.start_epoch = 0
        self.max_epoch = cfg.SOLVER.MAX_EPOCH
        self.max_iter = self.max_epoch * self.iters_per_epoch
        self.warmup_iters = cfg.SOLVER.WARMUP_ITERS
        self.delay_epochs = cfg.SOLVER.DELAY_EPOCHS
        self.cfg = cfg

        self.train_sampler = data_loader.batch_sampler.sampler
        # the sampler's seed (drawn at random when SEED is -1) goes into every checkpoint, as does the
        # AMP loss scale (fastreid checkpoints neither)
        self.checkpointer.checkpointables["train_sampler"] = self.train_sampler
        grad_scaler = getattr(self._trainer, "grad_scaler", None)
        if grad_scaler is not None and grad_scaler.is_enabled():
            self.checkpointer.checkpointables["grad_scaler"] = grad_scaler

        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        seed = self.train_sampler.seed
        super().resume_or_load(resume=resume)
        start_iter = self.start_epoch * self.iters_per_epoch
        if comm.get_world_size() > 1:
            # each process reads OUTPUT_DIR itself; machines that do not share it would diverge silently
            epochs = comm.all_gather(self.start_epoch)
            if len(set(epochs)) > 1:
                raise RuntimeError(
                    f"The processes resumed from different checkpoints in OUTPUT_DIR {self.cfg.OUTPUT_DIR} (start "
                    f"epoch by rank: {epochs}). Every machine must see the same OUTPUT_DIR (shared storage), or "
                    "have a copy of its last_checkpoint and the checkpoint file it names.")
        if not start_iter:
            return
        if self.train_sampler.seed != seed and self.cfg.SEED >= 0:
            logger.warning("SEED is %d but the checkpoint was trained with seed %d: continuing with %d.",
                           self.cfg.SEED, self.train_sampler.seed, self.train_sampler.seed)
        # fastreid's sampler would start its stream again from the beginning: skip what was consumed
        world_size = comm.get_world_size()
        per_iteration = self.cfg.SOLVER.IMS_PER_BATCH // world_size * world_size
        self.train_sampler.start_position = start_iter * per_iteration
        self._trainer._data_loader_iter = iter(self._trainer.data_loader)
        logger.info("Resuming the training data stream (seed %d) at iteration %d (epoch %d).",
                    self.train_sampler.seed, start_iter, self.start_epoch)
        if self.cfg.INPUT.RPT.ENABLED:
            logger.warning("INPUT.RPT (RandomPatch) pastes patches from a pool of earlier images, which is not "
                           "checkpointed: the resumed run starts with an empty pool, so it is not identical to "
                           "an uninterrupted one (everything else is).")

    def build_hooks(self):
        """fastreid's hooks, with the plugin's :class:`EvalHook` and :class:`PeriodicCheckpointer`, after a
        hook that re-seeds every step."""
        built = [_SeedEachIteration()]
        for hook in super().build_hooks():
            if type(hook) is hooks.EvalHook:
                hook = EvalHook(hook._period, hook._func)
            elif type(hook) is hooks.PeriodicCheckpointer:
                hook = PeriodicCheckpointer(hook.checkpointer, hook.period)
            built.append(hook)
        return built

    @classmethod
    def build_model(cls, cfg):
        """fastreid's model on an available device, then the speed switches MODEL.CHANNELS_LAST and
        MODEL.COMPILE."""
        model = build_model(cfg)
        logging.getLogger("fastreid.engine.defaults").info("Model:\n{}".format(model))  # as fastreid logs it
        if cfg.MODEL.CHANNELS_LAST:
            # the weights in NHWC; the convolutions then run NHWC whatever the input's layout
            model.to(memory_format=torch.channels_last)
        if cfg.MODEL.COMPILE:
            # in place (nn.Module.compile), so checkpoints keep the eager model's state-dict keys
            model.compile()
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """fastreid's optimizer, on the parameters themselves rather than fastreid's contiguous buffer.

        fastreid flattens all parameters into one buffer (solver/build.py:192) whose gradients are views
        the optimizer reads. torch >= 2.0's ``zero_grad()`` sets gradients to None, so ``backward()`` writes
        fresh tensors outside that buffer and the optimizer steps on zeros: nothing trains, silently.
        torch's multi-tensor (foreach) optimizers give the speed the buffer was for.
        """
        return fastreid.solver.build_optimizer(cfg, model, contiguous=False)

    @classmethod
    def build_train_loader(cls, cfg):
        """The training loader from fastreid's builder (:func:`mdpr_plugin.data.train_loader_parts`), its
        sampler wrapped in a :class:`ResumableSampler` seeded from ``SEED`` and its dataset in a
        :class:`SeededDataset` (per-sample augmentation seeds); batches arrive on ``MODEL.DEVICE``."""
        logger.info("Prepare training set")
        parts = train_loader_parts(cfg, combineall=cfg.DATASETS.COMBINEALL)
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        parts["sampler"] = ResumableSampler(parts["sampler"], seed, comm.get_rank(), comm.get_world_size())
        parts["train_set"] = SeededDataset(parts["train_set"])
        return train_loader(**parts, device=resolve_device(cfg.MODEL.DEVICE))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """``(loader, num_query)`` from fastreid's builder (:func:`mdpr_plugin.data.test_loader_parts`), with
        ``DATALOADER.NUM_WORKERS`` workers (fastreid hard-codes 4, data/build.py:130); batches arrive on
        ``MODEL.DEVICE``."""
        parts = test_loader_parts(cfg, dataset_name)
        return test_loader(**parts, num_workers=cfg.DATALOADER.NUM_WORKERS, device=resolve_device(cfg.MODEL.DEVICE))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        evaluator = ReidEvaluator(cfg, num_query, output_dir)
        evaluator.dataset_name = dataset_name  # named by its error for an empty query / gallery set
        return data_loader, evaluator

    @classmethod
    def test(cls, cfg, model):
        """Evaluate on every ``DATASETS.TESTS`` set; same results layout and printout as fastreid's."""
        # every process evaluates its shard of the test set with rank 0's BatchNorm statistics
        broadcast_buffers(model)
        results = OrderedDict()
        for dataset_name in cfg.DATASETS.TESTS:
            logger.info("Prepare testing set")
            data_loader, evaluator = cls.build_evaluator(cfg, dataset_name)
            results[dataset_name] = inference_on_dataset(model, data_loader, evaluator,
                                                         flip_test=cfg.TEST.FLIP.ENABLED)
            if comm.is_main_process():
                logger.info("Evaluation results for {} in csv format:".format(dataset_name))
                results[dataset_name]["dataset"] = dataset_name
                print_csv_format(results[dataset_name])
        return next(iter(results.values())) if len(results) == 1 else results
