"""Model speed benchmark: MDPR's training step and inference, with fastreid's Baseline and MGN as references.

    python -m benchmarks.model --config-file configs/MDPR/market.yml     # the CPU setting of docs/benchmarks.md
    python -m benchmarks.model --config-file configs/MDPR/market.yml --size 384x192 \\
        --batch 64 MODEL.DEVICE cuda                                      # a GPU setting
    python -m benchmarks.model --small                                    # minutes: tiny input, no compile

Everything runs at the same input size and batch, in one run. The MDPR config is the config file with
its ``KEY VALUE`` overrides on top of the CPU setting (ResNet-50-IBN, E=512, 751 classes; no
pretrained weights, which do not change the speed); Baseline and MGN use the same backbone, input,
norm and loss settings under fastreid's own meta-architectures. For each model and mode
(``model_modes.py``) it reports:

* training step time: forward + backward + Adam step on a fixed synthetic batch, the median of the
  timed repeats after an untimed warm-up (whose first call is reported separately: compilation);
* inference images/s on the same batch in eval mode (median batch time);
* peak memory the phase added: on the CPU the process's resident high-water (VmHWM, reset before the
  phase) minus the resident size before it, each phase of each case in a fresh process; on CUDA
  ``torch.cuda.max_memory_allocated`` above what was allocated before;
* FLOPs per image from ``torch.utils.flop_counter.FlopCounterMode`` on the eager float32 model
  (convolutions and matmuls; a multiply-add counts 2 FLOPs; elementwise work and norms not counted),
  and the achieved FLOP/s as a share of the machine's measured ceiling (``ceiling.py``);
* for MDPR, the eval features of the bundled mini Market-1501 query / gallery (32 + 32 real images):
  their relative error against float32 eager (Frobenius norm of the difference over that of the
  float32 features) and mAP / Rank-1 (cosine). The model is untrained (fixed seed, no pretrained
  weights): the metrics only show whether a mode changes the ranking, not MDPR's accuracy.

The section is printed on stdout (``--write-docs`` also writes it into ``--output``), progress on stderr;
the exit status is 0 on success, 1 on bad input (one line on stderr: a missing config file, an unknown
key), 2 on a malformed argument. ``--small`` checks that every path runs, in minutes: one thread, and
without ``compile`` (and ``bf16`` on a CPU) unless ``--modes`` asks for them.
"""
import argparse
import logging
import os

from mdpr_plugin.tools.common import check_output_folder, positive_int
from .harness import GIB, Benchmark, Goal, Section, goals_lines, log, machine, parser, \
    recording_run, run_cases, run_header, run_isolated, saver

SECTION = Section("model-benchmark")
MODULE = "benchmarks.model"
PROG = "python -m " + MODULE
ARCHS = ("MDPR", "Baseline", "MGN")
# The CPU setting of docs/benchmarks.md; the user's KEY VALUE pairs come after these and override them.
CPU_OPTS = ["MODEL.BACKBONE.DEPTH", "50x", "MODEL.BACKBONE.WITH_IBN", "True",
            "MODEL.BACKBONE.EMBEDDING_DIM", "512", "MODEL.HEADS.NUM_CLASSES", "751"]
# --small: the smallest bottleneck ResNet (MGN needs bottlenecks), E=16, 4 classes.
SMALL_OPTS = ["MODEL.BACKBONE.DEPTH", "50x", "MODEL.BACKBONE.WITH_IBN", "True",
              "MODEL.BACKBONE.EMBEDDING_DIM", "16", "MODEL.HEADS.NUM_CLASSES", "4"]
# The project's speed goals: shares of the measured float32 ceiling, and a faster inference mode that
# keeps the ranking.
GOALS = {"infer_share": 0.75, "train_share": 0.50, "speedup": 1.5, "map_points": 0.5}


