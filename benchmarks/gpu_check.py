"""Every CUDA path of the plugin, checked in a few minutes on one GPU.

    python -m benchmarks.gpu_check                 # on a CUDA machine: a line per check, a summary
    python -m benchmarks.gpu_check --write-docs    # ... and the table in docs/benchmarks.md
    python -m benchmarks.gpu_check --from-json F --write-docs   # the table of a saved run (--json F)

What it checks, each against the CPU path or against float32 on the GPU:

1. ``training``: MDPR (ResNet-50-IBN, 384x192, E 512, batch 64, 702 identities) trained for a few iterations
   on synthetic images through the plugin's trainer (its model and fused optimizer, its loss-checking AMP /
   float32 loops, its GPU-prefetching loader) with AMP, without, in channels-last memory format, under DDP over
   NCCL and with syncBN; ResNet-101-IBN with AMP; fastreid's Baseline with the same backbone, with and without
   AMP. Every loss finite, every trainable parameter changed; ms per iteration (median), images/s and peak GPU
   memory.
2. ``step``: one training step on the GPU and on the CPU, each against float64 on the CPU (losses, gradients),
   and fused Adam's update on both for the same gradients.
3. ``loader``: the trainer's training loader on the bundled JPEGs at 384x192 (decoding, augmentation, workers,
   the copy to the GPU): images/s, to set against what one GPU trains per second.
4. ``demo``: the bundled demo trained and evaluated end to end by ``train_net.py`` on the GPU, once in one
   process and once through the launcher (``--num-gpus 1``).
5. ``evaluation``: the demo's trained weights evaluated on the GPU and on the CPU (feature difference,
   mAP / Rank-1; with TF32 as torch sets it and off), and with AMP inference against float32 (mAP / Rank-1
   within 0.5).
6. ``re-ranking``: k-reciprocal re-ranking of a DukeMTMC-sized synthetic problem (2,228 queries, 17,661
   gallery, 4608-d) with the GPU neighbour searches (torch; faiss-gpu where installed) against the CPU's:
   neighbours, distances, mAP / Rank-1 and time of each.
7. ``extractor``: ``FeatureExtractor(device="cuda")`` against the CPU on the same weights and images (within
   1e-3 relative), images/s at batch 1, 16 and 64; the same for ONNX Runtime's CUDA provider where installed.

A check that fails prints why and the run goes on; the exit status is 1 when any failed. On a machine without
CUDA it says so in one line and exits 0. ``--device cpu --small`` runs every check's CPU half at tiny sizes (the
test suite does).
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch

from mdpr_plugin.errors import MDPRError
from .harness import GIB, REPO, Section, log

SECTION = Section("gpu-check")
MODULE = "benchmarks.gpu_check"
PROG = "python -m " + MODULE
TRAIN_NET = os.path.join(REPO, "train_net.py")
CHECKS = ("training", "step", "loader", "demo", "evaluation", "re-ranking", "extractor")
FEATURE_TOLERANCE = 1e-3  # relative difference of GPU to CPU features
TF32_TOLERANCE = 1e-2  # the same with cuDNN's TF32 convolutions (torch's default), which round to 10-bit mantissas
METRIC_TOLERANCE = 0.5  # mAP / Rank-1 points between GPU and CPU, AMP and float32 inference
LOADER_BATCH = 8  # the bundled training set has 32 images


@dataclass(frozen=True)
class Settings:
    """The sizes of a run: the paper's on a GPU, tiny ones for the CPU half in the test suite."""
    depth: str = "50x"
    size: tuple = (384, 192)
    embedding: int = 512
    batch: int = 64
    classes: int = 702  # DukeMTMC-reID's training identities
    iterations: int = 20
    warmup: int = 5
    demo_epochs: int = 20
    rerank_shape: str = "duke"
    rerank_dim: int = 4608  # MDPR's eval feature: 9 E
    extractor_batches: tuple = (1, 16, 64)
    extractor_images: int = 64


SMALL = Settings(depth="18x", size=(64, 32), embedding=32, batch=8, classes=16, iterations=2, warmup=1,
                 demo_epochs=4, rerank_shape="small", rerank_dim=64, extractor_batches=(1, 4), extractor_images=4)


@dataclass
class Result:
    check: str
    case: str
    status: str  # "ok", "FAILED" or "skipped"
    summary: str  # one line, the numbers in words
    numbers: dict = field(default_factory=dict)

    def line(self):
        return f"[{self.status}] {self.check}: {self.case}: {self.summary}"


class CheckFailed(MDPRError):
    """A check ran but its result is wrong; the message says how."""


# ---------------------------------------------------------------------------------------------- helpers
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _relative_difference(value, reference):
    """``||value - reference|| / ||reference||`` over the whole array."""
    value, reference = torch.as_tensor(value).double(), torch.as_tensor(reference).double()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


