"""The cases of the GPU check: each CUDA path of the plugin run once, its numbers returned, a wrong result raised as
:class:`CheckFailed`. tests/gpu runs them as tests (on the CPU at tiny sizes in the normal suite, on CUDA at the
paper's sizes where there is a GPU); ``benchmarks.gpu_timing`` runs them for the table in docs/benchmarks.md.

What they check, each against the CPU path or against float32 on the GPU:

1. training: MDPR (ResNet-50-IBN, 384x192, E 512, batch 64, 702 identities) trained for a few iterations
   on synthetic images through the plugin's trainer (its model and fused optimizer, its loss-checking AMP /
   float32 loops, its GPU-prefetching loader) with AMP, without, in channels-last memory format, under DDP over
   NCCL and with syncBN; ResNet-101-IBN with AMP; fastreid's Baseline with the same backbone, with and without
   AMP. Every loss finite, every trainable parameter changed; ms per iteration (median), images/s and peak GPU
   memory.
2. step: one training step on the GPU and on the CPU, each against float64 on the CPU (losses, gradients),
   and fused Adam's update on both for the same gradients.
3. loader: the trainer's training loader on the bundled JPEGs at 384x192 (decoding, augmentation, workers,
   the copy to the GPU): images/s, to set against what one GPU trains per second.
4. demo: the bundled demo trained and evaluated end to end by ``train_net.py`` on the GPU, once in one
   process and once through the launcher (``--num-gpus 1``).
5. evaluation: the demo's trained weights evaluated on the GPU and on the CPU (feature difference,
   mAP / Rank-1; with TF32 as torch sets it and off), and with AMP inference against float32 (mAP / Rank-1
   within 0.5).
6. re-ranking: k-reciprocal re-ranking of a DukeMTMC-sized synthetic problem (2,228 queries, 17,661
   gallery, 4608-d) with the GPU neighbour searches (torch; faiss-gpu where installed) against the CPU's:
   neighbours, distances, mAP / Rank-1 and time of each.
7. extractor: ``FeatureExtractor(device="cuda")`` against the CPU on the same weights and images (within
   1e-3 relative), images/s at batch 1, 16 and 64; the same for ONNX Runtime's CUDA provider where installed.
"""
import contextlib
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from mdpr_plugin.errors import MDPRError

from .harness import GIB, REPO

TRAIN_NET = os.path.join(REPO, "train_net.py")
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


def settings_for(device):
    """The paper's sizes on a GPU, the tiny ones on the CPU."""
    return Settings() if device.type == "cuda" else SMALL


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


@dataclass(frozen=True)
class TrainingCase:
    """One training run of :func:`train_case`: the architecture, AMP or float32, and what it adds."""
    arch: str
    amp: bool
    channels_last: bool = False
    ddp: bool = False
    sync_bn: bool = False
    depth: str = None  # None: the settings' backbone

    def name(self, settings, device):
        depth = self.depth or settings.depth
        backbone = f"R{depth[:-1]}{'-IBN' if depth != '18x' else ''}"
        backend = "NCCL" if device.type == "cuda" else "gloo"
        extra = (", channels-last" if self.channels_last else "") + (", syncBN" if self.sync_bn else "") + (
            f", DDP over {backend}" if self.ddp else "")
        h, w = settings.size
        return f"{self.arch} {backbone} {h}x{w} batch {settings.batch}, {'AMP' if self.amp else 'float32'}{extra}"

    def run(self, settings, device):
        opts = (["MODEL.BACKBONE.NORM", "syncBN", "MODEL.HEADS.NORM", "syncBN"] if self.sync_bn else []) + (
            ["MODEL.BACKBONE.DEPTH", self.depth] if self.depth else [])
        return train_case(settings, device, self.arch, self.amp, self.channels_last, self.ddp, opts)


TRAINING = (TrainingCase("MDPR", True), TrainingCase("MDPR", False), TrainingCase("MDPR", True, channels_last=True),
            TrainingCase("MDPR", True, ddp=True), TrainingCase("MDPR", True, ddp=True, sync_bn=True),
            TrainingCase("Baseline", True), TrainingCase("Baseline", False))
# the paper's backbone, for its memory at the paper's batch per GPU: with the paper's sizes only
RESNET101 = TrainingCase("MDPR", True, depth="101x")


def warm_up(device, seconds=3.0):
    """A few seconds of matrix products, so that the first timed case does not pay for the GPU's clocks rising."""
    if device.type != "cuda":
        return
    a = torch.randn(4096, 4096, device=device)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = (a @ a).tanh_()
        torch.cuda.synchronize(device)


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
            losses[name] = torch.tensor([float(v.detach()) for v in loss_dict.values()], dtype=torch.float64)
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
