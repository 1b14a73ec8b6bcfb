"""The GPU check's timing table: every case of :mod:`benchmarks.gpu_cases` run once on one GPU for its numbers (ms
per iteration, images/s, peak memory, distance from the CPU's results), a row each, and the table in
docs/benchmarks.md. ``make gpu-check`` runs it after the ``gpu`` tests (tests/gpu), which check the same cases.

    python -m benchmarks.gpu_timing                 # on a CUDA machine: a line per case, then the table
    python -m benchmarks.gpu_timing --write-docs    # ... and the table in docs/benchmarks.md
    python -m benchmarks.gpu_timing --from-json F --write-docs   # the table of a saved run (--json F)

A case whose result is wrong is a FAILED row saying why, and the run goes on; the exit status is 1 when any failed.
On a machine without CUDA it says so in one line and exits 0. ``--device cpu --small`` runs the cases' CPU half at
tiny sizes (the tests do).
"""
import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch

from . import gpu_cases as cases
from .harness import GIB, Section, log, read_results

SECTION = Section("gpu-check")
PROG = "python -m benchmarks.gpu_timing"
DEMO_RUNS = (("train_net.py, configs/MDPR/demo.yml", False), ("train_net.py --num-gpus 1 (the launcher)", True))


@dataclass
class Result:
    check: str
    case: str
    status: str  # "ok", "FAILED" or "skipped"
    summary: str  # one line, the numbers in words
    numbers: dict = field(default_factory=dict)

    def line(self):
        return f"[{self.status}] {self.check}: {self.case}: {self.summary}"


def _run_one(check, case, run, summarise):
    if run is None:
        return Result(check, case, "skipped", summarise)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what libraries print is not the report
            numbers = run()
    except cases.CheckFailed as failure:
        return Result(check, case, "FAILED", str(failure), {"seconds_taken": time.perf_counter() - start})
    except Exception as error:  # a check that breaks must not stop the others
        traceback.print_exc(file=sys.stderr)
        message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        return Result(check, case, "FAILED", message, {"seconds_taken": time.perf_counter() - start})
    numbers["seconds_taken"] = time.perf_counter() - start
    return Result(check, case, "ok", summarise(numbers), numbers)


@dataclass
class Run:
    """One run of the table: its sizes and device, its temporary folder, and what later checks take from earlier
    ones (the training rows, the demo's weights)."""
    settings: cases.Settings
    device: torch.device
    workdir: str
    record: dict
    save: object  # save(record), after every row
    training: list = field(default_factory=list)
    demo_weights: str = None

    def row(self, check, case, run, summarise):
        """Run one case (``run`` None: a skipped row, ``summarise`` its reason): a line on stdout, the record saved."""
        log(f"{check}: {case} ...")
        result = _run_one(check, case, run, summarise)
        print(result.line(), flush=True)
        self.record["results"].append(asdict(result))
        self.record["finished"] = time.time()
        self.save(self.record)
        return result


# ----------------------------------------------------------------------------------------------- checks
def _training_summary(n):
    memory = "" if math.isnan(n["peak_gib"]) else (
        f", peak memory {n['peak_gib']:.1f} GiB ({n['warmup_peak_gib']:.1f} GiB in the warm-up, cuDNN autotuning "
        "included)")
    return (f"{n['ms_per_iteration']:.0f} ms/iteration ({n['images_per_s']:.0f} images/s){memory}, "
            f"{n['loss_terms']} loss terms finite, all {n['parameters']} trainable parameters changed")


def time_training(run):
    settings, device = run.settings, run.device
    cases.warm_up(device)
    trained = [*cases.TRAINING, *([cases.RESNET101] if settings.depth == "50x" else [])]
    run.training = [run.row("training", case.name(settings, device), lambda case=case: case.run(settings, device),
                            _training_summary) for case in trained]


def time_step(run):
    def summary(n):
        return (f"{n['loss_terms']} losses {n['loss_device']:.1e} and gradients {n['gradient_device']:.1e} from "
                f"float64 (the CPU's float32: {n['loss_cpu']:.1e} and {n['gradient_cpu']:.1e}); fused Adam's update "
                f"{n['update_difference']:.1e} from the CPU's (relative)")
    run.row("step", f"one training step of the demo's MDPR on {run.device}, float32 (TF32 off)",
            lambda: cases.step_case(run.device), summary)