@contextlib.contextmanager
def _tf32(enabled):
    """cuDNN's and cuBLAS's TF32 float32 modes set to ``enabled`` (torch's defaults: cuDNN on, cuBLAS off); None
    leaves them as they are."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _config(settings, device, arch="MDPR", opts=()):
    """MDPR's DukeMTMC config at ``settings``' sizes on ``device``, or fastreid's ``arch`` with the same backbone,
    input and losses (the model benchmark's rule); no pretrained weights."""
    from mdpr_plugin.config import config_file
    from .model_case import build_config

    h, w = settings.size
    overrides = ["MODEL.BACKBONE.DEPTH", settings.depth, "MODEL.BACKBONE.WITH_IBN", str(settings.depth != "18x"),
                 "MODEL.BACKBONE.FEAT_DIM", "512" if settings.depth == "18x" else "2048",
                 "MODEL.BACKBONE.EMBEDDING_DIM", str(settings.embedding),
                 "MODEL.HEADS.NUM_CLASSES", str(settings.classes), "MODEL.DEVICE", str(device),
                 "SOLVER.IMS_PER_BATCH", str(settings.batch), "DATALOADER.NUM_INSTANCE", "4", *opts]
    return build_config({"config_file": config_file("MDPR/duke.yml"), "opts": overrides, "size": [h, w], "arch": arch})


# --------------------------------------------------------------------------------------------- training
class _SyntheticBatches(torch.utils.data.Dataset):
    """``count`` training batches of random 0-255 images, ``batch // 4`` identities of 4 images each (the
    triplet loss needs positive pairs); a few distinct CPU batches, reused, so the loader costs only the copy."""

    def __init__(self, count, batch, size, classes, distinct=4):
        generator = torch.Generator().manual_seed(0)
        self.count = count
        self.batches = [{"images": torch.randint(0, 256, (batch, 3, *size), generator=generator).float(),
                         "targets": (torch.arange(batch) // 4 + i * (batch // 4)) % classes}
                        for i in range(distinct)]

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.batches[index % len(self.batches)]


@contextlib.contextmanager
def _one_process_group(device):
    """A process group of one (NCCL on CUDA, gloo otherwise) set up as the launcher does, so the trainer's DDP
    wrapping and its gradient all-reduce run for real on one device."""
    import torch.distributed as dist
    from fastreid.utils import comm

    from mdpr_plugin.engine.launch import _free_port, backend_for

    dist.init_process_group(backend_for(device.type), init_method=f"tcp://127.0.0.1:{_free_port()}", world_size=1,
                            rank=0)
    comm._LOCAL_PROCESS_GROUP = dist.new_group([0])
    try:
        yield
    finally:
        dist.destroy_process_group()
        comm._LOCAL_PROCESS_GROUP = None


def train_case(settings, device, arch, amp, channels_last=False, ddp=False, opts=()):
    """Train ``arch`` for ``settings.iterations`` timed iterations (after ``settings.warmup``) through the plugin's
    trainer pieces; the numbers, or :class:`CheckFailed`."""
    from fastreid.utils.events import EventStorage

    from mdpr_plugin.data.loader import DeviceDataLoader
    from mdpr_plugin.engine import Trainer
    from mdpr_plugin.engine.distributed import distributed_data_parallel
    from mdpr_plugin.engine.train_loop import CheckedAMPTrainer, CheckedTrainer

    cfg = _config(settings, device, arch,
                  ["SOLVER.AMP.ENABLED", str(amp), "MODEL.CHANNELS_LAST", str(channels_last), *opts])
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK  # as train_net.py sets it
    _reset_peak(device)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    optimizer, wrapper = Trainer.build_optimizer(cfg, model)
    trainable = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    steps = settings.warmup + settings.iterations
    batches = _SyntheticBatches(steps + 1, settings.batch, settings.size, settings.classes)
    loader = DeviceDataLoader(0, device=device, dataset=batches, batch_size=None, pin_memory=True)
    with contextlib.ExitStack() as stack:
        if ddp:
            stack.enter_context(_one_process_group(device))
            model = distributed_data_parallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None,
                                              broadcast_buffers=False)
        loop = (CheckedAMPTrainer if amp else CheckedTrainer)(model, loader, optimizer, wrapper)
        times = []
        with EventStorage(0) as storage:
            for iteration in range(steps):
                loop.iter = storage.iter = iteration
                if iteration == settings.warmup:  # cuDNN's autotuning, in the warm-up, tries large workspaces
                    warmup_peak = _peak_gib(device)
                    _reset_peak(device)
                _sync(device)
                start = time.perf_counter()
                loop.run_step()  # raises NonFiniteLossError naming the term
                _sync(device)
                times.append(time.perf_counter() - start)
            losses = {k: v[0] for k, v in storage.latest().items() if k.startswith("loss_")}
    named = dict((model.module if ddp else model).named_parameters())
    unchanged = [name for name, before in trainable.items() if torch.equal(named[name].detach(), before)]
    step = statistics.median(times[settings.warmup:])
    numbers = {"ms_per_iteration": 1000 * step, "images_per_s": settings.batch / step, "peak_gib": _peak_gib(device),
               "warmup_peak_gib": warmup_peak,
               "loss_terms": len(losses), "parameters": len(trainable), "unchanged": len(unchanged),
               "losses": losses, "amp_active": bool(getattr(loop, "amp_enabled", False))}
    if unchanged:
        raise CheckFailed(f"{len(unchanged)} of {len(trainable)} trainable parameters did not change over {steps} "
                          f"iterations: {', '.join(unchanged[:4])}")
    if not losses or not all(math.isfinite(v) for v in losses.values()):
        raise CheckFailed(f"loss terms {losses}")
    return numbers


def _training_summary(n):
    memory = "" if math.isnan(n["peak_gib"]) else (
        f", peak memory {n['peak_gib']:.1f} GiB ({n['warmup_peak_gib']:.1f} GiB in the warm-up, cuDNN autotuning "
        "included)")
    return (f"{n['ms_per_iteration']:.0f} ms/iteration ({n['images_per_s']:.0f} images/s){memory}, "
            f"{n['loss_terms']} loss terms finite, all {n['parameters']} trainable parameters changed")


def _warm_up(device, seconds=3.0):
    """A few seconds of matrix products, so that the first timed case does not pay for the GPU's clocks rising."""
    if device.type != "cuda":
        return
    a = torch.randn(4096, 4096, device=device)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = (a @ a).tanh_()
        torch.cuda.synchronize(device)


def check_training(settings, device, results):
    _warm_up(device)
    backend = "NCCL" if device.type == "cuda" else "gloo"
    sync_bn = ["MODEL.BACKBONE.NORM", "syncBN", "MODEL.HEADS.NORM", "syncBN"]
    depth = settings.depth
    cases = [  # (arch, depth, AMP, channels-last, DDP, config overrides, what the name adds)
        ("MDPR", depth, True, False, False, [], ""),
        ("MDPR", depth, False, False, False, [], ""),
        ("MDPR", depth, True, True, False, [], ", channels-last"),
        ("MDPR", depth, True, False, True, [], f", DDP over {backend}"),
        ("MDPR", depth, True, False, True, sync_bn, f", syncBN, DDP over {backend}"),
        ("Baseline", depth, True, False, False, [], ""),
        ("Baseline", depth, False, False, False, [], ""),
    ]
    if depth == "50x":  # the paper's backbone, for its memory at the paper's batch per GPU
        cases.append(("MDPR", "101x", True, False, False, ["MODEL.BACKBONE.DEPTH", "101x"], ""))
    h, w = settings.size
    for arch, depth, amp, channels_last, ddp, opts, extra in cases:
        backbone = f"R{depth[:-1]}{'-IBN' if depth != '18x' else ''}"
        name = f"{arch} {backbone} {h}x{w} batch {settings.batch}, {'AMP' if amp else 'float32'}{extra}"
        yield "training", name, \
            lambda a=arch, m=amp, c=channels_last, d=ddp, o=opts: train_case(settings, device, a, m, c, d, o), \
            _training_summary


# ------------------------------------------------------------------------------------------------- step
def _demo_config(device, opts=()):
    from mdpr_plugin.config import build_config

    return build_config("MDPR/demo.yml", ["MODEL.DEVICE", str(device), "DATALOADER.NUM_WORKERS", "0", *opts])


def step_case(device, batch=16):
    """One training step of the demo's MDPR in float32 on ``device`` and on the CPU, from the same weights and batch,
    each against the same step in float64 on the CPU: the 19 losses and the gradients. (An untrained model's
    gradients are ill-conditioned: the CPU's own float32 gradients are ~1e-2 from float64, so the GPU is held to
    the CPU's error, not to the CPU's result.) Then, given the same gradients, the fused Adam step on both."""
    import copy

    from fastreid.utils.events import EventStorage

    from mdpr_plugin.engine import Trainer

    cfg = _demo_config("cpu", ["MODEL.HEADS.NUM_CLASSES", "16"])
    torch.manual_seed(0)
    models = {"cpu": Trainer.build_model(cfg)}
    models["device"] = copy.deepcopy(models["cpu"]).to(device)
    models["float64"] = copy.deepcopy(models["cpu"]).double()
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch, 3, *cfg.INPUT.SIZE_TRAIN), generator=generator).float()
    targets = torch.arange(batch) // 2
    losses, grads = {}, {}
    with _tf32(False), EventStorage(0):
        for name, model in models.items():
            p = next(model.parameters())
            loss_dict = model({"images": images.to(p.device, p.dtype), "targets": targets.to(p.device)})
            sum(loss_dict.values()).backward()
            losses[name] = torch.tensor([float(v) for v in loss_dict.values()], dtype=torch.float64)
            grads[name] = torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).detach().cpu().double()
                                     .flatten() for q in model.parameters()])
    error = {f"{what}_{name}": _relative_difference(values[name], values["float64"])
             for what, values in (("loss", losses), ("gradient", grads)) for name in ("cpu", "device")}
    optimizers = {name: Trainer.build_optimizer(cfg, models[name])[0] for name in ("cpu", "device")}
    before = [q.detach().clone() for q in models["cpu"].parameters()]
    for q, r in zip(models["device"].parameters(), models["cpu"].parameters()):
        q.grad = r.grad.to(q.device) if r.grad is not None else None  # the same gradients: the step alone compared
    for optimizer in optimizers.values():
        optimizer.step()
    update = {name: torch.cat([(q.detach().cpu() - b).flatten() for q, b in zip(models[name].parameters(), before)])
              for name in ("cpu", "device")}
    numbers = {"loss_terms": len(losses["cpu"]), **error,
               "update_difference": _relative_difference(update["device"], update["cpu"])}
    over = [f"{what} {error[f'{what}_device']:.1e} from float64 against the CPU's {error[f'{what}_cpu']:.1e}"
            for what in ("loss", "gradient") if error[f"{what}_device"] > max(3 * error[f"{what}_cpu"], 1e-6)]
    if numbers["update_difference"] > 1e-4:
        over.append(f"fused Adam's update {numbers['update_difference']:.1e} from the CPU's")
    if over:
        raise CheckFailed(f"one step on {device}: {'; '.join(over)}")
    return numbers


