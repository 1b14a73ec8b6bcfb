"""One case of the model benchmark: one architecture, one mode, one phase (train or infer), in this process.

A case is a JSON-able dict (see ``model.plan``); ``run_case`` returns it with its measurements. The
model benchmark runs each case in a fresh interpreter, so that the peak memory of a phase is not
hidden by what an earlier phase or model left in the allocator.
"""
import os
import statistics
import tempfile
import time

import torch

from .harness import Measurement, repeat_timed
from .model_modes import INFERENCE_ONLY, OnnxRuntimeModel, autocast, check_mode, grad_scaler, prepare, \
    prepare_input

IDS_PER_BATCH = 4  # synthetic batches: B / 4 identities of 4 images, so the triplet loss has pairs


# ------------------------------------------------------------------------------------ config
def build_config(case):
    """The config of ``case["arch"]``: the MDPR config file, its overrides, and for fastreid's Baseline /
    MGN the same backbone, input, norm and loss settings under their own meta-architecture."""
    from mdpr_plugin.config import build_config as build_mdpr_config

    cfg = build_mdpr_config(case["config_file"], case["opts"])
    cfg.MODEL.BACKBONE.PRETRAIN = False  # speed does not depend on the weights; no file to find
    h, w = case["size"]
    cfg.INPUT.SIZE_TRAIN = cfg.INPUT.SIZE_TEST = [h, w]
    if case["arch"] != "MDPR":
        cfg.MODEL.META_ARCHITECTURE = case["arch"]
        cfg.MODEL.HEADS.NAME = "EmbeddingHead"
        # the layer4 width: ResNet-18/34 end with basic blocks, deeper ones with 4x-wide bottlenecks
        cfg.MODEL.BACKBONE.FEAT_DIM = 512 if cfg.MODEL.BACKBONE.DEPTH in ("18x", "34x") else 2048
        cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    cfg.freeze()
    return cfg


def build(case):
    from mdpr_plugin.devices import resolve_device
    from mdpr_plugin.engine import build_model

    cfg = build_config(case)
    device = resolve_device(cfg.MODEL.DEVICE)
    torch.manual_seed(case["seed"])  # the same weights in every process: features are comparable
    return build_model(cfg).to(device), cfg, device


