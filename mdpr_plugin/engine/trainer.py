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
import contextlib
import logging
import math
import os
from collections import OrderedDict

import numpy as np
import torch
import fastreid.modeling
import fastreid.solver
from fastreid.engine import DefaultTrainer, hooks
from fastreid.engine.train_loop import HookBase, TrainerBase
from fastreid.evaluation import print_csv_format
from fastreid.utils import comm
from fastreid.utils.collect_env import collect_env_info
from fastreid.utils.env import seed_all_rng
from fastreid.utils.events import EventWriter, JSONWriter, TensorboardXWriter
from fastreid.utils.logger import setup_logger

from ..config import build_config, config_file
from ..data import test_loader, test_loader_parts, train_loader, train_loader_parts
from ..data.samplers import ResumableSampler, SeededDataset, seed_all
from ..devices import on_available_device, resolve_device
from ..errors import InputError, MDPRError
from ..resources import check_model_memory
from ..evaluation import ReidEvaluator, inference_on_dataset
from ..evaluation.evaluator import EmptyEvaluationSetError
from ..evaluation.rank import query_validity
from .checkpointer import MDPRCheckpointer
from .output_dir import check_output_dir, lock_output_dir, relock_output_dir, write_config
from .distributed import broadcast_buffers, check_batch_sizes, distributed_data_parallel, setup_worker_logging
from .train_loop import (BestCheckpointer, CheckedAMPTrainer, CheckedTrainer, EvalHook, MetricPrinter,
                         NotLearningError, PeriodicCheckpointer, StopIfNotLearning)

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


def setup_config(args):
    """fastreid defaults + the MDPR keys + the YAML file + ``KEY VALUE`` overrides, then the setup of
    fastreid's ``default_setup`` (logging, the seed) on rank 0; other processes write no files.

    A training run first takes OUTPUT_DIR's lock. Unlike ``default_setup``, nothing is written into OUTPUT_DIR
    here: train_net.py starts log.txt, writes config.yaml and removes the files an interrupted run left half
    written once the run's checks have passed (:func:`start_log_file`, :func:`mdpr_plugin.engine.output_dir.
    write_config`, :func:`mdpr_plugin.engine.output_dir.remove_partial_checkpoints`).
    """
    cfg = build_config(args.config_file, args.opts)
    cfg.freeze()
    rank, world_size = comm.get_rank(), comm.get_world_size()
    check_batch_sizes(cfg, world_size)
    if rank == 0:
        if not args.eval_only:
            lock_output_dir(cfg.OUTPUT_DIR)
        _log_setup(cfg, args)
    else:
        setup_worker_logging(cfg, rank)
    if not args.eval_only:
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK  # as default_setup does
    if world_size > 1:
        logger.info("%d processes (%s): SOLVER.IMS_PER_BATCH %d = %d images per process.", world_size,
                    torch.distributed.get_backend(), cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.IMS_PER_BATCH // world_size)
    # a set SEED makes the initialisation reproducible (+ rank, so that processes differ where they should;
    # DDP copies rank 0's initial weights to all); without one, fastreid's random seed, as default_setup
    if cfg.SEED >= 0:
        seed_all(cfg.SEED + rank, cuda=True)
    else:
        seed_all_rng()
    return cfg


def _log_folder(cfg, args):
    """Where log.txt goes: OUTPUT_DIR; for an evaluation, nowhere when OUTPUT_DIR cannot be written (it writes
    nothing else there) or holds a link named log.txt."""
    folder = cfg.OUTPUT_DIR
    if not folder or not args.eval_only:
        return folder  # a training run's folder was checked when it was locked
    try:
        os.makedirs(folder, exist_ok=True)
        check_output_dir(folder)
        writable = os.access(folder, os.W_OK)
    except (OSError, MDPRError) as error:
        writable, reason = False, str(error)
    else:
        reason = "it cannot be written"
    if writable:
        return folder
    logger.warning("Not writing log.txt into OUTPUT_DIR %s (%s): logging to the console only.", folder, reason)
    return None


class _HeldRecords(logging.Handler):
    """The records of a training run's set-up, kept for log.txt until the run's checks have passed, so that a run
    refused before training leaves OUTPUT_DIR as it was."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _log_setup(cfg, args):
    """What fastreid's ``default_setup`` logs, into OUTPUT_DIR/log.txt (for a training run, from
    :func:`start_log_file` on); the plugin's lines go there too."""
    training = not args.eval_only
    fastreid_logger = setup_logger(None if training else _log_folder(cfg, args), distributed_rank=0)
    if training:
        fastreid_logger.addHandler(_HeldRecords())
    fastreid_logger.info("Rank of current process: 0. World size: %d", comm.get_world_size())
    fastreid_logger.info("Environment info:\n%s", collect_env_info())
    fastreid_logger.info("Command line arguments: %s", args)
    path = config_file(args.config_file)
    with open(path) as f:
        fastreid_logger.info("Contents of args.config_file=%s (%s):\n%s", args.config_file, path, f.read())
    fastreid_logger.info("Running with full config:\n%s", cfg)
    if cfg.IMPORTS:
        fastreid_logger.info("Imported the modules IMPORTS names: %s", ", ".join(cfg.IMPORTS))