def check_step(settings, device, results):
    def summary(n):
        return (f"{n['loss_terms']} losses {n['loss_device']:.1e} and gradients {n['gradient_device']:.1e} from "
                f"float64 (the CPU's float32: {n['loss_cpu']:.1e} and {n['gradient_cpu']:.1e}); fused Adam's update "
                f"{n['update_difference']:.1e} from the CPU's (relative)")
    yield "step", f"one training step of the demo's MDPR on {device}, float32 (TF32 off)", \
        lambda: step_case(device), summary


# ----------------------------------------------------------------------------------------------- loader
def loader_case(settings, device, batches=20):
    """Images/s of the trainer's own training loader on the bundled images at ``settings.size``."""
    from mdpr_plugin.engine import Trainer

    workers = min(8, os.cpu_count() or 1)
    cfg = _config(settings, device, opts=["DATASETS.NAMES", "('MiniMarket1501',)", "DATALOADER.NUM_INSTANCE", "2",
                                          "DATALOADER.NUM_WORKERS", str(workers), "SEED", "0",
                                          "SOLVER.IMS_PER_BATCH", str(LOADER_BATCH)])
    iterator = iter(Trainer.build_train_loader(cfg))
    next(iterator)  # workers starting
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    _sync(device)
    seconds = time.perf_counter() - start
    if batch["images"].device.type != device.type:
        raise CheckFailed(f"batches arrive on {batch['images'].device}, not {device}")
    return {"images_per_s": batches * LOADER_BATCH / seconds, "workers": workers}