# -------------------------------------------------------------------------------------- plan
def default_modes(args):
    """The device's modes. ``--small`` leaves out ``compile``, whose compilation takes minutes, and on a CPU
    ``bf16``, which a CPU without bf16 units emulates (the small training step then measured 10x float32's)."""
    from .model_modes import CPU_MODES, GPU_MODES

    cuda = _wants_cuda(args)
    slow = ()
    if args.small:
        slow = ("compile",) if cuda else ("compile", "bf16")
    return [m for m in (GPU_MODES if cuda else CPU_MODES) if m not in slow]


def _wants_cuda(args):
    """Whether the cases will run on CUDA: the config's MODEL.DEVICE (fastreid's default is cuda), if
    this machine has it."""
    from mdpr_plugin.devices import resolve_device
    from .model_case import build_config

    cfg = build_config({"config_file": args.config_file, "opts": _opts(args), "size": [1, 1], "arch": "MDPR"})
    return resolve_device(cfg.MODEL.DEVICE).type == "cuda"


def _opts(args):
    return (SMALL_OPTS if args.small else CPU_OPTS) + list(args.opts)


def plan(args, feature_dir):
    """The cases, MDPR's float32 eager first (the reference of every comparison); MDPR's inference cases
    keep their eval features in ``feature_dir``."""
    from .model_modes import INFERENCE_ONLY

    base = {"config_file": args.config_file, "opts": _opts(args),
            "size": list(args.size), "batch": args.batch, "threads": args.threads, "warmup": args.warmup,
            "repeats": args.repeats, "budget": args.budget, "seed": 0}
    modes = ["fp32"] + [m for m in args.modes if m != "fp32"]
    cases = []
    for arch in args.archs:
        for mode in modes if arch == "MDPR" else ["fp32"]:  # the references run float32 eager only
            for phase in ("train", "infer"):
                if phase == "train" and mode in INFERENCE_ONLY:
                    continue
                case = {**base, "arch": arch, "mode": mode, "phase": phase, "count_flops": mode == "fp32"}
                if arch == "MDPR" and phase == "infer":
                    case["features_path"] = os.path.join(feature_dir, f"{mode}.npy")
                cases.append(case)
    return cases


# ------------------------------------------------------------------------------------ workers
def run_worker(argument):
    """A case, or the ceiling measurement (``{"ceiling": ...}``), in this process."""
    import torch

    from .model_modes import ModeUnavailable

    if "ceiling" in argument:
        from .ceiling import measure_ceiling

        torch.set_num_threads(argument["threads"])
        return measure_ceiling(argument["device"], small=argument["small"])
    from .model_case import run_case

    try:
        return run_case(argument)
    except ModeUnavailable as error:
        return {**argument, "unavailable": str(error)}


def feature_folder(args):
    return os.path.abspath(args.feature_dir or os.path.join("logs", "model-benchmark-features"))


def run_all(args):
    """The ceiling, then every case of ``plan``; the results with the machine and the run's record."""
    import numpy as np

    feature_dir = feature_folder(args)
    os.makedirs(feature_dir, exist_ok=True)
    device = "cuda" if _wants_cuda(args) else "cpu"
    call = (lambda argument: run_isolated(MODULE, argument, args.threads)) if args.isolate else run_worker
    info = machine("onnxruntime")
    with recording_run(command=_command(args), threads=args.threads, small=args.small, repeats=args.repeats,
                       warmup=args.warmup, budget=args.budget) as run:
        log("measuring the machine's float32 ceiling ...")
        ceiling = call({"ceiling": True, "device": device, "small": args.small, "threads": args.threads})
        log("  " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in ceiling.items()))
        save = saver(args.json, machine=info, run=run, ceiling=ceiling)
        results = run_cases(plan(args, feature_dir), call, lambda c: f"{c['arch']} {c['mode']} {c['phase']}",
                            _summary, save)
        reference = os.path.join(feature_dir, "fp32.npy")
        for r in results:
            path = r.get("features_path")
            if path and "mAP" in r and os.path.exists(reference) and os.path.exists(path):
                ref, mine = np.load(reference), np.load(path)
                r["feature_rel_error"] = float(np.linalg.norm(mine - ref) / np.linalg.norm(ref))
    save(results)
    return {"machine": info, "run": run, "ceiling": ceiling, "results": results}


