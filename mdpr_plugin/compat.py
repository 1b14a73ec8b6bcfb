"""Opt-in fixes to fastreid 1.4.0 itself, for fastreid's *stock* scripts and ``DefaultTrainer``.

Importing ``mdpr_plugin`` changes nothing in fastreid, and the plugin's own ``train_net.py``, tools and
benchmarks never call this module: they get every difference through :class:`mdpr_plugin.engine.Trainer`
and the plugin's subclasses. A deployment that trains with fastreid's own ``DefaultTrainer`` (a fast-reid
git clone's ``tools/train_net.py``, say) needs fastreid fixed on any torch 2 install (its contiguous
parameter buffer trains nothing once ``zero_grad()`` sets gradients to None) and on CPU-only machines.
That is what :func:`patch_fastreid` does, explicitly:

    import mdpr_plugin
    from mdpr_plugin.compat import patch_fastreid
    patch_fastreid()

:data:`PATCHES` declares every change: the fastreid name replaced, what replaces it, and why (with the
fastreid file:line). Each replacement is applied to every loaded module that holds the original (a module
that imported the name by value, ``from fastreid.modeling import build_model``, included); a name fastreid
itself imports from torch is replaced only in the fastreid module named. Before anything is changed, the
source of each fastreid function or class a patch was written for is compared with the one it was written
for (PyPI fastreid 1.4.0; its version string says 1.3, so the source is compared, not the version): a
patch whose target differs is refused with a message, and ``exclude`` leaves it out. Nothing a user edits
to customise data (image reading, dataset and train-set building, transforms) is replaced.
:func:`unpatch_fastreid` restores every original.
"""
import hashlib
import importlib
import inspect
import logging
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from .data.loader import DeviceDataLoader
from .devices import on_available_device
from .engine.checkpointer import load_checkpoint_file
from .errors import MDPRError
from .engine.distributed import distributed_data_parallel
from .engine.launch import launch
from .engine.train_loop import AMPTrainer
from .evaluation import rank as plugin_rank

logger = logging.getLogger(__name__)


class FastreidPatchError(MDPRError, RuntimeError):
    """A patch that does not fit the installed fastreid."""


@dataclass(frozen=True)
class Patch:
    target: str  # "module:name" or "module:Class.method", the fastreid name replaced
    make: Callable  # original -> replacement
    reason: str  # what is broken, with fastreid's file:line
    source_sha256: str  # first 16 hex digits of the sha256 of written_for's source in PyPI fastreid 1.4.0
    written_for: str = ""  # the fastreid code whose behaviour the patch answers; default: target
    without: str = ""  # what leaving the patch out means, for the refusal message


# -------------------------------------------------------------------------------------- replacements
def _build_model_on_available_device(build_model):
    def build_model_on_available_device(cfg):
        return build_model(on_available_device(cfg))

    return build_model_on_available_device


def _build_optimizer_on_parameters(build_optimizer):
    def build_optimizer_on_parameters(cfg, model, contiguous=False):
        return build_optimizer(cfg, model, contiguous=contiguous)

    return build_optimizer_on_parameters


def _jaccard_on_available_device(compute_jaccard_distance):
    import faiss

    def compute_jaccard_distance_on_available_device(features, k1=20, k2=6, search_option=0, fp16=False):
        gpu_search = torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources")
        if search_option < 3 and not gpu_search:
            search_option = 3  # the function's own faiss-cpu branch
        return compute_jaccard_distance(features, k1=k1, k2=k2, search_option=search_option, fp16=fp16)

    return compute_jaccard_distance_on_available_device


def _compile_nothing(self):
    """fastreid's ReidEvaluator compiles its Cython ranking here; the patched ranking does not need it."""


def _ranking_without_cython(evaluate_rank):
    def evaluate_rank_with_cython_numbers(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50,
                                          use_metric_cuhk03=False, use_cython=True):
        if use_metric_cuhk03:  # fastreid's own (its Python path has no such failure)
            return evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, True, use_cython)
        return plugin_rank.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, use_cython)

    return evaluate_rank_with_cython_numbers


def _read_checkpoint(checkpointer, path):
    """fastreid's ``Checkpointer._load_file``, reading with the plugin's loader (the resume checks of
    :class:`~mdpr_plugin.engine.MDPRCheckpointer` are its own)."""
    return load_checkpoint_file(path)


