"""Model speed benchmark: MDPR's training step and inference, with fastreid's Baseline and MGN as references.

    python -m mdpr_plugin.benchmarks.model --config-file configs/MDPR/market.yml            # CPU target
    python -m mdpr_plugin.benchmarks.model --config-file configs/MDPR/market.yml --size 384x192 \\
        --batch 64 MODEL.DEVICE cuda                                                         # GPU target
    python -m mdpr_plugin.benchmarks.model --small                                           # seconds, for CI

Everything runs at the same input size and batch, in one run. The MDPR config is the config file with
its ``KEY VALUE`` overrides on top of the issue's CPU target (ResNet-50-IBN, E=512, 751 classes; no
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
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import time

from .evaluation import GIB
from .report import THREAD_VARIABLES, OtherLoad, limit_threads, log, write_section

SECTION_START = "<!-- model-benchmark:start -->"
SECTION_END = "<!-- model-benchmark:end -->"
ARCHS = ("MDPR", "Baseline", "MGN")
# The CPU target; the user's KEY VALUE pairs come after these and override them.
TARGET_OPTS = ["MODEL.BACKBONE.DEPTH", "50x", "MODEL.BACKBONE.WITH_IBN", "True",
               "MODEL.BACKBONE.EMBEDDING_DIM", "512", "MODEL.HEADS.NUM_CLASSES", "751"]
# --small: the smallest bottleneck ResNet (MGN needs bottlenecks), E=16, 4 classes.
SMALL_OPTS = ["MODEL.BACKBONE.DEPTH", "50x", "MODEL.BACKBONE.WITH_IBN", "True",
              "MODEL.BACKBONE.EMBEDDING_DIM", "16", "MODEL.HEADS.NUM_CLASSES", "4"]
TARGETS = {"inference_share": 0.75, "train_share": 0.50, "speedup": 1.5, "map_points": 0.5}


# -------------------------------------------------------------------------------------- plan
def default_modes(args):
    from .model_modes import CPU_MODES, GPU_MODES

    return list(GPU_MODES if _wants_cuda(args) else CPU_MODES)


def _wants_cuda(args):
    """Whether the cases will run on CUDA: the config's MODEL.DEVICE (fastreid's default is cuda), if
    this machine has it."""
    from ..devices import resolve_device
    from .model_case import build_config

    cfg = build_config({"config_file": args.config_file, "opts": _opts(args), "size": [1, 1], "arch": "MDPR"})
    return resolve_device(cfg.MODEL.DEVICE).type == "cuda"


def _opts(args):
    return (SMALL_OPTS if args.small else TARGET_OPTS) + list(args.opts)


def plan(args):
    """The cases, MDPR's float32 eager first (the reference of every comparison)."""
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
                cases.append({**base, "arch": arch, "mode": mode, "phase": phase, "count_flops": mode == "fp32"})
    return cases


# ------------------------------------------------------------------------------------ workers
def _worker_env(threads):
    return dict(os.environ, **{v: str(threads) for v in THREAD_VARIABLES})


def _run_isolated(argument, threads):
    command = [sys.executable, "-m", "mdpr_plugin.benchmarks.model", "--worker", json.dumps(argument)]
    proc = subprocess.run(command, env=_worker_env(threads), stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return {**argument, "failed": reason}
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


def run_all(args, log):
    import numpy as np

    feature_dir = os.path.abspath(args.feature_dir or os.path.join("logs", "model-benchmark-features"))
    os.makedirs(feature_dir, exist_ok=True)
    started = time.time()
    other_load = OtherLoad(started)
    run = {"started": started, "load": [os.getloadavg()[0]], "threads": args.threads, "small": args.small,
           "command": _command(args), "repeats": args.repeats, "warmup": args.warmup, "budget": args.budget}
    device = "cuda" if _wants_cuda(args) else "cpu"
    call = (lambda a: _run_isolated(a, args.threads)) if args.isolate else run_worker
    log("measuring the machine's float32 ceiling ...")
    ceiling = call({"ceiling": True, "device": device, "small": args.small, "threads": args.threads})
    log("  " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in ceiling.items()))
    results = []
    for case in plan(args):
        if case["arch"] == "MDPR" and case["phase"] == "infer":
            case["features_path"] = os.path.join(feature_dir, f"{case['mode']}.npy")
        log(f"{case['arch']} {case['mode']} {case['phase']} ...")
        result = call(case)
        results.append(result)
        log("  " + _summary(result))
    reference = os.path.join(feature_dir, "fp32.npy")
    for r in results:
        path = r.get("features_path")
        if path and "mAP" in r and os.path.exists(reference) and os.path.exists(path):
            ref, mine = np.load(reference), np.load(path)
            r["feature_rel_error"] = float(np.linalg.norm(mine - ref) / np.linalg.norm(ref))
    finished = time.time()
    run.update(finished=finished, load=[run["load"][0], os.getloadavg()[0]], other_cpu_share=other_load.share(finished))
    return {"machine": machine(), "run": run, "ceiling": ceiling, "results": results}