def _summary(r):
    if "failed" in r or "unavailable" in r:
        return r.get("failed") or f"unavailable: {r['unavailable']}"
    if r["phase"] == "train":
        return f"step {r['step_s']:.3f} s (first {r['first_s']:.2f} s)"
    return f"{r['images_per_s']:.1f} images/s (first {r['first_s']:.2f} s), mAP {100 * r['mAP']:.2f}"


def _command(args):
    parts = [PROG, "--config-file", args.config_file,
             "--size", "x".join(map(str, args.size)), "--batch", str(args.batch), "--threads", str(args.threads)]
    if args.small:
        parts.append("--small")
    return " ".join(parts + [str(o) for o in args.opts])


# ------------------------------------------------------------------------------------ report
def _find(results, arch, mode, phase):
    for r in results:
        if (r["arch"], r["mode"], r["phase"]) == (arch, mode, phase) and "failed" not in r and "unavailable" not in r:
            return r
    return None


def rows(data):
    """One dict per (model, mode) with every reported number; missing numbers are None."""
    results, ceiling = data["results"], data["ceiling"]["ceiling"]
    out = []
    seen = []
    for r in results:
        key = (r["arch"], r["mode"])
        if key not in seen:
            seen.append(key)
    for arch, mode in seen:
        train, infer = _find(results, arch, mode, "train"), _find(results, arch, mode, "infer")
        ref_train, ref_infer = _find(results, arch, "fp32", "train"), _find(results, arch, "fp32", "infer")
        mdpr_infer = _find(results, "MDPR", "fp32", "infer")
        batch = (train or infer or {}).get("batch")
        row = {"arch": arch, "mode": mode, "notes": [r.get("unavailable") or r.get("failed") for r in results
                                                     if (r["arch"], r["mode"]) == (arch, mode)
                                                     and ("unavailable" in r or "failed" in r)]}
        if train:
            flops = ref_train and ref_train.get("flops")
            row.update(step_s=train["step_s"], train_images_s=batch / train["step_s"], train_memory=train["memory"],
                       train_first_s=train["first_s"],
                       train_flops_image=flops / batch if flops else None,
                       train_share=flops / train["step_s"] / ceiling if flops else None,
                       train_speedup=ref_train["step_s"] / train["step_s"] if ref_train else None)
        if infer:
            flops = ref_infer and ref_infer.get("flops")
            row.update(images_s=infer["images_per_s"], infer_memory=infer["memory"], infer_first_s=infer["first_s"],
                       export_s=infer.get("export_s"),
                       infer_flops_image=flops / batch if flops else None,
                       infer_share=flops / infer["batch_s"] / ceiling if flops else None,
                       infer_speedup=infer["images_per_s"] / ref_infer["images_per_s"] if ref_infer else None,
                       mAP=infer.get("mAP"), rank1=infer.get("rank1"),
                       feature_rel_error=infer.get("feature_rel_error"),
                       map_change=(infer["mAP"] - mdpr_infer["mAP"]) if arch == "MDPR" and mdpr_infer else None,
                       parameters=infer["parameters"], feature_dim=infer.get("feature_dim"))
        out.append(row)
    return out


COLUMNS = [  # (header, row key, format)
    ("model", "arch", "{}"), ("mode", "mode", "{}"),
    ("train step (s)", "step_s", "{:.3f}"), ("train images/s", "train_images_s", "{:.1f}"),
    ("train speed-up", "train_speedup", "{:.2f}x"), ("train GFLOP/image", "train_flops_image", "G{:.2f}"),
    ("train % of ceiling", "train_share", "%{:.0f}"), ("train peak memory added (GiB)", "train_memory", "M{:.2f}"),
    ("inference images/s", "images_s", "{:.1f}"), ("inference speed-up", "infer_speedup", "{:.2f}x"),
    ("inference GFLOP/image", "infer_flops_image", "G{:.2f}"), ("inference % of ceiling", "infer_share", "%{:.0f}"),
    ("inference peak memory added (GiB)", "infer_memory", "M{:.3f}"),
    ("first call / export (s)", None, None),
    ("feature rel. error vs fp32", "feature_rel_error", "{:.1e}"),
    ("mAP (%)", "mAP", "%{:.2f}"), ("Rank-1 (%)", "rank1", "%{:.2f}"),
    ("mAP change (points)", "map_change", "%{:+.2f}"),
]