PATCHES = (
    Patch("fastreid.data.data_utils:DataLoaderX", lambda original: DeviceDataLoader,
          "DataLoaderX creates a CUDA stream and moves every batch to cuda:<rank> (data/data_utils.py:127,151): "
          "no train or test loader works without CUDA. The replacement prefetches to the GPU the same way "
          "on CUDA and is a plain DataLoader on the CPU.",
          "1fb5c81cd5f95b49",
          without="no train or test loader works without CUDA"),
    Patch("fastreid.modeling.meta_arch.build:build_model", _build_model_on_available_device,
          "build_model moves the model to MODEL.DEVICE, 'cuda' by default (modeling/meta_arch/build.py:25), "
          "which fails without CUDA; the replacement uses the CPU then, with one warning.",
          "c1925573e368c3a3",
          without="a config whose MODEL.DEVICE is cuda (fastreid's default) fails on a machine without CUDA"),
    Patch("fastreid.solver.build:build_optimizer", _build_optimizer_on_parameters,
          "build_optimizer flattens the parameters into one contiguous buffer (solver/build.py:192); torch 2's "
          "zero_grad() sets gradients to None, backward() then writes them outside the buffer and the "
          "optimizer steps on zeros: nothing trains. The replacement builds it on the parameters.",
          "265336d24ebfcdb6",
          without=("on torch 2 nothing trains: the optimizer steps on zeros while the run goes on to the end (an edited "
                   "build_optimizer must build it with contiguous=False; the StopIfNotLearning hook stops such a run)")),
    Patch("fastreid.engine.train_loop:AMPTrainer", lambda original: AMPTrainer,
          "AMPTrainer asserts CUDA (engine/train_loop.py:335) and uses the deprecated torch.cuda.amp names; the "
          "replacement uses torch.amp, and trains in float32 with a warning without CUDA.",
          "3fd1654fca19653a",
          without="SOLVER.AMP.ENABLED fails without CUDA"),
    Patch("fastreid.engine.defaults:DistributedDataParallel", lambda original: distributed_data_parallel,
          "DefaultTrainer builds DDP with device_ids=[local_rank] (engine/defaults.py:210), which DDP refuses "
          "for a CPU model; the replacement passes none on the CPU and turns SyncBN (CUDA-only) into BN there.",
          "87e7a6e9ecf487c9", written_for="fastreid.engine.defaults:DefaultTrainer.__init__",
          without="several CPU processes cannot train"),
    Patch("fastreid.engine.launch:launch", lambda original: launch,
          "launch asserts CUDA and uses NCCL (engine/launch.py:75,77); the replacement uses gloo on CPUs and "
          "joins a torchrun job.",
          "3e4eac9b6d42ff0e",
          without="--num-gpus without CUDA and torchrun jobs fail"),
    Patch("fastreid.evaluation.rank:evaluate_rank", _ranking_without_cython,
          "without the compiled Cython module (a git clone that never built it), the Python ranking fails on "
          "numpy >= 1.24 when a query keeps fewer than 50 gallery entries (evaluation/rank.py:156), and whether "
          "the module is used is decided at import (rank.py:13), before the evaluator compiles it. The "
          "replacement gives the module's numbers, bit for bit, with or without it (Market-1501 protocol).",
          "89011154f43c7dda",
          without=("without the compiled Cython ranking, evaluation fails on numpy >= 1.24 when a query keeps fewer than"
                   " 50 gallery images")),
    Patch("fastreid.evaluation.reid_evaluation:ReidEvaluator._compile_dependencies", lambda original: _compile_nothing,
          "ReidEvaluator compiles the Cython ranking with whatever python3 is first on PATH and calls "
          "sys.exit(1) when that fails (evaluation/reid_evaluation.py:128, rank_cylib/__init__.py:19); with the "
          "ranking patched nothing needs compiling.",
          "834ab8c6505f9cc0",
          without="evaluation compiles the Cython ranking and exits the process when that fails"),
    Patch("fastreid.utils.compute_dist:compute_jaccard_distance", _jaccard_on_available_device,
          "re-ranking always asks for the GPU search (utils/compute_dist.py:53,68,76: features.cuda(), "
          "faiss.StandardGpuResources); the replacement uses the function's own faiss-cpu search without "
          "CUDA or faiss-gpu.",
          "cf0e38f2f938b0a1",
          without="TEST.RERANK fails without CUDA or faiss-gpu"),
    Patch("fastreid.utils.checkpoint:Checkpointer._load_file", lambda original: _read_checkpoint,
          "checkpoints are read with a bare torch.load (utils/checkpoint.py:216): torch >= 2.6 loads weights "
          "only by default and refuses fastreid's own best-model checkpoints (a numpy scalar). The replacement "
          "reads tensors, containers and numpy scalars only.",
          "1dd8e8a299b5122a",
          without="torch >= 2.6 refuses fastreid's own best-model checkpoints"),
)