def _summary(r):
    if "failed" in r or "unavailable" in r:
        return r.get("failed") or f"unavailable: {r['unavailable']}"
    if r["phase"] == "train":
        return f"step {r['step_s']:.3f} s (first {r['first_s']:.2f} s)"
    return f"{r['images_per_s']:.1f} images/s (first {r['first_s']:.2f} s), mAP {100 * r['mAP']:.2f}"


def _command(args):
    parts = ["python -m mdpr_plugin.benchmarks.model", "--config-file", args.config_file,
             "--size", "x".join(map(str, args.size)), "--batch", str(args.batch), "--threads", str(args.threads)]
    if args.small:
        parts.append("--small")
    return " ".join(parts + [str(o) for o in args.opts])


# ------------------------------------------------------------------------------------ report
def machine():
    import platform

    import torch

    info = {"cpu": "unknown CPU", "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        info["memory"] = int(f.readline().split()[1]) * 1024
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


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
    ("mAP (%)", "mAP", "%{:.2f}"), ("Rank-1 (%)", "rank1", "%{:.2f}"), ("mAP change (points)", "map_change", "%{:+.2f}"),
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


def targets(data):
    """The issue's targets against this run's MDPR numbers."""
    by_mode = {r["mode"]: r for r in rows(data) if r["arch"] == "MDPR"}
    fp32 = by_mode.get("fp32", {})

    def verdict(ok):
        return "**met**" if ok else "**missed**"

    lines = []
    if fp32.get("infer_share") is not None:
        lines.append(f"- float32 inference at >= {TARGETS['inference_share']:.0%} of the ceiling: "
                     f"{fp32['infer_share']:.0%}, {verdict(fp32['infer_share'] >= TARGETS['inference_share'])}.")
    if fp32.get("train_share") is not None:
        lines.append(f"- training step at >= {TARGETS['train_share']:.0%} of the ceiling: "
                     f"{fp32['train_share']:.0%}, {verdict(fp32['train_share'] >= TARGETS['train_share'])}.")
    candidates = [r for r in by_mode.values() if r.get("infer_speedup") is not None and r["mode"] != "fp32"]
    if candidates:
        best = max(candidates, key=lambda r: r["infer_speedup"])
        change = best.get("map_change") or 0.0
        ok = best["infer_speedup"] >= TARGETS["speedup"] and abs(100 * change) <= TARGETS["map_points"]
        lines.append(f"- fastest inference mode >= {TARGETS['speedup']}x float32 eager with mAP within "
                     f"{TARGETS['map_points']} points: {best['mode']}, {best['infer_speedup']:.2f}x, mAP change "
                     f"{100 * change:+.2f} points, {verdict(ok)}.")
    return lines


METHOD = (
    "Training step: forward + backward + Adam step on one fixed synthetic batch (B/4 identities of 4 "
    "images), median of the timed repeats (up to {repeats}, at least 2{limit}) "
    "after an untimed warm-up ({warmup} calls, 1 for a mode whose first call is slow); the \"first call\" column is the "
    "first warm-up call (with `compile`, the compilation) and, for ONNX Runtime, the export. Inference: "
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


def _busy_warning(run, cores):
    # With more runnable threads than cores, OpenMP's threads wait for each other at every barrier:
    # times then vary by several x from call to call and against the (short) ceiling measurement.
    share = run.get("other_cpu_share")
    if share is None:  # no /proc/stat: fall back on the load average at the start
        busy, what = run["load"][0] > 0.5 * cores, "load average above half the core count at the start"
    else:
        busy, what = share > 0.1, f"other processes used {100 * share:.0f} % of the CPU time"
    if not busy:
        return []
    return [f"**Other jobs shared the CPU during this run ({what}): the times, shares of the ceiling and "
            "speed-ups below are not reliable; rerun on a quiet machine.**", ""]


def _other_share_text(run):
    share = run.get("other_cpu_share")
    if share is None:
        return "CPU time of other processes not measured"
    return f"other processes used {100 * share:.1f} % of the machine's CPU time during the run"


def render(data):
    m, run, ceiling = data["machine"], data["run"], data["ceiling"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["started"]))
    minutes = (run["finished"] - run["started"]) / 60
    load = run["load"]
    gpu = f"; GPU {m['gpu']}" if m.get("gpu") else ""
    ort = f", onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else ""
    mdpr = next((r for r in data["results"] if r["arch"] == "MDPR" and "parameters" in r), None)
    return "\n".join([
        SECTION_START,
        "## Model speed benchmark",
        "",
        f"Generated by `{run['command']}` on {when} ({minutes:.1f} min).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory'] / GIB:.1f} GiB memory{gpu}; Python "
        f"{m['python']}, torch {m['torch']}{ort}; torch limited to {run['threads']} threads. Load average "
        f"(1 min) at start / end: {load[0]:.2f} / {load[1]:.2f} (it counts the benchmark's own threads); "
        f"{_other_share_text(run)} (times are wall-clock).",
        "",
        *_busy_warning(run, m["cores"]),
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
        "### Targets (issue 7)",
        "",
        *targets(data),
        "",
        SECTION_END,
    ])


# -------------------------------------------------------------------------------------- main
def _size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 128x64 (got {text!r})") from None
    return h, w


def parse_args(argv=None):
    from .model_modes import MODES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/MDPR/market.yml", metavar="FILE")
    parser.add_argument("--size", type=_size, help="input HxW (default 128x64; --small 96x32)")
    parser.add_argument("--batch", type=int, help="images per batch (default 16; --small 4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=MODES,
                        help="MDPR's modes (default: the device's; fp32 always runs)")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--warmup", type=int, help="untimed calls (default 3; --small 1)")
    parser.add_argument("--repeats", type=int, help="timed calls, median reported (default 7; --small 2)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of timed calls after which a case stops repeating (at least 2 calls)")
    parser.add_argument("--small", action="store_true", help="tiny input, few repeats: seconds, for tests")
    parser.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                        help="a fresh process per case (default, except with --small)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false")
    parser.add_argument("--write-docs", action="store_true", help="(re)write this benchmark's section of --output")
    parser.add_argument("--output", default="docs/benchmarks.md")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--from-json", help="do not run: render results saved with --json")
    parser.add_argument("--feature-dir", help="where the modes' eval features are kept "
                                              "(default logs/model-benchmark-features)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.worker:
        return args
    args.size = args.size or ((96, 32) if args.small else (128, 64))  # MGN cuts its map in 3 rows
    args.batch = args.batch or (4 if args.small else 16)
    args.warmup = args.warmup or (1 if args.small else 3)
    args.repeats = args.repeats or (2 if args.small else 7)
    if args.isolate is None:
        args.isolate = not args.small
    args.modes = args.modes or default_modes(args)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        print(json.dumps(run_worker(json.loads(args.worker))))
        return None
    limit_threads(args.threads)
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
    else:
        data = run_all(args, log)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(data, f, indent=1)
    section = render(data)
    print(section)
    if args.write_docs:
        write_section(args.output, section, SECTION_START, SECTION_END)
        log(f"wrote {args.output}")
    return data


if __name__ == "__main__":
    main()