def check_loader(settings, device, results):
    trained = [r.numbers["images_per_s"] for r in results if r.check == "training" and r.status == "ok"
               and r.case.startswith("MDPR") and "AMP" in r.case]
    h, w = settings.size

    def summary(n):
        versus = f"; MDPR AMP trains {trained[0]:.0f} images/s" if trained else ""
        return f"{n['images_per_s']:.0f} images/s with {n['workers']} workers{versus}"
    yield "loader", f"bundled JPEGs, {h}x{w}, batch {LOADER_BATCH}", lambda: loader_case(settings, device), summary


# ------------------------------------------------------------------------------------------------- demo
def _printed_metrics(output):
    """The last evaluation table train_net.py printed (fastreid's ``print_csv_format``): {column: value}."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in output.splitlines() if line.lstrip().startswith("|") and "---" not in line]
    for header, values in zip(rows[-2::-1], rows[::-1]):
        if header[0] == "Dataset" and values[0] != "Dataset":
            return dict(zip(header[1:], map(float, values[1:])))
    raise CheckFailed("train_net.py printed no evaluation table")


def demo_case(settings, device, workdir, launcher):
    output_dir = os.path.join(workdir, "demo-launcher" if launcher else "demo")
    epochs = settings.demo_epochs if not launcher else max(4, settings.demo_epochs // 5)
    command = [sys.executable, TRAIN_NET, "--config-file", "MDPR/demo.yml", *(["--num-gpus", "1"] if launcher else []),
               "MODEL.DEVICE", str(device), "OUTPUT_DIR", output_dir, "SEED", "0", "SOLVER.MAX_EPOCH", str(epochs),
               "SOLVER.CHECKPOINT_PERIOD", str(epochs), "TEST.EVAL_PERIOD", str(epochs)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        raise CheckFailed(f"train_net.py exited with status {proc.returncode}: {tail}")
    if device.type == "cuda" and "CUDA is not available" in proc.stdout:
        raise CheckFailed("train_net.py fell back to the CPU")
    metrics = _printed_metrics(proc.stdout)
    return {"seconds": seconds, "epochs": epochs, "mAP": metrics["mAP"], "rank1": metrics["Rank-1"],
            "weights": os.path.join(output_dir, "model_final.pth")}


def check_demo(settings, device, results, workdir):
    def summary(n):
        return (f"{n['epochs']} epochs trained and evaluated in {n['seconds']:.0f} s (process start included): "
                f"mAP {n['mAP']:.1f}, Rank-1 {n['rank1']:.1f}")
    for name, launcher in (("train_net.py, configs/MDPR/demo.yml", False),
                           ("train_net.py --num-gpus 1 (the launcher)", True)):
        if not os.path.isfile(TRAIN_NET):
            yield "demo", name, None, f"{TRAIN_NET} is not here: run the check from a checkout of the repository"
        else:
            yield "demo", name, lambda launcher=launcher: demo_case(settings, device, workdir, launcher), summary


# ------------------------------------------------------------------------------------------- evaluation
def _evaluate(cfg, amp=False):
    """(L2-normalised features, results) of the --eval-only evaluation of ``cfg`` (MODEL.WEIGHTS), the model and
    the test loader on MODEL.DEVICE, optionally under float16 autocast."""
    import torch.nn.functional as F

    from mdpr_plugin.engine import Trainer, build_eval_model
    from mdpr_plugin.evaluation import ReidEvaluator, inference_on_dataset

    model, cfg = build_eval_model(cfg, build=Trainer.build_model)
    loader, num_query = Trainer.build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    evaluator = ReidEvaluator(cfg, num_query)
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        results = inference_on_dataset(model, loader, evaluator, flip_test=cfg.TEST.FLIP.ENABLED)
    features = evaluator._features()[0]
    return F.normalize(features.float(), dim=1), results


def evaluation_case(device, demo_weights, amp, tf32=None, feature_tolerance=FEATURE_TOLERANCE):
    """The demo's weights evaluated on ``device`` (with AMP: against float32 on ``device``; else against the CPU).
    ``tf32``: None leaves torch's TF32 settings as they are; True / False sets both."""
    def config(on):
        return _demo_config(on, ["MODEL.WEIGHTS", demo_weights])

    reference_device = device if amp else torch.device("cpu")
    reference, reference_results = _evaluate(config(reference_device))
    with _tf32(tf32):
        features, results = _evaluate(config(device), amp=amp)
    numbers = {"relative_difference": _relative_difference(features, reference),
               "mAP": float(results["mAP"]), "rank1": float(results["Rank-1"]),
               "reference_mAP": float(reference_results["mAP"]), "reference_rank1": float(reference_results["Rank-1"])}
    tolerance = METRIC_TOLERANCE
    drift = max(abs(numbers["mAP"] - numbers["reference_mAP"]), abs(numbers["rank1"] - numbers["reference_rank1"]))
    if drift > tolerance:
        raise CheckFailed(f"mAP / Rank-1 {numbers['mAP']:.2f} / {numbers['rank1']:.2f} against "
                          f"{numbers['reference_mAP']:.2f} / {numbers['reference_rank1']:.2f}: more than "
                          f"{tolerance} apart")
    if not amp and numbers["relative_difference"] > feature_tolerance:
        raise CheckFailed(f"features differ by {numbers['relative_difference']:.2e} relative (> {feature_tolerance})")
    return numbers


