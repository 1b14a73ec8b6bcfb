"""The one place that adapts fastreid 1.4.0 to Python >= 3.10, torch 2, numpy 2 and CPU-only machines.

``apply()`` runs when ``mdpr_plugin`` is imported. Each measure names the fastreid file:line it answers
and has a test in tests/test_compat.py that fails without it. Where fastreid offers an extension point
the plugin's trainer uses it instead; the measures here exist because fastreid's *stock* scripts and
``DefaultTrainer`` must also work once the plugin is imported.
"""
import collections
import collections.abc
import importlib
import logging
import os
import shutil
import subprocess
import sys
import types

import torch

logger = logging.getLogger(__name__)
_applied = False


def _shim_removed_imports():
    # fastreid/data/build.py:11 imports torch._six (removed in torch 2.0).
    if "torch._six" not in sys.modules:
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)
        sys.modules["torch._six"] = six
    # fastreid/data/build.py:12 and fastreid/evaluation/testing.py:5 import collections.Mapping
    # (removed in Python 3.10).
    if not hasattr(collections, "Mapping"):
        collections.Mapping = collections.abc.Mapping


def _rebind(name, value, *modules):
    """Replace ``name`` in every module that imported it by name."""
    for module in modules:
        setattr(module, name, value)


# ----------------------------------------------------------------------------------------- devices
_warned_devices = set()


def resolve_device(device):
    """``device`` if it exists here, else the CPU with one logged warning (per requested device)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        if str(device) not in _warned_devices:
            _warned_devices.add(str(device))
            logger.warning("MODEL.DEVICE is %s but CUDA is not available: running on the CPU.", device)
        return torch.device("cpu")
    return device


def _device_fallback_build_model(build_model):
    # fastreid/modeling/meta_arch/build.py:25 moves the model to MODEL.DEVICE ("cuda" by default),
    # which crashes on a machine without CUDA.
    def build_model_on_available_device(cfg):
        device = resolve_device(cfg.MODEL.DEVICE)
        if str(device) != cfg.MODEL.DEVICE:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.DEVICE = str(device)
        return build_model(cfg)

    return build_model_on_available_device


# -------------------------------------------------------------------------------------- optimiser
def _separate_params_build_optimizer(build_optimizer):
    # fastreid/solver/build.py:192 flattens all parameters into one buffer (ContiguousParams) whose
    # gradients are views the optimiser reads. torch >= 2.0's optimizer.zero_grad() sets gradients to
    # None, so backward() writes fresh tensors outside that buffer and the optimiser steps on zeros:
    # nothing trains, and ContiguousParams' own buffer check (utils/params.py:90) does not notice.
    # torch's multi-tensor (foreach) optimisers give the speed the buffer was for.
    def build_optimizer_with_separate_params(cfg, model, contiguous=False):
        return build_optimizer(cfg, model, contiguous=contiguous)

    return build_optimizer_with_separate_params


# -------------------------------------------------------------------------------------- evaluation
def fast_ranking_available():
    try:
        from fastreid.evaluation.rank_cylib.rank_cy import evaluate_cy  # noqa: F401
        return True
    except ImportError:
        return False


def build_fast_ranking():
    """Compile fastreid's Cython ranking module in place (``make setup`` runs this once).

    fastreid compiles it inside ``ReidEvaluator.__init__`` with whatever ``python3`` is first on PATH
    and calls ``sys.exit(1)`` when that fails (evaluation/rank_cylib/__init__.py:19); here it is built
    at set-up time with this interpreter.
    """
    import fastreid.evaluation.rank_cylib as rank_cylib

    folder = os.path.dirname(rank_cylib.__file__)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(os.path.join(folder, "build"), ignore_errors=True)
    importlib.invalidate_caches()
    if not fast_ranking_available():
        raise RuntimeError(f"built fastreid's ranking module in {folder} but it does not import")
    return folder


def _compile_dependencies_without_exit(self):
    # fastreid/evaluation/reid_evaluation.py:128 compiles at evaluation time and the helper it calls
    # exits the process on failure; evaluation must never kill a training run.
    if not fast_ranking_available():
        logger.warning(
            "fastreid's fast (Cython) ranking module is not built; using the pure-Python ranking, "
            "which gives the same numbers more slowly. Build it with "
            "`make setup` or `python -c 'import mdpr_plugin.compat as c; c.build_fast_ranking()'`.")


def _cpu_capable_jaccard(compute_jaccard_distance):
    # fastreid/utils/compute_dist.py:53 always asks compute_jaccard_distance for the GPU search
    # (search_option=0: features.cuda() and faiss.StandardGpuResources at lines 68 and 76). Keep the
    # GPU search where CUDA and faiss-gpu exist, else use the function's own faiss-cpu branch.
    import faiss

    def compute_jaccard_distance_on_available_device(features, k1=20, k2=6, search_option=0, fp16=False):
        gpu_search = torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources")
        if search_option < 3 and not gpu_search:
            search_option = 3
        return compute_jaccard_distance(features, k1=k1, k2=k2, search_option=search_option, fp16=fp16)

    return compute_jaccard_distance_on_available_device


# -------------------------------------------------------------------------------------------- data
class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder (or one of its sub-folders) is missing."""