def _cell(value, fmt):
    if value is None:
        return ""
    if fmt.startswith("G"):
        return fmt[1:].format(value / 1e9)
    if fmt.startswith("%"):
        return fmt[1:].format(100 * value)
    if fmt.startswith("M"):
        return fmt[1:].format(value / GIB)
    return fmt.format(value)


def _first_call(row):
    parts = []
    if row.get("train_first_s") is not None:
        parts.append(f"train {row['train_first_s']:.1f}")
    if row.get("export_s") is not None:
        parts.append(f"export {row['export_s']:.1f}")
    if row.get("infer_first_s") is not None:
        parts.append(f"infer {row['infer_first_s']:.1f}")
    return ", ".join(parts)


def table(data):
    header = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(COLUMNS)]
    for row in rows(data):
        cells = [_first_call(row) if key is None else _cell(row.get(key), fmt) for _, key, fmt in COLUMNS]
        if row["notes"]:
            cells[2] = "not run: " + "; ".join(row["notes"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(data):
    """The project's speed goals against this run's MDPR numbers."""
    by_mode = {r["mode"]: r for r in rows(data) if r["arch"] == "MDPR"}
    fp32 = by_mode.get("fp32", {})
    found = []
    for phase, key in (("Float32 inference", "infer_share"), ("Float32 training step", "train_share")):
        if fp32.get(key) is not None:
            found.append(Goal(f"{phase} at >= {100 * GOALS[key]:.0f} % of the measured float32 ceiling", fp32[key],
                              f"{100 * fp32[key]:.0f} %", fp32[key] >= GOALS[key]))
    candidates = [r for r in by_mode.values() if r.get("infer_speedup") is not None and r["mode"] != "fp32"]
    if candidates:
        best = max(candidates, key=lambda r: r["infer_speedup"])
        change = best.get("map_change") or 0.0
        ok = best["infer_speedup"] >= GOALS["speedup"] and abs(100 * change) <= GOALS["map_points"]
        found.append(Goal(f"An inference mode >= {GOALS['speedup']}x float32 eager with mAP within "
                          f"{GOALS['map_points']} points", best["infer_speedup"],
                          f"fastest {best['mode']}, {best['infer_speedup']:.2f}x, "
                          f"mAP change {100 * change:+.2f} points", ok))
    return found


METHOD = (
    "Training step: forward + backward + Adam step on one fixed synthetic batch (B/4 identities of 4 "
    "images), median of the timed repeats (up to {repeats}, at least 2{limit}) "
    "after an untimed warm-up ({warmup} calls, 1 for a mode whose first call is slow); the \"first call\" column is "
    "the first warm-up call (with `compile`, the compilation) and, for ONNX Runtime, the export. Inference: "
    "eval mode, no_grad, the same batch. Each phase of each (model, mode) runs in a fresh process; "
    "\"peak memory added\" is the resident high-water during the phase minus the resident size before it "
    "(CPU) or the allocator's peak above the memory in use before it (CUDA). GFLOP/image: "
    "`torch.utils.flop_counter.FlopCounterMode` on the float32 eager model, a multiply-add counted as 2 "
    "FLOPs, convolutions and matmuls only; \"% of ceiling\" is those FLOPs per second over the ceiling "
    "above (the same FLOPs for every mode of a model, so it also shows a mode's gain). Speed-ups are "
    "against the same model's float32 eager row. Feature error and mAP / Rank-1: MDPR's eval features of "
    "the bundled mini Market-1501 query and gallery (32 + 32 real images, cosine distance) from an "
    "untrained model (fixed seed, no pretrained weights): they show whether a mode changes the features "
    "and the ranking, not MDPR's accuracy.")


def render(data):
    """This benchmark's markdown section, from the data ``run_all`` returns."""
    info, run, ceiling = data["machine"], data["run"], data["ceiling"]
    software = [f"onnxruntime {info['onnxruntime']}"] if info.get("onnxruntime") else []
    mdpr = next((r for r in data["results"] if r["arch"] == "MDPR" and "parameters" in r), None)
    return SECTION.wrap([
        *run_header("Model speed benchmark", run, info, software, "torch"),
        f"Input {'x'.join(map(str, (mdpr or data['results'][0])['size']))}, batch {data['results'][0]['batch']}"
        + (f"; MDPR has {mdpr['parameters'] / 1e6:.1f} M parameters." if mdpr else "."),
        "",
        "Float32 ceiling (multiply-add = 2 FLOPs, best of repeats): "
        + ", ".join(f"{name} {ceiling[name] / 1e9:.0f} GFLOP/s" for name in ("matmul", "conv", "conv_channels_last"))
        + f"; ceiling {ceiling['ceiling'] / 1e9:.0f} GFLOP/s. Matmul: 2048 x 2048 (4096 on a GPU); conv: 3x3, "
          "256 -> 256 channels, 16 x 64 x 32 maps.",
        "",
        METHOD.format(repeats=run.get("repeats", "?"), warmup=run.get("warmup", "?"),
                      limit=(f", fewer once a case has spent {run['budget']:.0f} s"
                             if run.get("budget", float("inf")) < float("inf") else "")),
        "",
        table(data),
        "",
        *goals_lines(goals(data)),
        "",
    ])


# -------------------------------------------------------------------------------------- main
def _size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        h = w = 0
    if min(h, w) < 1:  # a 0 reached the model as a RuntimeError
        raise argparse.ArgumentTypeError(f"size must be HxW of whole numbers of at least 1, e.g. 128x64 (got "
                                         f"{text!r})")
    return h, w


def parse_args(argv=None):
    """The arguments, defaults filled in (under ``--worker`` and ``--from-json`` none are needed)."""
    from .model_modes import MODES

    options = parser(PROG, __doc__, threads="2; --small 1", repeats="7; --small 2", budget=60.0)
    options.add_argument("--config-file", default="configs/MDPR/market.yml", metavar="FILE")
    options.add_argument("--size", type=_size, help="input HxW (default 128x64; --small 96x32)")
    options.add_argument("--batch", type=positive_int, help="images per batch (default 16; --small 4)")
    options.add_argument("--modes", nargs="+", choices=MODES,
                         help="MDPR's modes (default: the device's; --small: not compile, nor bf16 on a CPU; "
                              "fp32 always runs)")
    options.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    options.add_argument("--warmup", type=positive_int, help="untimed calls (default 3; --small 1)")
    options.add_argument("--write-docs", action="store_true", help="(re)write this benchmark's section of --output")
    options.add_argument("--feature-dir", help="where the modes' eval features are kept "
                                               "(default logs/model-benchmark-features)")
    options.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = options.parse_args(argv)
    if args.worker or args.from_json:
        return args
    # --small checks that every path runs: one thread, because two OpenMP threads that share two cores with
    # another job wait for each other at every barrier (MDPR's small training step beside one busy process:
    # 2.6 s with two threads, 1.3 s with one; on a quiet machine 0.9 and 1.4 s)
    args.threads = args.threads or (1 if args.small else 2)
    args.size = args.size or ((96, 32) if args.small else (128, 64))  # MGN cuts its map in 3 rows
    args.batch = args.batch or (4 if args.small else 16)
    args.warmup = args.warmup or (1 if args.small else 3)
    args.repeats = args.repeats or (2 if args.small else 7)
    if args.isolate is None:
        args.isolate = not args.small
    args.modes = args.modes or default_modes(args)
    check_output_folder(feature_folder(args), "--feature-dir")
    return args


BENCHMARK = Benchmark(PROG, parse_args, run_worker, run_all, render, SECTION,
                      writes_docs=lambda args: args.write_docs, worker_log_level=logging.WARNING)


def main(argv=None):
    """0 on success (see the module's docstring)."""
    return BENCHMARK.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