def check_evaluation(settings, device, results):
    demo = [r for r in results if r.check == "demo" and r.status == "ok"]
    if not demo:
        yield "evaluation", "demo weights", None, "the demo did not train"
        return
    weights = demo[0].numbers["weights"]

    def summary(n, what):
        return (f"features {n['relative_difference']:.1e} relative from {what}; mAP {n['mAP']:.2f} / Rank-1 "
                f"{n['rank1']:.2f} against {n['reference_mAP']:.2f} / {n['reference_rank1']:.2f}")
    yield "evaluation", f"demo weights on {device} against the CPU", \
        lambda: evaluation_case(device, weights, False, feature_tolerance=TF32_TOLERANCE), lambda n: summary(n, "the CPU's")
    if device.type != "cuda":
        yield "evaluation", "AMP inference against float32", None, "AMP needs CUDA"
        return
    yield "evaluation", f"demo weights on {device} against the CPU, TF32 off", \
        lambda: evaluation_case(device, weights, False, tf32=False), lambda n: summary(n, "the CPU's")
    yield "evaluation", "AMP (float16) inference against float32", lambda: evaluation_case(device, weights, True), \
        lambda n: summary(n, "float32's")


# ------------------------------------------------------------------------------------------- re-ranking
def rerank_case(settings, knn, reference=None):
    """Re-rank the synthetic problem with the ``knn`` search: the numbers and the distance; compared with
    ``reference`` (the numbers and distance of the CPU's run) when given."""
    import numpy as np

    from mdpr_plugin.evaluation import evaluate_rank
    from mdpr_plugin.evaluation.knn import resolve_backend
    from mdpr_plugin.evaluation.rerank import rerank_distance
    from mdpr_plugin.synthetic.planted_features import DUKE, SMALL as SMALL_SHAPE, synthetic_set

    shape = DUKE if settings.rerank_shape == "duke" else SMALL_SHAPE
    q, g, qp, gp, qc, gc = synthetic_set(shape, settings.rerank_dim).split()
    backend = resolve_backend(knn)
    start = time.perf_counter()
    dist = rerank_distance(q, g, "cosine", knn=backend)
    seconds = time.perf_counter() - start
    cmc, all_ap, _ = evaluate_rank(dist, qp, gp, qc, gc)
    numbers = {"seconds": seconds, "mAP": 100 * float(np.mean(all_ap)), "rank1": 100 * float(cmc[0]),
               "backend": backend, "queries": len(q), "gallery": len(g), "dim": settings.rerank_dim}
    if reference is None:
        return numbers, dist
    expected, expected_dist = reference
    top, expected_top = np.argsort(dist, axis=1)[:, :10], np.argsort(expected_dist, axis=1)[:, :10]
    numbers.update(max_distance_difference=float(np.abs(dist - expected_dist).max()),
                   same_top10=float((top == expected_top).all(axis=1).mean()),
                   reference_seconds=expected["seconds"], reference_mAP=expected["mAP"],
                   reference_rank1=expected["rank1"])
    if abs(numbers["mAP"] - expected["mAP"]) > 0.01 or abs(numbers["rank1"] - expected["rank1"]) > 0.01:
        raise CheckFailed(f"mAP / Rank-1 {numbers['mAP']:.3f} / {numbers['rank1']:.3f} against the CPU's "
                          f"{expected['mAP']:.3f} / {expected['rank1']:.3f}")
    return numbers, dist