def _check_dataset_files(self, required_files):
    # fastreid/data/datasets/bases.py:139 says only '"datasets/DukeMTMC-reID" is not found'.
    import fastreid.data.build as data_build

    required = [required_files] if isinstance(required_files, str) else list(required_files)
    missing = [path for path in required if not os.path.exists(path)]
    if missing:
        raise DatasetNotFoundError(
            f"{type(self).__name__}: {missing[0]} not found (absolute: {os.path.abspath(missing[0])}). "
            f"The dataset needs: {', '.join(required)}. fastreid looks for datasets under "
            f"FASTREID_DATASETS (here {data_build._root!r}, relative to the working directory "
            f"{os.getcwd()}); set it to the folder that holds the dataset before starting.")


# ------------------------------------------------------------------------------------- checkpoints
def _load_naming_a_missing_checkpoint(load):
    # fastreid/utils/checkpoint.py:119 asserts the file exists ("Checkpoint x not found!"): an
    # AssertionError that names neither the config key nor the folder it was looked for from.
    from .serialization import CheckpointError

    def load_checking_the_file(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(
                f"Checkpoint {path} not found (absolute: {os.path.abspath(path)}). Check MODEL.WEIGHTS, or with "
                "--resume the file named in OUTPUT_DIR/last_checkpoint.")
        return load(self, path, *args, **kwargs)

    return load_checking_the_file


# ------------------------------------------------------------------------------------------ apply
def apply():
    """Make fastreid importable and runnable here. Idempotent."""
    global _applied
    if _applied:
        return
    _shim_removed_imports()

    import fastreid.data.build as data_build
    import fastreid.data.datasets.bases as dataset_bases
    import fastreid.engine as engine
    import fastreid.engine.defaults as engine_defaults
    import fastreid.engine.hooks as engine_hooks
    import fastreid.engine.train_loop as train_loop
    import fastreid.evaluation.reid_evaluation as reid_evaluation
    import fastreid.modeling as modeling
    import fastreid.modeling.meta_arch as meta_arch
    import fastreid.modeling.meta_arch.build as meta_arch_build
    import fastreid.solver as solver
    import fastreid.solver.build as solver_build
    import fastreid.utils.checkpoint as checkpoint
    import fastreid.utils.compute_dist as compute_dist

    from .data import builders as checked_builders
    from .data.images import read_image
    from .data.loader import DeviceDataLoader
    from .data.transforms import build_transforms
    from .engine.checkpoint import load_checkpoint_file, save_checkpoint_atomically, tag_last_checkpoint_atomically
    from .engine.distributed import distributed_data_parallel
    from .engine.launch import launch
    from .engine.train_loop import (AMPTrainer, checkpoint_after_epoch_if_finite, eval_after_train_unless_stopped,
                                    write_metrics_checking_losses)

    # fastreid/data/data_utils.py:127,151: DataLoaderX needs CUDA; build.py uses it for every loader.
    _rebind("DataLoaderX", DeviceDataLoader, data_build)
    # fastreid/data/transforms/build.py:81 (RandomAffine arguments torchvision removed) and the
    # fixed RandomPatch pool size (transforms.py:57); see mdpr_plugin/data/transforms.py.
    _rebind("build_transforms", build_transforms, data_build)
    dataset_bases.Dataset.check_before_run = _check_dataset_files
    # fastreid/data/build.py:30,98 builds whatever the folders hold (an empty set makes the identity
    # samplers loop forever) and reads images only when drawn; see mdpr_plugin/data/builders.py.
    _rebind("_train_loader_from_config", checked_builders.train_loader_from_config, data_build)
    _rebind("_test_loader_from_config", checked_builders.test_loader_from_config, data_build)
    for name in ("build_reid_train_loader", "build_reid_test_loader"):
        _rebind(name, getattr(checked_builders, name), data_build, sys.modules["fastreid.data"], engine_defaults)
    # fastreid/data/data_utils.py:17 converts no image mode to RGB and does not name unreadable files.
    _rebind("read_image", read_image, sys.modules["fastreid.data.common"], sys.modules["fastreid.data.data_utils"])
    # fastreid/engine/train_loop.py:293 checks the loss on the main process only and names neither the
    # term nor the fix; see mdpr_plugin/engine/train_loop.py.
    train_loop.SimpleTrainer._write_metrics = write_metrics_checking_losses
    engine_hooks.EvalHook.after_train = eval_after_train_unless_stopped
    engine_hooks.PeriodicCheckpointer.after_epoch = checkpoint_after_epoch_if_finite
    # fastreid/engine/train_loop.py:335: AMPTrainer asserts CUDA; defaults.py picks it by name.
    _rebind("AMPTrainer", AMPTrainer, train_loop, engine_defaults)
    build_model = _device_fallback_build_model(meta_arch_build.build_model)
    _rebind("build_model", build_model, meta_arch_build, meta_arch, modeling, engine_defaults)
    build_optimizer = _separate_params_build_optimizer(solver_build.build_optimizer)
    _rebind("build_optimizer", build_optimizer, solver_build, solver, engine_defaults)
    reid_evaluation.ReidEvaluator._compile_dependencies = _compile_dependencies_without_exit
    compute_dist.compute_jaccard_distance = _cpu_capable_jaccard(compute_dist.compute_jaccard_distance)
    # fastreid/utils/checkpoint.py:216: bare torch.load; see mdpr_plugin/engine/checkpoint.py.
    checkpoint.Checkpointer._load_file = lambda self, f: load_checkpoint_file(f)
    checkpoint.Checkpointer.load = _load_naming_a_missing_checkpoint(checkpoint.Checkpointer.load)
    # fastreid/engine/defaults.py:210 builds DDP with device_ids=[local_rank], which DDP refuses for a
    # CPU model, and keeps SyncBN, which runs on CUDA only; see mdpr_plugin/engine/distributed.py.
    _rebind("DistributedDataParallel", distributed_data_parallel, engine_defaults)
    # fastreid/engine/launch.py:75,77 asserts CUDA and uses NCCL, and does not join a torchrun job; see
    # mdpr_plugin/engine/launch.py. (fastreid.engine.launch the module is shadowed by the function.)
    _rebind("launch", launch, sys.modules["fastreid.engine.launch"], engine)
    # fastreid/utils/checkpoint.py:93,202 write in place: a kill while saving truncates the last good file.
    checkpoint.Checkpointer.save = save_checkpoint_atomically
    checkpoint.Checkpointer.tag_last_checkpoint = tag_last_checkpoint_atomically
    _applied = True

