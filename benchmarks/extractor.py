"""Throughput of :class:`mdpr_plugin.FeatureExtractor`: images/s for image files and for the person boxes of a
1080p frame (a tracker's call), with PyTorch and with ONNX Runtime.

    python -m benchmarks.extractor --write-docs     # and its section of docs/benchmarks.md (minutes)
    python -m benchmarks.extractor --small          # two timed calls a case: a check that it runs

The model is --config-file's (default configs/MDPR/demo.yml) with untrained weights (the speed does not depend on
them), saved in a temporary folder and exported there with mdpr-export's ``export_onnx``. Inputs: the bundled
images by path, in one call (batches of --batch-size); and a 1920 x 1080 BGR frame with 16 bundled people pasted
in at 120 x 300 pixels, their 16 boxes in one ``crops`` call; and a tracker's call per frame,
``get_features(boxes, frame)`` on that frame with 1 to 32 of the boxes (the 16 repeated past 16). Everything runs
in this one process on --threads threads (torch's; the extractor gives its ONNX Runtime session as many): per case
an untimed warm-up call, then timed calls until --repeats of them or --budget seconds, the median reported. The
preprocessing alone (reading or cropping, resizing: ``extractor.preprocess``) is timed the same way, to show where
the time goes.
"""
import logging
import os
import statistics
import tempfile

from .harness import (Benchmark, Section, log, machine, parser, recording_run, repeat_timed, run_cases,
                      run_header, saver)

SECTION = Section("extractor-benchmark")
PROG = "python -m benchmarks.extractor"
FRAME_SIZE = (1080, 1920)  # height, width
PERSON_SIZE = (300, 120)   # height, width of a pasted person
PEOPLE = 16
TRACKER_BOXES = (1, 2, 4, 8, 16, 32)  # boxes per frame a tracker asks features for


