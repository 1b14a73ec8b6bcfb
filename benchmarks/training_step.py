"""Where a training step's time goes, and the step's speed against another checkout of this project.

    python -m benchmarks.training_step profile           # the phases of a step (torch profiler)
    python -m benchmarks.training_step compare BASE_DIR  # this checkout vs the one at BASE_DIR

The case is the CPU benchmark's: configs/MDPR/market.yml with ResNet-50-IBN, 128x64 input, E 512, 751
classes, batch 16, float32, with the trainer's own model and optimizer (``Trainer.build_model`` /
``build_optimizer``) and a synthetic batch (4 identities of 4 images). A step is what the trainer's loop
does: forward to the loss dict, ``zero_grad``, backward, the loss check and bookkeeping
(``_write_metrics``), the optimizer step. ``compare`` runs each checkout in fresh processes, alternating, and
reports medians; this file is run by path in both, so it imports only what both checkouts have.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

OPTS = ["MODEL.BACKBONE.DEPTH", "50x", "MODEL.BACKBONE.WITH_IBN", "True", "MODEL.BACKBONE.PRETRAIN", "False",
        "MODEL.BACKBONE.EMBEDDING_DIM", "512", "MODEL.HEADS.NUM_CLASSES", "751", "MODEL.DEVICE", "cpu",
        "INPUT.SIZE_TRAIN", "[128, 64]", "INPUT.SIZE_TEST", "[128, 64]", "SOLVER.IMS_PER_BATCH", "16",
        "SOLVER.AMP.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0"]
BATCH, IDS = 16, 4


def _log(message):
    print(message, file=sys.stderr, flush=True)


def _case(repo):
    """(cfg, model, optimizer, loop, batch) of the case, from the checkout ``repo``."""
    import torch
    from mdpr_plugin.config import build_config
    from mdpr_plugin.engine import Trainer
    from mdpr_plugin.engine.train_loop import CheckedTrainer

    cfg = build_config(os.path.join(repo, "configs", "MDPR", "market.yml"), OPTS)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    optimizer, wrapper = Trainer.build_optimizer(cfg, model)
    g = torch.Generator().manual_seed(1)
    batch = {"images": torch.rand(BATCH, 3, 128, 64, generator=g) * 255,
             "targets": torch.arange(BATCH) // (BATCH // IDS)}
    loop = CheckedTrainer(model, [batch], optimizer, wrapper)
    loop.iter = 0
    return cfg, model, optimizer, loop, batch


def _step(model, optimizer, loop, batch):
    loss_dict = model(batch)
    losses = sum(loss_dict.values())
    optimizer.zero_grad()
    losses.backward()
    loop._write_metrics(loss_dict, 0.0)
    optimizer.step()


def measure(repo, repeats, warmup):
    """Median seconds of a training step and of an inference batch, in this process."""
    import torch
    from fastreid.utils.events import EventStorage

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    _, model, optimizer, loop, batch = _case(repo)
    steps = []
    with EventStorage(0):
        for i in range(warmup + repeats):
            start = time.perf_counter()
            _step(model, optimizer, loop, batch)
            steps.append(time.perf_counter() - start)
    model.eval()
    inference = []
    with torch.no_grad():
        for i in range(warmup + 2 * repeats):  # a quarter of a step: twice the repeats for the same noise
            start = time.perf_counter()
            model(batch["images"])
            inference.append(time.perf_counter() - start)
    return {"step": statistics.median(steps[warmup:]), "infer": statistics.median(inference[warmup:])}


def profile(repeats, warmup):
    """Milliseconds per step of each phase (torch profiler ranges), and the data loader's time per batch."""
    import torch
    from fastreid.utils.events import EventStorage
    from torch.profiler import ProfilerActivity, record_function

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    cfg, model, optimizer, loop, batch = _case(repo)
    phases = ("forward", "zero_grad", "backward", "bookkeeping", "optimizer")

    def step():
        with record_function("forward"):
            loss_dict = model(batch)
            losses = sum(loss_dict.values())
        with record_function("zero_grad"):
            optimizer.zero_grad()
        with record_function("backward"):
            losses.backward()
        with record_function("bookkeeping"):
            loop._write_metrics(loss_dict, 0.0)
        with record_function("optimizer"):
            optimizer.step()

    with EventStorage(0):
        for _ in range(warmup):
            step()
        with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as profiler:
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            wall = (time.perf_counter() - start) / repeats
    totals = {e.key: e.cpu_time_total / 1000 / repeats for e in profiler.key_averages() if e.key in phases}
    result = {"step_ms": wall * 1000, **{f"{p}_ms": totals.get(p, float("nan")) for p in phases}}
    result["data_ms"] = _data_time(cfg) * 1000
    return result


def _data_time(cfg, batches=10):
    """Seconds per batch of the trainer's own training loader on the bundled images, in this process."""
    from mdpr_plugin.engine import Trainer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.NAMES = ("MiniMarket1501",)
    cfg.SOLVER.IMS_PER_BATCH = BATCH
    cfg.DATALOADER.NUM_INSTANCE = 2
    batches_iter = iter(Trainer.build_train_loader(cfg))
    next(batches_iter)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    return (time.perf_counter() - start) / batches


def compare(base, rounds, repeats, warmup):
    """Step and inference medians of this checkout and of ``base``, in fresh processes, alternating."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = {"base": [], "here": []}
    for round_index in range(rounds):
        for name, repo in (("base", base), ("here", here)):
            env = dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "measure", repo, "--repeats",
                                  str(repeats), "--warmup", str(warmup)], env=env, cwd=repo, check=True,
                                 capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            _log(f"round {round_index + 1}/{rounds} {name}: {runs[name][-1]}")
    medians = {name: {key: statistics.median(r[key] for r in results) for key in ("step", "infer")}
               for name, results in runs.items()}
    return {"runs": runs, "medians": medians,
            "step_ratio": medians["here"]["step"] / medians["base"]["step"],
            "infer_ratio": medians["here"]["infer"] / medians["base"]["infer"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("profile", "compare", "measure"))
    parser.add_argument("repo", nargs="?", help="compare: the other checkout; measure: the checkout measured")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "profile" and argv is None and "KINETO_LOG_LEVEL" not in os.environ:
        # torch's profiler (kineto) prints an "ERROR: ... gpuGetDeviceCount failed" line on a machine without a GPU,
        # and trace lines, though profiling the CPU works; its log level is read when torch loads, so run again
        # with it set
        os.execve(sys.executable, sys.orig_argv, dict(os.environ, KINETO_LOG_LEVEL="7"))
    from mdpr_plugin.errors import reporting_errors

    started = time.perf_counter()

    with reporting_errors("python -m benchmarks.training_step"):
        if args.command == "measure":
            result = measure(args.repo, args.repeats, args.warmup)
        elif args.command == "profile":
            result = profile(args.repeats, args.warmup)
        else:
            result = compare(os.path.abspath(args.repo), args.rounds, args.repeats, args.warmup)
    print(json.dumps(result))
    _log(f"{args.command} took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