def check_reranking(settings, device, results):
    from mdpr_plugin.evaluation.knn import faiss_gpu_available

    size = "DukeMTMC-sized" if settings.rerank_shape == "duke" else "small"
    what = f"{size} synthetic set, {settings.rerank_dim}-d"
    reference = []

    def cpu_search():
        reference[:] = rerank_case(settings, "gemm")
        return reference[0]
    yield "re-ranking", f"{what}, CPU search (gemm)", cpu_search, \
        lambda n: f"{n['seconds']:.1f} s, mAP {n['mAP']:.2f}, Rank-1 {n['rank1']:.2f} ({n['queries']} x {n['gallery']})"

    def summary(n):
        return (f"{n['seconds']:.1f} s against the CPU's {n['reference_seconds']:.1f} s; mAP {n['mAP']:.3f} / Rank-1 "
                f"{n['rank1']:.3f} (CPU {n['reference_mAP']:.3f} / {n['reference_rank1']:.3f}); same top-10 for "
                f"{100 * n['same_top10']:.2f} % of queries, distances within {n['max_distance_difference']:.1e}")
    searches = [("torch", f"torch search on the {'GPU' if device.type == 'cuda' else 'CPU'}")]
    if device.type == "cuda":
        searches.append(("faiss-gpu", "faiss-gpu search"))
    for knn, name in searches:
        if not reference:
            yield "re-ranking", f"{what}, {name}", None, "the CPU reference did not run"
        elif knn == "faiss-gpu" and not faiss_gpu_available():
            yield "re-ranking", f"{what}, {name}", None, "faiss-gpu is not installed here (this faiss has no GPU support)"
        else:
            yield "re-ranking", f"{what}, {name}", lambda k=knn: rerank_case(settings, k, reference)[0], summary