def time_loader(run):
    trained = [r.numbers["images_per_s"] for r in run.training if r.status == "ok" and r.case.startswith("MDPR")
               and "AMP" in r.case]
    h, w = run.settings.size

    def summary(n):
        versus = f"; MDPR AMP trains {trained[0]:.0f} images/s" if trained else ""
        return f"{n['images_per_s']:.0f} images/s with {n['workers']} workers{versus}"
    run.row("loader", f"bundled JPEGs, {h}x{w}, batch {cases.LOADER_BATCH}",
            lambda: cases.loader_case(run.settings, run.device), summary)


def time_demo(run):
    def summary(n):
        return (f"{n['epochs']} epochs trained and evaluated in {n['seconds']:.0f} s (process start included): "
                f"mAP {n['mAP']:.1f}, Rank-1 {n['rank1']:.1f}")
    rows = [run.row("demo", name, lambda launcher=launcher: cases.demo_case(run.settings, run.device, run.workdir,
                                                                            launcher), summary)
            for name, launcher in DEMO_RUNS]
    run.demo_weights = next((r.numbers["weights"] for r in rows if r.status == "ok"), None)


def time_evaluation(run):
    device, weights = run.device, run.demo_weights
    if weights is None:
        run.row("evaluation", "demo weights", None, "the demo did not train")
        return

    def summary(n, what):
        return (f"features {n['relative_difference']:.1e} relative from {what}; mAP {n['mAP']:.2f} / Rank-1 "
                f"{n['rank1']:.2f} against {n['reference_mAP']:.2f} / {n['reference_rank1']:.2f}")
    run.row("evaluation", f"demo weights on {device} against the CPU",
            lambda: cases.evaluation_case(device, weights, False, feature_tolerance=cases.TF32_TOLERANCE),
            lambda n: summary(n, "the CPU's"))
    if device.type != "cuda":
        run.row("evaluation", "AMP inference against float32", None, "AMP needs CUDA")
        return
    run.row("evaluation", f"demo weights on {device} against the CPU, TF32 off",
            lambda: cases.evaluation_case(device, weights, False, tf32=False), lambda n: summary(n, "the CPU's"))
    run.row("evaluation", "AMP (float16) inference against float32",
            lambda: cases.evaluation_case(device, weights, True), lambda n: summary(n, "float32's"))


def time_reranking(run):
    from mdpr_plugin.evaluation.knn import faiss_gpu_available

    settings, device = run.settings, run.device
    size = "DukeMTMC-sized" if settings.rerank_shape == "duke" else "small"
    what = f"{size} synthetic set, {settings.rerank_dim}-d"
    reference = []

    def cpu_search():
        reference[:] = cases.rerank_case(settings, "gemm")
        return reference[0]
    run.row("re-ranking", f"{what}, CPU search (gemm)", cpu_search,
            lambda n: f"{n['seconds']:.1f} s, mAP {n['mAP']:.2f}, Rank-1 {n['rank1']:.2f} ({n['queries']} x "
                      f"{n['gallery']})")

    def summary(n):
        return (f"{n['seconds']:.1f} s against the CPU's {n['reference_seconds']:.1f} s; mAP {n['mAP']:.3f} / Rank-1 "
                f"{n['rank1']:.3f} (CPU {n['reference_mAP']:.3f} / {n['reference_rank1']:.3f}); same top-10 for "
                f"{100 * n['same_top10']:.2f} % of queries, distances within {n['max_distance_difference']:.1e}")
    searches = [("torch", f"torch search on the {'GPU' if device.type == 'cuda' else 'CPU'}")]
    if device.type == "cuda":
        searches.append(("faiss-gpu", "faiss-gpu search"))
    for knn, name in searches:
        if not reference:
            run.row("re-ranking", f"{what}, {name}", None, "the CPU reference did not run")
        elif knn == "faiss-gpu" and not faiss_gpu_available():
            run.row("re-ranking", f"{what}, {name}", None,
                    "faiss-gpu is not installed here (this faiss has no GPU support)")
        else:
            run.row("re-ranking", f"{what}, {name}", lambda k=knn: cases.rerank_case(settings, k, reference)[0],
                    summary)