class _LogFile(logging.StreamHandler):
    """OUTPUT_DIR/log.txt, reopened if the folder is made again during training."""

    def reopen(self, path):
        old = self.setStream(open(path, "a"))
        if old is not None:
            old.close()


def start_log_file(folder):
    """OUTPUT_DIR/log.txt of a training run whose checks passed, as fastreid's ``setup_logger`` writes it: the
    lines logged so far, then the rest of the run's."""
    fastreid_logger = logging.getLogger("fastreid")
    handler = _LogFile(open(os.path.join(folder, "log.txt"), "a"))
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                                           datefmt="%m/%d %H:%M:%S"))
    for held in [h for h in fastreid_logger.handlers if isinstance(h, _HeldRecords)]:
        fastreid_logger.removeHandler(held)
        for record in held.records:
            handler.handle(record)
    fastreid_logger.addHandler(handler)


def _recreate_output_dir(cfg):
    """After OUTPUT_DIR was removed during training and made again for a checkpoint: its lock, config.yaml and
    log.txt (from then on) made again too."""
    relock_output_dir(cfg.OUTPUT_DIR)
    write_config(cfg)
    for handler in logging.getLogger("fastreid").handlers:
        if isinstance(handler, _LogFile):
            handler.reopen(os.path.join(cfg.OUTPUT_DIR, "log.txt"))


# a scheduler's state that records how far it got, not what the schedule is (base_lrs: see resume_or_load)
_PROGRESS = {"last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step", "verbose",
             "base_lrs"}


def _rounded(values):
    return sorted({float(f"{v:.4g}") for v in values})


def check_test_sets(cfg):
    """Build every ``DATASETS.TESTS`` set as the evaluation will (present, not empty, every image readable) and
    check that its queries can be ranked: an error when no query has a gallery image of its person from
    another camera, a warning with the count when some have none (fastreid's metrics leave those out)."""
    for name in cfg.DATASETS.TESTS:
        parts = test_loader_parts(cfg, name)
        test_set, num_query = parts["test_set"], parts["num_query"]
        if not hasattr(test_set, "img_items"):
            continue  # a data set class of the user's own
        query, gallery = test_set.img_items[:num_query], test_set.img_items[num_query:]
        q_pids, q_cams = (np.asarray([item[k] for item in query]) for k in (1, 2))
        g_pids, g_cams = (np.asarray([item[k] for item in gallery]) for k in (1, 2))
        valid, _ = query_validity(q_pids, g_pids, q_cams, g_cams)
        if not valid.any():
            raise EmptyEvaluationSetError(
                f"{name}: none of its {num_query} queries has a gallery image of the same person from another "
                f"camera ({len(g_pids)} gallery images), so nothing can be evaluated. Check that the query and "
                "gallery folders belong together (same person ids), or set DATASETS.TESTS to another test set.")
        if not valid.all():
            logger.warning("%s: %d of %d queries have no gallery image of their person from another camera; the "
                           "metrics leave them out.", name, int((~valid).sum()), num_query)


class _PluginErrorRecords(logging.Filter):
    """Drops the records that log a plugin error with its traceback."""

    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], MDPRError))


@contextlib.contextmanager
def _plugin_errors_not_logged_by_fastreid():
    """fastreid logs whatever ends training with its traceback (engine/train_loop.py:149); a plugin error (a NaN loss,
    a run that does not learn) already says what happened and the fix, and is reported in one line by whoever
    catches it (train_net.py: ``ERROR: ...``)."""
    fastreid_loop = logging.getLogger("fastreid.engine.train_loop")
    records = _PluginErrorRecords()
    fastreid_loop.addFilter(records)
    try:
        yield
    finally:
        fastreid_loop.removeFilter(records)


class _SeedEachIteration(HookBase):
    """Re-seeds the global generators from (seed, iteration, rank) before every step, so that any
    randomness in the model or the loss (dropout, ...) is the same in a resumed run. (The training
    images are drawn from per-sample seeds, independently of these.)"""

    def before_step(self):
        sequence = np.random.SeedSequence((self.trainer.train_sampler.seed, self.trainer.iter, comm.get_rank()))
        seed = int(sequence.generate_state(1)[0])
        seed_all(seed, cuda=True)


class _OpenedOnFirstWrite(EventWriter):
    """A file-writing event writer made at its first write: building the trainer (which a refused ``--resume``
    does) writes nothing into OUTPUT_DIR."""

    def __init__(self, make):
        self._make, self._writer = make, None

    def write(self):
        if self._writer is None:
            self._writer = self._make()
        self._writer.write()

    def close(self):
        if self._writer is not None:
            self._writer.close()


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
        check_test_sets(cfg)  # before the first iteration, not at the first evaluation hours later
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
        self.checkpointer.on_folder_recreated = lambda: _recreate_output_dir(cfg)
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
            with _plugin_errors_not_logged_by_fastreid():
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
        before, evaluation, after = [_SeedEachIteration(), StopIfNotLearning()], [], []
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
        return [MetricPrinter(self.max_iter),
                _OpenedOnFirstWrite(lambda: JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))),
                _OpenedOnFirstWrite(lambda: TensorboardXWriter(self.cfg.OUTPUT_DIR))]

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