def frame_with_people(paths):
    """A FRAME_SIZE BGR frame with PEOPLE of the images at ``paths`` pasted in at PERSON_SIZE, and their boxes
    (x1, y1, x2, y2, fractional as a detector's)."""
    import numpy as np
    from PIL import Image

    frame = np.full((*FRAME_SIZE, 3), 96, np.uint8)
    boxes = []
    for i, path in enumerate(paths[:PEOPLE]):
        x, y = 40 + (i % 8) * 235, 120 + (i // 8) * 480
        with Image.open(path) as image:
            person = np.asarray(image.convert("RGB").resize(PERSON_SIZE[::-1], Image.BILINEAR))
        frame[y:y + PERSON_SIZE[0], x:x + PERSON_SIZE[1]] = person[:, :, ::-1]
        boxes.append((x - 0.4, y + 0.3, x + PERSON_SIZE[1] + 0.6, y + PERSON_SIZE[0] - 0.2))
    return frame, np.array(boxes)


def timed(call, repeats, budget):
    """``(median seconds, timed calls)`` of ``call`` after one untimed warm-up call (see :func:`repeat_timed`)."""
    _, times = repeat_timed(call, 1, repeats, budget)
    return statistics.median(times), len(times)


def demo_model_files(config_file, folder):
    """``(weights, onnx)``: an untrained checkpoint of ``config_file`` and its ONNX export in ``folder`` (onnx None,
    with a logged reason, without the onnx extra)."""
    import torch
    from fastreid.utils.checkpoint import Checkpointer

    from mdpr_plugin.config import build_config
    from mdpr_plugin.engine import build_model
    from mdpr_plugin.errors import MissingExtraError
    from mdpr_plugin.inference import FeatureExtractor
    from mdpr_plugin.tools.export import export_onnx

    torch.manual_seed(0)
    model = build_model(build_config(config_file, ["MODEL.BACKBONE.PRETRAIN", "False", "MODEL.DEVICE", "cpu"]))
    Checkpointer(model, save_dir=folder).save("model_final")
    weights = os.path.join(folder, "model_final.pth")
    extractor = FeatureExtractor(config_file, weights, device="cpu")
    try:
        onnx = export_onnx(extractor.model, os.path.join(folder, "model.onnx"), *extractor.size)
    except MissingExtraError as error:
        log(f"ONNX Runtime cases not run: {error}")
        onnx = None
    return weights, onnx


def run_case(case):
    """One (backend, input) case in this process: its timings and throughput."""
    import numpy as np
    import torch

    from mdpr_plugin.data import BUNDLED_ROOT
    from mdpr_plugin.inference import FeatureExtractor, crop_regions
    from mdpr_plugin.tools.common import list_images

    torch.set_num_threads(case["threads"])
    onnx = case["onnx"] if case["backend"] == "onnx" else None
    extractor = FeatureExtractor(case["config_file"], None if onnx else case["weights"], batch_size=case["batch"],
                                 onnx=onnx)
    paths = list_images(BUNDLED_ROOT)
    if case["input"] == "files":
        count, call, prepare = len(paths), lambda: extractor(paths), lambda: extractor.preprocess(paths)
    else:
        frame, boxes = frame_with_people(paths)

        def prepare():  # what crops() does before the model: cut the boxes out, resize them
            return extractor.preprocess(crop_regions(frame, boxes), bgr=True)

        if case["input"] == "crops":
            call = lambda: extractor.crops(frame, boxes, bgr=True)  # noqa: E731
        else:  # a tracker's call: the boxes of one frame, as many as the case says
            boxes = np.resize(boxes, (case["boxes"], 4))
            call = lambda: extractor.get_features(boxes, frame)  # noqa: E731
        count = len(boxes)
    seconds, calls = timed(call, case["repeats"], case["budget"])
    preprocess_seconds, _ = timed(prepare, case["repeats"], case["budget"])
    return {**case, "images": count, "call_s": seconds, "images_per_s": count / seconds, "timed_calls": calls,
            "preprocess_s": preprocess_seconds, "device": str(extractor.device),
            "feature_dim": int(extractor.feature_dim), "size": list(extractor.size), "flip": extractor.flip}


def run_all(args):
    """Every (backend, input) case; the results with the machine and the run's record."""
    folder = tempfile.mkdtemp(prefix="mdpr-extractor-benchmark-")
    log(f"writing an untrained checkpoint of {args.config_file} and its ONNX export to {folder} ...")
    weights, onnx = demo_model_files(args.config_file, folder)
    cases = [{"backend": backend, "input": kind, "config_file": args.config_file, "weights": weights, "onnx": onnx,
              "batch": args.batch_size, "threads": args.threads, "repeats": args.repeats, "budget": args.budget}
             for backend in ("torch", "onnx") if backend == "torch" or onnx for kind in ("files", "crops")]
    cases += [{**case, "input": "tracker", "boxes": boxes} for case in cases if case["input"] == "crops"
              for boxes in TRACKER_BOXES]
    info = machine("onnxruntime")
    command = f"{PROG} --threads {args.threads} --batch-size {args.batch_size}" + (" --small" if args.small else "")
    with recording_run(command=command, threads=args.threads, repeats=args.repeats, budget=args.budget) as run:
        save = saver(args.json, machine=info, run=run)
        results = run_cases(cases, run_case, lambda c: f"{c['backend']} {c['input']}",
                            lambda r: f"{r['images_per_s']:.1f} images/s ({r['timed_calls']} timed calls)", save)
    save(results)
    return {"machine": info, "run": run, "results": results}


# ------------------------------------------------------------------------------------ report
BACKEND_NAMES = {"torch": "PyTorch", "onnx": "ONNX Runtime (CPU)"}
INPUT_NAMES = {"files": "image files (bundled, by path)",
               "crops": f"crops: {PEOPLE} boxes of a {FRAME_SIZE[1]} x {FRAME_SIZE[0]} BGR frame"}


def table(results):
    results = [r for r in results if r["input"] != "tracker"]
    lines = ["| backend | device | input | images per call | batch size | call (s, median) | images/s | "
             "of which preprocessing (s, median) | timed calls |", "|" + "---|" * 9]
    for r in results:
        lines.append(f"| {BACKEND_NAMES[r['backend']]} | {'cpu' if r['backend'] == 'onnx' else r['device']} | "
                     f"{INPUT_NAMES[r['input']]} | {r['images']} | {r['batch']} | {r['call_s']:.3f} | "
                     f"{r['images_per_s']:.1f} | {r['preprocess_s']:.3f} | {r['timed_calls']} |")
    return "\n".join(lines)


def tracker_table(results):
    """Per-crop time of a tracker's get_features call, by boxes per frame (columns) and backend (rows)."""
    rows = {}
    for r in results:
        if r["input"] == "tracker":
            rows.setdefault(r["backend"], {})[r["boxes"]] = r
    lines = ["| backend | " + " | ".join(f"{n} box{'es' if n > 1 else ''}" for n in TRACKER_BOXES) + " |",
             "|" + "---|" * (len(TRACKER_BOXES) + 1)]
    for backend, by_boxes in rows.items():
        cells = [f"{1000 * by_boxes[n]['call_s'] / n:.1f} ms ({1000 * by_boxes[n]['call_s']:.0f} ms)"
                 if n in by_boxes else "-" for n in TRACKER_BOXES]
        lines.append(f"| {BACKEND_NAMES[backend]} | " + " | ".join(cells) + " |")
    return lines


def render(data):
    """This benchmark's markdown section, from the data ``run_all`` returns."""
    info, run, results = data["machine"], data["run"], data["results"]
    first = results[0]
    software = [f"onnxruntime {info['onnxruntime']}"] if info.get("onnxruntime") else []
    return SECTION.wrap([
        *run_header("Feature extractor throughput", run, info, software, "torch and ONNX Runtime"),
        f"`mdpr_plugin.FeatureExtractor` with `{first['config_file']}` (untrained weights; input "
        f"{first['size'][0]}x{first['size'][1]}, {first['feature_dim']}-d features, flip test "
        f"{'on' if first['flip'] else 'off'}), one process. Image files: the {first['images']} bundled crops "
        f"(128 x 64 JPEGs) in one call. Crops: one `crops(frame, boxes, bgr=True)` call for {PEOPLE} people pasted "
        f"into a {FRAME_SIZE[1]} x {FRAME_SIZE[0]} frame at {PERSON_SIZE[1]} x {PERSON_SIZE[0]} pixels. Times are "
        "the median of the timed calls after an untimed warm-up call; \"of which preprocessing\" is "
        "`extractor.preprocess` (reading or cropping, resizing) on the same input, timed alike.",
        "",
        table(results),
        "",
        "A tracker's call: `get_features(boxes, frame)` (what `BotSort(reid_model=extractor)` calls once per frame) "
        "on the same frame with 1 to 32 of the people's boxes (the 16 repeated past 16), one forward pass: time per "
        "crop (median call time / boxes; the call's median in brackets).",
        "",
        *tracker_table(results),
        "",
    ])


def parse_args(argv=None):
    """The arguments, defaults filled in (under ``--worker`` and ``--from-json`` none are needed)."""
    options = parser(PROG, __doc__, threads="2", repeats="10; --small 2", budget=60.0)
    options.add_argument("--config-file", default="configs/MDPR/demo.yml", metavar="FILE")
    options.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    options.add_argument("--write-docs", action="store_true", help="(re)write this benchmark's section of --output")
    args = options.parse_args(argv)
    if args.worker or args.from_json:
        return args
    if args.batch_size < 1:
        options.error(f"--batch-size must be at least 1, got {args.batch_size}")
    args.threads = args.threads or 2
    args.repeats = args.repeats or (2 if args.small else 10)
    return args


BENCHMARK = Benchmark(PROG, parse_args, run_case, run_all, render, SECTION,
                      writes_docs=lambda args: args.write_docs, worker_log_level=logging.WARNING)

if __name__ == "__main__":
    raise SystemExit(BENCHMARK.main())
