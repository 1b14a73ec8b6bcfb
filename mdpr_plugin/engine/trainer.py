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
import math
import os
from collections import OrderedDict

import torch
import fastreid.modeling
import fastreid.solver
from fastreid.engine import DefaultTrainer, hooks
from fastreid.engine.train_loop import TrainerBase
from fastreid.evaluation import print_csv_format
from fastreid.utils import comm
from fastreid.utils.events import JSONWriter, TensorboardXWriter
from fastreid.utils.logger import setup_logger

from ..data import test_loader, test_loader_parts, train_loader, train_loader_parts
from ..data.checks import check_rankable_queries
from ..data.samplers import ResumableSampler, SeededDataset
from ..devices import on_available_device, resolve_device
from ..errors import InputError
from ..evaluation import ReidEvaluator, inference_on_dataset
from ..resources import check_model_memory
from .checkpointer import MDPRCheckpointer
from .distributed import broadcast_buffers, distributed_data_parallel
from .hooks import (BestCheckpointer, EvalHook, NotLearningError, PeriodicCheckpointer, SeedEachIteration,
                    StopIfNotLearning)
from .output_dir import recreate_output_dir
from .run_log import plugin_errors_not_logged_by_fastreid
from .train_loop import CheckedAMPTrainer, CheckedTrainer
from .writers import MetricPrinter, OpenedOnFirstWrite

logger = logging.getLogger(__name__)


def build_model(cfg):
    """fastreid's ``build_model(cfg)`` on the device ``MODEL.DEVICE`` resolves to here (the CPU, with one
    warning, when it names CUDA and there is none: fastreid's would fail, modeling/meta_arch/build.py:25), once its
    weights are known to fit there."""
    cfg = on_available_device(cfg)
    check_model_memory(cfg)
    return fastreid.modeling.build_model(cfg)


def use_fused_steps(optimizer):
    """Switch ``optimizer`` to torch's fused implementation where it has one (a no-op otherwise).

    fastreid builds the optimizer without options and one parameter group per parameter; the groups'
    "fused" flag is what the step reads (and what a loaded optimizer state sets back, hence a function).
    """
    if "fused" not in optimizer.defaults:
        return
    optimizer.defaults.update(fused=True, foreach=False)
    for group in optimizer.param_groups:
        group.update(fused=True, foreach=False)


# a scheduler's state that records how far it got, not what the schedule is (base_lrs: see resume_or_load)
_PROGRESS = {"last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step", "verbose",
             "base_lrs"}