def synthetic_batch(case, device, num_classes, seed=1):
    g = torch.Generator().manual_seed(seed)
    b, (h, w) = case["batch"], case["size"]
    images = torch.rand(b, 3, h, w, generator=g) * 255
    targets = (torch.arange(b) // IDS_PER_BATCH) % num_classes
    return images.to(device), targets.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Peak:
    """Peak memory a phase added: the GPU allocator's peak on CUDA, else the process's RSS high-water."""

    def __init__(self, device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.before = torch.cuda.memory_allocated(device)
        else:
            self.measure = Measurement()

    def run(self, phase):
        if self.device.type == "cuda":
            phase()
            return torch.cuda.max_memory_allocated(self.device) - self.before
        return self.measure(phase)[2]


# ------------------------------------------------------------------------------------- FLOPs
def count_flops(model, images, targets, train):
    """FLOPs of one batch (forward, plus backward when ``train``) as counted by FlopCounterMode:
    convolutions, matmuls and attention only, a multiply-add counted as 2."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastreid.utils.events import EventStorage

    model.train(train)
    counter = FlopCounterMode(display=False)
    with counter, EventStorage():
        if train:
            sum(model({"images": images, "targets": targets}).values()).backward()
        else:
            with torch.no_grad():
                model(images)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------- phases
def _repeat(step, case, device):
    """The warm-up and the timed repeats of ``case`` (see :func:`repeat_timed`)."""
    return repeat_timed(step, case["warmup"], case["repeats"], case.get("budget", float("inf")),
                        sync=lambda: _sync(device))


def train_phase(model, cfg, device, case):
    from fastreid.utils.events import EventStorage

    mode = case["mode"]
    images, targets = synthetic_batch(case, device, cfg.MODEL.HEADS.NUM_CLASSES)
    images = prepare_input(images, mode)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    scaler = grad_scaler(mode, device)
    batch = {"images": images, "targets": targets}

    def step():
        with autocast(mode, device):
            losses = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses).backward()
        scaler.step(optimizer)
        scaler.update()

    peak = _Peak(device)
    with EventStorage():  # fastreid's Baseline / MGN log their accuracy there
        holder = {}
        memory = peak.run(lambda: holder.update(zip(("first", "times"), _repeat(step, case, device))))
    return {"first_s": holder["first"], "times": holder["times"], "step_s": statistics.median(holder["times"]),
            "memory": memory}


def _eval_images(cfg, size):
    """The bundled mini Market-1501 query + gallery, resized as at test time; and their ids / cameras."""
    from fastreid.data.transforms import build_transforms
    from PIL import Image

    from mdpr_plugin.data.datasets import MiniMarket1501

    data = MiniMarket1501()
    records = list(data.query) + list(data.gallery)
    transform = build_transforms(cfg, is_train=False)
    images = torch.stack([transform(Image.open(path).convert("RGB")) for path, _, _ in records])
    pids = [pid for _, pid, _ in records]
    camids = [camid for _, _, camid in records]
    return images, pids, camids, len(data.query)


def infer_phase(model, cfg, device, case):
    """Images/s on the synthetic batch, then the features of the mini Market-1501 images (saved to
    ``case["features_path"]``) and their mAP / Rank-1."""
    mode = case["mode"]
    images, _ = synthetic_batch(case, device, 1)
    model.eval()
    extra = {}
    if mode == "onnxruntime":
        start = time.perf_counter()
        path = os.path.join(tempfile.mkdtemp(prefix="mdpr-benchmark-"), "model.onnx")
        runner = OnnxRuntimeModel(model, path, *case["size"], case["threads"], device)
        extra["export_s"] = time.perf_counter() - start
    else:
        def runner(x):
            with torch.no_grad(), autocast(mode, device):
                return model(prepare_input(x, mode)).float()

    peak = _Peak(device)
    holder = {}
    memory = peak.run(lambda: holder.update(zip(("first", "times"), _repeat(lambda: runner(images), case, device))))
    result = {"first_s": holder["first"], "times": holder["times"], "batch_s": statistics.median(holder["times"]),
              "memory": memory, **extra}
    result["images_per_s"] = case["batch"] / result["batch_s"]
    result.update(evaluate_features(runner, cfg, device, case))
    return result


def evaluate_features(runner, cfg, device, case):
    import numpy as np

    from mdpr_plugin.evaluation import evaluate_rank, pairwise_distance

    images, pids, camids, num_query = _eval_images(cfg, case["size"])
    features = torch.cat([runner(images[i:i + case["batch"]].to(device)).cpu()
                          for i in range(0, len(images), case["batch"])])
    if case.get("features_path"):
        np.save(case["features_path"], features.numpy())
    dist = pairwise_distance(features[:num_query], features[num_query:], "cosine")
    cmc, all_ap, _ = evaluate_rank(dist, pids[:num_query], pids[num_query:], camids[:num_query],
                                   camids[num_query:])
    return {"mAP": float(np.mean(all_ap)), "rank1": float(cmc[0]), "feature_dim": features.shape[1]}


def run_case(case):
    """Build the model, prepare it for the mode, run the phase; the case dict with its results."""
    torch.set_num_threads(case["threads"])
    model, cfg, device = build(case)
    check_mode(case["mode"], device)
    if case["phase"] == "train" and case["mode"] in INFERENCE_ONLY:
        raise ValueError(f"{case['mode']} is inference only")
    result = {**case, "device": str(device), "parameters": sum(p.numel() for p in model.parameters())}
    if case["mode"] != "onnxruntime":
        prepare(model, case["mode"])
    phase = train_phase if case["phase"] == "train" else infer_phase
    result.update(phase(model, cfg, device, case))
    if case.get("count_flops"):  # eager float32 only; after the phase, so that its memory is not counted
        images, targets = synthetic_batch(case, device, cfg.MODEL.HEADS.NUM_CLASSES)
        result["flops"] = count_flops(model, images, targets, train=case["phase"] == "train")
    return result