_applied = []  # (holder, name, original) in the order set


# ------------------------------------------------------------------------------------------ machinery
def _resolve(path):
    """``(holder, name, value)`` for "module:name" or "module:Class.attribute"."""
    module_name, _, attribute = path.partition(":")
    holder = importlib.import_module(module_name)
    *classes, name = attribute.split(".")
    for class_name in classes:
        holder = getattr(holder, class_name)
    value = vars(holder)[name] if classes else getattr(holder, name)
    return holder, name, value


def source_sha256(obj):
    """First 16 hex digits of the sha256 of ``obj``'s source."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def _check(patch):
    """A sentence saying why ``patch`` does not fit the installed fastreid, or None."""
    where = patch.written_for or patch.target
    try:
        _, _, written_for = _resolve(where)
        found = source_sha256(written_for)
    except (ImportError, AttributeError, KeyError, OSError, TypeError) as error:
        return f"{where}: cannot be read ({type(error).__name__}: {error})"
    if found != patch.source_sha256:
        return (f"{where} in {inspect.getsourcefile(written_for)} is not the code this patch was written for "
                f"(source sha256 {found}, expected {patch.source_sha256}, PyPI fastreid 1.4.0)")
    return None


def _holders(original, target_module):
    """Every loaded module holding ``original`` by name, as ``(module, name)``: all of them for a name fastreid
    defines, only ``target_module`` for one it imports from elsewhere (torch's DDP). The plugin's own modules
    keep the originals: its code is written for fastreid as it is."""
    if not getattr(original, "__module__", "").startswith("fastreid"):
        return [(target_module, name) for name, value in vars(target_module).items() if value is original]
    found = []
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.split(".")[0] == "mdpr_plugin":
            continue
        try:
            names = [name for name, value in vars(module).items() if value is original]
        except TypeError:  # an object in sys.modules without a __dict__
            continue
        found.extend((module, name) for name in names)
    return found


def patch_fastreid(exclude=()):
    """Apply :data:`PATCHES` (all but the targets named in ``exclude``); returns the targets applied.

    Refuses, before changing anything, when the source of a target differs from the fastreid code its
    patch was written for (a user's edit, another fastreid version). Calling it again changes nothing.
    """
    if _applied:
        return [patch.target for patch in PATCHES if patch.target not in exclude]
    unknown = set(exclude) - {patch.target for patch in PATCHES}
    if unknown:
        raise FastreidPatchError(f"exclude names no patch: {sorted(unknown)}; the targets are "
                                 f"{[patch.target for patch in PATCHES]}.")
    patches = [patch for patch in PATCHES if patch.target not in exclude]
    mismatches = [f"{problem} (left out: {patch.without})" for patch in patches for problem in [_check(patch)]
                  if problem]
    if mismatches:
        raise FastreidPatchError(
            "Not patching fastreid: " + "; ".join(mismatches) + ". Those patches would replace code they were "
            "not written for. Leave them out with patch_fastreid(exclude=[...]) (the target names above) only where "
            "your edited code does what the patch does; nothing was changed.")
    for patch in patches:
        holder, name, original = _resolve(patch.target)
        replacement = patch.make(original)
        if isinstance(holder, type):
            places = [(holder, name)]
        else:
            places = _holders(original, holder)
        for place, attribute in places:
            _applied.append((place, attribute, original))
            setattr(place, attribute, replacement)
        logger.info("patched %s in %d place(s)", patch.target, len(places))
    return [patch.target for patch in patches]


def unpatch_fastreid():
    """Put back every original :func:`patch_fastreid` replaced."""
    while _applied:
        place, attribute, original = _applied.pop()
        setattr(place, attribute, original)