# -------------------------------------------------------------------------------------------- extractor
def _extractor_weights(settings, workdir):
    """A checkpoint of the training check's MDPR (random weights, BatchNorm statistics moved off their defaults so
    that eval-mode BN is not the identity); returns (config, path)."""
    from fastreid.utils.checkpoint import Checkpointer

    from mdpr_plugin.engine.trainer import build_model

    cfg = _config(settings, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    Checkpointer(model, save_dir=workdir).save("extractor")
    return cfg, os.path.join(workdir, "extractor.pth")


def _bundled_images(count):
    from mdpr_plugin.data.datasets import BUNDLED_ROOT
    from mdpr_plugin.tools.common import list_images

    images = list_images(BUNDLED_ROOT)
    return (images * (count // len(images) + 1))[:count]


def _throughput(extractor, images, batches, device):
    rates = {}
    for batch in batches:
        extractor.batch_size = batch
        tensor = extractor.preprocess(images[:batch])
        extractor._features(tensor)  # warm-up (cuDNN picks its algorithms)
        times = []
        for _ in range(5):
            _sync(device)
            start = time.perf_counter()
            extractor._features(tensor)
            _sync(device)
            times.append(time.perf_counter() - start)
        rates[str(batch)] = batch / statistics.median(times)
    return rates


def extractor_case(settings, device, workdir, onnx, tf32=None):
    """FeatureExtractor on ``device`` (PyTorch, or ONNX Runtime with ``onnx``) against PyTorch on the CPU, and its
    images/s; ``tf32``: None leaves torch's TF32 settings as they are, True / False sets both."""
    from mdpr_plugin import FeatureExtractor

    cfg, weights = _extractor_weights(settings, workdir)
    images = _bundled_images(settings.extractor_images)
    reference = FeatureExtractor(cfg, weights, device="cpu")(images[:16])
    if onnx:
        from mdpr_plugin.tools.export import export_onnx

        path = export_onnx(FeatureExtractor(cfg, weights, device="cpu").model, os.path.join(workdir, "mdpr.onnx"),
                           *settings.size)
        extractor = FeatureExtractor(cfg, onnx=path, device=device)
    else:
        extractor = FeatureExtractor(cfg, weights, device=device)
    with _tf32(tf32):
        difference = _relative_difference(extractor(images[:16]), reference)
        numbers = {"relative_difference": difference,
                   "images_per_s": _throughput(extractor, images, settings.extractor_batches, device)}
    if difference > FEATURE_TOLERANCE:
        raise CheckFailed(f"features differ from the CPU's by {difference:.2e} relative (> {FEATURE_TOLERANCE})")
    return numbers


def check_extractor(settings, device, results, workdir):
    from mdpr_plugin.onnx_runtime import onnx_cuda_available

    h, w = settings.size

    def summary(n):
        rates = ", ".join(f"{rate:.0f} at batch {batch}" for batch, rate in n["images_per_s"].items())
        return f"features {n['relative_difference']:.1e} relative from the CPU's; images/s: {rates}"
    name = f"FeatureExtractor(device='{device}'), MDPR R{settings.depth[:-1]} {h}x{w}"
    yield "extractor", name, lambda: extractor_case(settings, device, workdir, onnx=False), summary
    if device.type == "cuda":
        yield "extractor", name + ", TF32 off", lambda: extractor_case(settings, device, workdir, False, tf32=False), \
            summary
    name = f"FeatureExtractor(onnx=..., device='{device}')"
    if device.type == "cuda" and not onnx_cuda_available():
        yield "extractor", name, None, "ONNX Runtime here has no CUDA provider (onnxruntime-gpu is not installed)"
    else:
        yield "extractor", name, lambda: extractor_case(settings, device, workdir, onnx=True), summary


# -------------------------------------------------------------------------------------------------- run
def _run_one(check, case, run, summarise):
    if run is None:
        return Result(check, case, "skipped", summarise)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what libraries print is not the report
            numbers = run()
    except CheckFailed as failure:
        return Result(check, case, "FAILED", str(failure), {"seconds_taken": time.perf_counter() - start})
    except Exception as error:  # a check that breaks must not stop the others
        traceback.print_exc(file=sys.stderr)
        message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        return Result(check, case, "FAILED", message, {"seconds_taken": time.perf_counter() - start})
    numbers["seconds_taken"] = time.perf_counter() - start
    return Result(check, case, "ok", summarise(numbers), numbers)


def _machine(device):
    import platform

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cores": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=properties.total_memory / GIB,
                    cudnn=torch.backends.cudnn.version())
    for name in ("numpy", "faiss", "onnxruntime"):
        with contextlib.suppress(ImportError, AttributeError):
            info[name] = __import__(name).__version__
    return info


def run_checks(settings, device, only, save):
    """Every check in order (``only``: a subset), a line on stdout as each ends; ``save(record)`` after each."""
    record = {"command": " ".join([PROG, *sys.argv[1:]]), "started": time.time(), "machine": _machine(device),
              "settings": asdict(settings), "results": []}
    results = []
    with tempfile.TemporaryDirectory(prefix="mdpr-gpu-check-") as workdir:
        checks = {"training": check_training(settings, device, results),
                  "step": check_step(settings, device, results),
                  "loader": check_loader(settings, device, results),
                  "demo": check_demo(settings, device, results, workdir),
                  "evaluation": check_evaluation(settings, device, results),
                  "re-ranking": check_reranking(settings, device, results),
                  "extractor": check_extractor(settings, device, results, workdir)}
        for name in CHECKS:
            if only and name not in only:
                continue
            for check, case, run, summarise in checks[name]:
                log(f"{check}: {case} ...")
                results.append(_run_one(check, case, run, summarise))
                print(results[-1].line(), flush=True)
                record["results"] = [asdict(r) for r in results]
                record["finished"] = time.time()
                save(record)
    return record


def _machine_line(machine):
    gpu = (f"{machine['gpu']} ({machine['gpu_memory_gib']:.0f} GiB), CUDA {machine['cuda']}, cuDNN {machine['cudnn']}"
           if machine.get("gpu") else f"no GPU ({machine['device']})")
    versions = ", ".join(f"{k} {machine[k]}" for k in ("numpy", "faiss", "onnxruntime") if machine.get(k))
    return f"{gpu}; {machine['cores']} CPU cores; Python {machine['python']}, torch {machine['torch']}, {versions}"


def merged_results(records):
    """One row list from several runs: each check's rows from the last run that has that check, in CHECKS order."""
    latest = {}
    for record in records:
        rows = {}
        for row in record["results"]:
            rows.setdefault(row["check"], []).append(row)
        latest.update(rows)
    return [row for check in CHECKS for row in latest.get(check, [])]


def render(records):
    """The markdown section for one run or several (see :func:`merged_results`): when, on what machine, a row per
    check."""
    lines = ["## GPU check", ""]
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["started"]))
        minutes = (record["finished"] - record["started"]) / 60
        checks = sorted({r["check"] for r in record["results"]}, key=CHECKS.index)
        lines += [f"Generated by `{record['command']}` on {when} ({minutes:.1f} min, Python start-up not included; "
                  f"checks: {', '.join(checks)}) on {_machine_line(record['machine'])}.", ""]
    rows = merged_results(records)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "FAILED", "skipped")}
    lines += [f"{counts['ok']} ok, {counts['FAILED']} failed, {counts['skipped']} skipped.", "",
              "| check | case | result | numbers |", "| --- | --- | --- | --- |"]
    for r in rows:
        summary = r["summary"].replace("|", "/")
        lines.append(f"| {r['check']} | {r['case']} | {r['status']} | {summary} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device checked (default cuda)")
    parser.add_argument("--small", action="store_true", help="tiny sizes: the CPU half of every check, for tests")
    parser.add_argument("--only", nargs="+", choices=CHECKS, help="run these checks only")
    parser.add_argument("--write-docs", action="store_true", help="write the table into --output's GPU section")
    parser.add_argument("--output", default=os.path.join("docs", "benchmarks.md"), help="markdown file for --write-docs")
    parser.add_argument("--json", help="write the results here as JSON (after every check)")
    parser.add_argument("--from-json", nargs="+", metavar="FILE",
                        help="do not run: report the results saved with --json (several runs: each check's rows "
                             "from the last file that has it)")
    return parser.parse_args(argv)


def main(argv=None):
    from mdpr_plugin.errors import InputError, MissingFileError, reporting_errors

    args = parse_args(argv)
    with reporting_errors(PROG):
        if args.from_json:
            records = []
            for path in args.from_json:
                if not os.path.isfile(path):
                    raise MissingFileError(f"--from-json {path} does not exist")
                with open(path) as f:
                    records.append(json.load(f))
        else:
            try:
                device = torch.device(args.device)
            except RuntimeError as error:
                raise InputError(f"--device {args.device!r} is not a torch device ({error})") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                print(f"{PROG}: CUDA is not available on this machine (torch {torch.__version__}): nothing to check. "
                      "Run it on a machine with an NVIDIA GPU.")
                return 0
            import mdpr_plugin  # noqa: F401  (registers MDPR)

            def save(record):
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(record, f, indent=1)
            records = [run_checks(SMALL if args.small else Settings(), device, args.only, save)]
    text = render(records)
    print()
    print(text)
    if args.write_docs:
        SECTION.write(args.output, SECTION.wrap(text.splitlines()))
        log(f"wrote {args.output}")
    return 1 if any(r["status"] == "FAILED" for r in merged_results(records)) else 0


if __name__ == "__main__":
    sys.exit(main())