def time_extractor(run):
    from mdpr_plugin.onnx_runtime import onnx_cuda_available

    settings, device, workdir = run.settings, run.device, run.workdir
    h, w = settings.size

    def summary(n):
        rates = ", ".join(f"{rate:.0f} at batch {batch}" for batch, rate in n["images_per_s"].items())
        return f"features {n['relative_difference']:.1e} relative from the CPU's; images/s: {rates}"
    name = f"FeatureExtractor(device='{device}'), MDPR R{settings.depth[:-1]} {h}x{w}"
    run.row("extractor", name, lambda: cases.extractor_case(settings, device, workdir, onnx=False), summary)
    if device.type == "cuda":
        run.row("extractor", name + ", TF32 off",
                lambda: cases.extractor_case(settings, device, workdir, False, tf32=False), summary)
    name = f"FeatureExtractor(onnx=..., device='{device}')"
    if device.type == "cuda" and not onnx_cuda_available():
        run.row("extractor", name, None, "ONNX Runtime here has no CUDA provider (onnxruntime-gpu is not installed)")
    else:
        run.row("extractor", name, lambda: cases.extractor_case(settings, device, workdir, onnx=True), summary)


# in the table's order; the loader's row names the training's images/s, the evaluation takes the demo's weights
TIMED = (("training", time_training), ("step", time_step), ("loader", time_loader), ("demo", time_demo),
         ("evaluation", time_evaluation), ("re-ranking", time_reranking), ("extractor", time_extractor))
CHECKS = tuple(name for name, _ in TIMED)


# -------------------------------------------------------------------------------------------------- run
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
    """Every check in order (``only``: a subset), a line on stdout as each case ends; ``save(record)`` after each."""
    record = {"command": " ".join([PROG, *sys.argv[1:]]), "started": time.time(), "machine": _machine(device),
              "settings": asdict(settings), "results": []}
    with tempfile.TemporaryDirectory(prefix="mdpr-gpu-check-") as workdir:
        run = Run(settings, device, workdir, record, save)
        for name, timed in TIMED:
            if not only or name in only:
                timed(run)
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


def no_cuda_line(prog):
    return (f"{prog}: CUDA is not available on this machine (torch {torch.__version__}): nothing to check. "
            "Run it on a machine with an NVIDIA GPU.")


def parse_args(argv=None, prog=PROG):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device measured (default cuda)")
    parser.add_argument("--small", action="store_true", help="tiny sizes: the CPU half of every case, for tests")
    parser.add_argument("--only", nargs="+", choices=CHECKS, help="run these checks only")
    parser.add_argument("--write-docs", action="store_true", help="write the table into --output's GPU section")
    parser.add_argument("--output", default=os.path.join("docs", "benchmarks.md"),
                        help="markdown file for --write-docs")
    parser.add_argument("--json", help="write the results here as JSON (after every case)")
    parser.add_argument("--from-json", nargs="+", metavar="FILE",
                        help="do not run: report the results saved with --json (several runs: each check's rows "
                             "from the last file that has it)")
    return parser.parse_args(argv)


def main(argv=None):
    from mdpr_plugin.errors import InputError, reporting_errors

    args = parse_args(argv)
    with reporting_errors(PROG):
        if args.from_json:
            records = [read_results(path) for path in args.from_json]
        else:
            try:
                device = torch.device(args.device)
            except RuntimeError as error:
                raise InputError(f"--device {args.device!r} is not a torch device ({error})") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                print(no_cuda_line(PROG))
                return 0
            import mdpr_plugin  # noqa: F401  (registers MDPR)

            def save(record):
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(record, f, indent=1)
            records = [run_checks(cases.SMALL if args.small else cases.Settings(), device, args.only, save)]
    text = render(records)
    print()
    print(text)
    if args.write_docs:
        SECTION.write(args.output, SECTION.wrap(text.splitlines()))
        log(f"wrote {args.output}")
    return 1 if any(r["status"] == "FAILED" for r in merged_results(records)) else 0


if __name__ == "__main__":
    sys.exit(main())