def _rounded(values):
    return sorted({float(f"{v:.4g}") for v in values})


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
        self.check_test_sets(cfg)  # before the first iteration, not at the first evaluation hours later
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
                                             allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS, optimizer=optimizer,
                                             **self.scheduler)
        self.checkpointer.on_folder_recreated = lambda: recreate_output_dir(cfg)
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
        """fastreid's, then: the learning rates of this config (a resumed run takes SOLVER.BASE_LR and the LR
        factors from the config, not from the checkpoint), a schedule the config would change refused, and the
        training data stream continued where the checkpoint was written."""
        seed = self.train_sampler.seed
        configured = {name: scheduler.state_dict() for name, scheduler in self.scheduler.items()}
        super().resume_or_load(resume=resume)
        if resume and self.start_epoch > 0:
            self._follow_configured_schedule(configured)
        if self.cfg.SOLVER.FUSED:
            use_fused_steps(self.optimizer)  # a checkpoint's optimizer state brings its own flags
        start_iter = self.start_epoch * self.iters_per_epoch
        if comm.get_world_size() > 1:
            # each process reads OUTPUT_DIR itself; machines that do not share it would diverge silently
            epochs = comm.all_gather(self.start_epoch)
            if len(set(epochs)) > 1:
                raise InputError(
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

    def _follow_configured_schedule(self, configured):
        """After loading a checkpoint's schedulers and optimizer: refuse a schedule this config changes, and
        put the config's learning rates in place of the checkpoint's (scaling the current ones alike)."""
        changed = []
        for name, scheduler in self.scheduler.items():
            loaded = scheduler.state_dict()
            for key in sorted(set(loaded) | set(configured[name])):
                if key not in _PROGRESS and loaded.get(key) != configured[name].get(key):
                    changed.append(f"{name}.{key} {loaded.get(key)} in the checkpoint, {configured[name].get(key)} "
                                   "in this config")
        if changed:
            raise InputError(
                f"--resume continues the learning-rate schedule of the run in OUTPUT_DIR {self.cfg.OUTPUT_DIR}, but "
                f"this config changes it: {'; '.join(changed)} (set by SOLVER.SCHED, SOLVER.MAX_EPOCH, "
                "SOLVER.STEPS, SOLVER.GAMMA, SOLVER.ETA_MIN_LR, SOLVER.DELAY_EPOCHS and SOLVER.WARMUP_*). Set those "
                "keys back to the run's values (its config.yaml has them), or start a new run from the checkpoint: "
                "MODEL.WEIGHTS <checkpoint> in another OUTPUT_DIR, without --resume.")
        loaded_lrs = self.scheduler["lr_sched"].base_lrs
        configured_lrs = configured["lr_sched"]["base_lrs"]
        if list(loaded_lrs) == list(configured_lrs):
            return
        for scheduler in self.scheduler.values():
            scheduler.base_lrs = list(configured_lrs)
        for group, new, old in zip(self.optimizer.param_groups, configured_lrs, loaded_lrs):
            group["lr"] *= new / old
            group["initial_lr"] = new
        logger.info("Learning rates from this config, not the checkpoint's: SOLVER.BASE_LR and the LR factors give "
                    "%s (the checkpoint had %s); the schedule continues from there.", _rounded(configured_lrs),
                    _rounded(loaded_lrs))

    def train(self):
        """fastreid's training; a resumed run with nothing left to train says so and makes sure model_final is
        there (a kill while it was written leaves the checkpoint before it)."""
        if self.start_epoch < self.max_epoch:
            with plugin_errors_not_logged_by_fastreid():
                return super().train()
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        # epochs counted as SOLVER.MAX_EPOCH counts them, from 1 (fastreid numbers them from 0)
        logger.info("OUTPUT_DIR %s holds a finished run (its checkpoint ends epoch %d of SOLVER.MAX_EPOCH %d): "
                    "nothing left to train.", self.cfg.OUTPUT_DIR, self.start_epoch, self.max_epoch)
        if comm.is_main_process() and not os.path.isfile(final):
            self.checkpointer.save("model_final", epoch=self.start_epoch - 1)
        return {}

    def build_hooks(self):
        """fastreid's hooks with the plugin's subclasses, ordered so that an evaluation never costs a
        checkpoint: the epoch's checkpoint is written before its evaluation, and model_best after it, from
        that evaluation's metric. First, a hook that re-seeds every step and one that stops a run that does not
        learn."""
        before, evaluation, after = [SeedEachIteration(), StopIfNotLearning()], [], []
        for hook in super().build_hooks():
            if type(hook) is hooks.EvalHook:
                evaluation.append(EvalHook(hook._period, hook._func))
            elif type(hook) is hooks.PeriodicCheckpointer:
                before.append(PeriodicCheckpointer(hook.checkpointer, hook.period))
                after.append(BestCheckpointer(hook.checkpointer, hook.period))
            else:
                (after if evaluation else before).append(hook)
        return before + evaluation + after

    def build_writers(self):
        """fastreid's writers, with a progress printer that survives runs of three or fewer iterations; the two
        that write files open them at their first write, once training runs."""
        folder, recreated = self.cfg.OUTPUT_DIR, self.checkpointer.on_folder_recreated
        return [MetricPrinter(self.max_iter),
                OpenedOnFirstWrite(folder, "metrics.json", lambda: JSONWriter(os.path.join(folder, "metrics.json")),
                                   recreated),
                OpenedOnFirstWrite(folder, "the TensorBoard events file", lambda: TensorboardXWriter(folder),
                                   recreated)]

    @staticmethod
    def auto_scale_hyperparams(cfg, num_classes):
        """fastreid's: ``MODEL.HEADS.NUM_CLASSES`` from the training set when the config leaves it at 0, but without
        writing config.yaml (fastreid writes it here, before the run's checks: a refused ``--resume`` would leave
        the wrong values in the file its message points to); train_net.py writes it once every check passed."""
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        if cfg.MODEL.HEADS.NUM_CLASSES == 0:
            cfg.MODEL.HEADS.NUM_CLASSES = num_classes
            logging.getLogger("fastreid.engine.defaults").info("Auto-scaling the num_classes=%d", num_classes)
        if frozen:
            cfg.freeze()
        return cfg

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer, iters_per_epoch):
        """fastreid's schedulers; a cosine schedule left with no epoch after the warm-up is refused (fastreid
        divides by zero at the end of training)."""
        warmup_epochs = max(math.ceil(cfg.SOLVER.WARMUP_ITERS / iters_per_epoch), cfg.SOLVER.DELAY_EPOCHS)
        if cfg.SOLVER.SCHED == "CosineAnnealingLR" and cfg.SOLVER.MAX_EPOCH - warmup_epochs < 1:
            raise InputError(
                f"SOLVER.SCHED CosineAnnealingLR anneals over SOLVER.MAX_EPOCH minus the warm-up epochs, and none "
                f"are left: SOLVER.MAX_EPOCH {cfg.SOLVER.MAX_EPOCH}, SOLVER.WARMUP_ITERS {cfg.SOLVER.WARMUP_ITERS} "
                f"({iters_per_epoch} iterations per epoch), SOLVER.DELAY_EPOCHS {cfg.SOLVER.DELAY_EPOCHS}. Raise "
                "SOLVER.MAX_EPOCH or lower SOLVER.WARMUP_ITERS / SOLVER.DELAY_EPOCHS.")
        return super().build_lr_scheduler(cfg, optimizer, iters_per_epoch)

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
        torch's multi-tensor (foreach) optimizers give the speed the buffer was for, and with SOLVER.FUSED (the
        default) its fused ones, faster still here: fastreid gives every parameter its own group.
        """
        if not any(p.requires_grad for p in model.parameters()):  # torch's message would not name the cause
            raise NotLearningError(f"The model has no trainable parameter (every parameter has requires_grad False): "
                                   f"there is nothing to train. {StopIfNotLearning.causes()}")
        optimizer, param_wrapper = fastreid.solver.build_optimizer(cfg, model, contiguous=False)
        if cfg.SOLVER.FUSED:
            use_fused_steps(optimizer)
        return optimizer, param_wrapper

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
    def check_test_sets(cls, cfg):
        """Build every ``DATASETS.TESTS`` set as the evaluation will (present, not empty, every image readable) and
        check that its queries can be ranked (:func:`mdpr_plugin.data.checks.check_rankable_queries`)."""
        for name in cfg.DATASETS.TESTS:
            parts = test_loader_parts(cfg, name)
            check_rankable_queries(name, parts["test_set"], parts["num_query"])

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
