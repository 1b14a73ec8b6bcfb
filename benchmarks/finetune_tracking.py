"""What fine-tuning on one's own footage buys a tracker, measured: the demo MDPR model (configs/MDPR/demo.yml, trained
on the 32 bundled images) against that model fine-tuned on crops of other sequences of the same synthetic street scene
(mdpr_plugin/synthetic/people_scene.py), made and trained on through the user's entry points only:
``mdpr-dataset from-mot`` then ``train_net.py ... DATASETS.NAMES ("ReidFolder",) MODEL.WEIGHTS <demo>``. Both track
held-out scenes with BoxMOT's BotSort and StrongSort (the tracking benchmark's runs and metrics).

Two kinds of footage are fine-tuned on, each its own model:

* other people: the bundled *training* identities walking in the scene (the demo trained on their crops, never on
  scenes), while the held-out scenes show the bundled *test* identities: what adapting to the scene gives for
  people never seen;
* the same people: the held-out scenes' own identities in other sequences (other seeds: other walks, background,
  poses in other order): a fixed group one films and then tracks (staff, players, dancers).

    python -m benchmarks.finetune_tracking --write-docs    # and its section at the end of docs/benchmarks.md
    python -m benchmarks.finetune_tracking --small         # short scenes, short training: a check that it runs

Run from a checkout's root. Nothing is timed; the tracking numbers do not depend on the machine's load.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from mdpr_plugin.errors import MDPRError
from mdpr_plugin.synthetic.mot_format import write_mot_sequence
from mdpr_plugin.synthetic.people_scene import HELD_OUT, make_sequence

from .harness import Benchmark, Section, log, machine, parser, recording_run, run_header
from .tracking import (BOTSORT_THRESHOLDS, DEFAULT_THRESHOLDS, REPO, STRONGSORT_THRESHOLDS, no_worker, scores_of, train,
                       tracker_runs)

SECTION = Section("finetune-tracking-benchmark")
PROG = "python -m benchmarks.finetune_tracking"
DEMO_CONFIG = "configs/MDPR/demo.yml"
# footage -> (the identities of its sequences, their scene seeds)
FOOTAGE = {"other people": (("bounding_box_train",), (101, 102, 103, 104)),
           "the same people": (HELD_OUT, (201, 202, 203, 204))}
FINE_TUNE = ["SOLVER.MAX_EPOCH", "6", "SOLVER.WARMUP_ITERS", "10", "TEST.EVAL_PERIOD", "6", "SEED", "0",
             "MODEL.DEVICE", "cpu"]
SMALL_FINE_TUNE = ["SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "2"]
METRICS_ROW = re.compile(r"^\| ReidFolder \|(.*)\|\s*$", re.M)
METRIC_NAMES = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric")


# ------------------------------------------------------------------------------------ entry points
def run_logged(command, log_path):
    """Run ``command`` from the checkout, its output into ``log_path``; its output on failure."""
    log(f"  $ {' '.join(command)}")
    with open(log_path, "w") as out:
        status = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    output = open(log_path).read()
    if status:
        raise MDPRError(f"{' '.join(command[:3])} ... failed (status {status}); its output, in {log_path}, ends:\n"
                        + output[-3000:])
    return output


def mdpr_dataset():
    script = os.path.join(os.path.dirname(sys.executable), "mdpr-dataset")
    return [script] if os.path.isfile(script) else [sys.executable, "-m", "mdpr_plugin.tools.dataset"]


def reid_metrics(output):
    """The last ReidFolder evaluation printed: {Rank-1, ..., mAP, mINP}."""
    rows = METRICS_ROW.findall(output)
    if not rows:
        raise MDPRError("the run printed no ReidFolder evaluation")
    return dict(zip(METRIC_NAMES, (float(v) for v in rows[-1].split("|"))))


def fine_tune(name, demo_weights, work, args):
    """Videos of ``name``'s footage -> mdpr-dataset -> train_net.py from the demo weights; the fine-tuned model's
    files, both models' re-id numbers on the dataset's held-back identities, and the dataset's size."""
    splits, seeds = FOOTAGE[name]
    folder = os.path.join(work, name.replace(" ", "_"))
    videos = [write_mot_sequence(make_sequence(num_people=args.people, num_frames=args.frames, seed=seed,
                                               splits=splits), os.path.join(folder, "videos", f"SYN-{seed}"))
              for seed in seeds[:args.sequences]]
    data = os.path.join(folder, "dataset")
    run_logged([*mdpr_dataset(), "from-mot", *videos, "--output", data, "--every", str(args.every)],
                      os.path.join(folder, "mdpr-dataset.log"))
    output = os.path.join(folder, "fine-tuned")
    weights = os.path.join(output, "model_final.pth")
    command = [sys.executable, "train_net.py", "--config-file", DEMO_CONFIG, "DATASETS.NAMES", "('ReidFolder',)",
               "DATASETS.TESTS", "('ReidFolder',)", "DATASETS.FOLDER.ROOT", data, "MODEL.WEIGHTS", demo_weights,
               *FINE_TUNE, *(SMALL_FINE_TUNE if args.small else []), "OUTPUT_DIR", output]
    tuned = reid_metrics(run_logged(command, os.path.join(folder, "train_net.log")))
    before = reid_metrics(run_logged(
        [sys.executable, "train_net.py", "--config-file", DEMO_CONFIG, "--eval-only", "DATASETS.TESTS",
         "('ReidFolder',)", "DATASETS.FOLDER.ROOT", data, "MODEL.WEIGHTS", demo_weights, "MODEL.DEVICE", "cpu",
         "OUTPUT_DIR", os.path.join(folder, "demo-eval")], os.path.join(folder, "demo-eval.log")))
    counts = {role: len(os.listdir(os.path.join(data, role))) for role in ("train", "query", "gallery")}
    crops = sum(len(files) for _, _, files in os.walk(data) if files and files[0].endswith(".jpg"))
    return {"footage": name, "identities_source": list(splits), "seeds": list(seeds[:args.sequences]),
            "identities": counts,
            "crops": crops, "command": " ".join(command[1:]).replace(work, "<work>").replace(demo_weights, "<demo>"),
            "config": os.path.join(output, "config.yaml"), "weights": weights, "reid_before": before,
            "reid_after": tuned}


# ------------------------------------------------------------------------------------ tracking
def track_scenes(models, args):
    """Per held-out scene: motion alone, and each model's runs at every threshold."""
    import torch

    from mdpr_plugin import FeatureExtractor

    torch.set_num_threads(args.threads)
    extractors = {name: FeatureExtractor(config, weights, device="cpu") for name, (config, weights) in models.items()}
    scenes = []
    for seed in args.scene_seeds:
        from boxmot import BotSort

        scene = make_sequence(num_people=args.scene_people, num_frames=args.scene_frames, seed=seed)
        log(f"held-out scene {seed}: {sum(len(d) for d in scene.detections)} detections")
        runs = {}
        for name, extractor in extractors.items():
            features = extractor.get_features_batch([d[:, :4] for d in scene.detections], scene.frames)
            runs[name] = tracker_runs(scene, features)
        scenes.append({"seed": seed, "identities": scene.identities,
                       "detections": sum(len(d) for d in scene.detections),
                       "motion": scores_of(BotSort(use_embeddings=False, use_cmc=False), scene), "runs": runs})
    return scenes


def run_all(args):
    work = args.work_dir or tempfile.mkdtemp(prefix="mdpr-finetune-tracking-")
    command = (f"{PROG} --sequences {args.sequences} --people {args.people} --frames {args.frames} --every "
               f"{args.every} --scene-seeds {' '.join(map(str, args.scene_seeds))}"
               + (" --small" if args.small else ""))
    with recording_run(command=command, threads=args.threads, repeats=None, budget=None) as run:
        log("the demo model ...")
        demo = train("MDPR demo", work, args.small)
        tuned = []
        for name in FOOTAGE:
            log(f"fine-tuning on {name} ...")
            tuned.append(fine_tune(name, demo, work, args))
        models = {"demo": (os.path.join(REPO, DEMO_CONFIG), demo),
                  **{f"fine-tuned on {t['footage']}": (t["config"], t["weights"]) for t in tuned}}
        scenes = track_scenes(models, args)
    data = {"machine": machine("boxmot"), "run": run, "fine_tuned": tuned, "models": list(models), "scenes": scenes,
            "scene": {"people": args.scene_people, "frames": args.scene_frames}, "every": args.every}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    return data


# ------------------------------------------------------------------------------------ report
def over_scenes(data, model, tracker, threshold):
    """Mean IDF1 (%) and total ID switches over the held-out scenes."""
    found = [next(r for r in scene["runs"][model] if r["tracker"] == tracker and r["threshold"] == threshold)
             for scene in data["scenes"]]
    return 100 * float(np.mean([r["idf1"] for r in found])), sum(r["id_switches"] for r in found)


def tracking_lines(data):
    motion = [scene["motion"] for scene in data["scenes"]]
    lines = [f"Motion only (BotSort, `use_embeddings=False`): IDF1 {100 * np.mean([m['idf1'] for m in motion]):.1f} %, "
             f"{sum(m['id_switches'] for m in motion)} ID switches.", "",
             "| model | tracker (its thresholds) | mean IDF1 % / total ID switches at each threshold, smallest first | "
             "| | | |", "|" + "---|" * 7]
    for model in data["models"]:
        for tracker, thresholds in (("BotSort", BOTSORT_THRESHOLDS), ("StrongSort", STRONGSORT_THRESHOLDS)):
            cells = []
            for threshold in thresholds:
                idf1, switches = over_scenes(data, model, tracker, threshold)
                cells.append(f"{idf1:.1f} / {switches}" + (" (default)" if threshold == DEFAULT_THRESHOLDS[tracker]
                                                            else ""))
            option = "`appearance_thresh`" if tracker == "BotSort" else "`max_cos_dist`"
            lines.append(f"| {model} | {tracker} ({option} {', '.join(map(str, thresholds))}) | " + " | ".join(cells)
                         + " |")
    return lines


def per_scene_lines(data):
    """StrongSort at its best threshold for the demo model, per scene: where the mean comes from."""
    best = max(STRONGSORT_THRESHOLDS, key=lambda t: over_scenes(data, "demo", "StrongSort", t)[0])
    lines = [f"Per held-out scene, StrongSort at `max_cos_dist` {best} (the demo model's best on average): IDF1 % / "
             "ID switches.", "", "| model | " + " | ".join(f"scene seed {s['seed']}" for s in data["scenes"]) + " |",
             "|" + "---|" * (1 + len(data["scenes"]))]
    for model in data["models"]:
        cells = [next(f"{100 * r['idf1']:.1f} / {r['id_switches']}" for r in s["runs"][model]
                      if r["tracker"] == "StrongSort" and r["threshold"] == best) for s in data["scenes"]]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def reid_lines(data):
    lines = ["| fine-tuning footage | identities of its sequences | crops (train / query / gallery identities) | "
             "demo model: mAP / Rank-1 on the held-back crops | fine-tuned: mAP / Rank-1 |", "|---|---|---|---|---|"]
    for t in data["fine_tuned"]:
        ids, before, after = t["identities"], t["reid_before"], t["reid_after"]
        lines.append(f"| {t['footage']} | bundled {' + '.join(t['identities_source'])}, scene seeds "
                     f"{', '.join(map(str, t['seeds']))} | {t['crops']} ({ids['train']} / {ids['query']} / "
                     f"{ids['gallery']}) | {before['mAP']:.1f} / {before['Rank-1']:.1f} | {after['mAP']:.1f} / "
                     f"{after['Rank-1']:.1f} |")
    return lines


def render(data):
    info, run, first = data["machine"], data["run"], data["fine_tuned"][0]
    header = run_header("Fine-tuning on your own footage", run, info, [f"boxmot {info.get('boxmot')}"], "torch")
    busy = [i for i, line in enumerate(header) if line.startswith("**Other jobs")]
    if busy:  # nothing here is timed: the warning about times does not apply
        del header[busy[0]:busy[0] + 2]
    scene = data["scene"]
    seeds = ", ".join(str(s["seed"]) for s in data["scenes"])
    return SECTION.wrap([
        *header,
        "What fine-tuning on crops of one's own videos buys a tracker: the demo MDPR model (`configs/MDPR/demo.yml`, "
        "trained on the 32 bundled images, `SEED 0`) against that model fine-tuned on the crops of other sequences "
        "of the same synthetic street scene (`mdpr_plugin/synthetic/people_scene.py`), made and trained on "
        "through the user's entry points (docs/own-data.md): `mdpr-dataset from-mot <videos> --output <dataset> "
        f"--every {data['every']}`, then `{first['command']}` "
        "(`<demo>`: the demo model's weights). One fine-tuned model per footage:",
        "",
        "- *other people*: the bundled training identities walking in the scene (the demo model trained on their "
        "crops, never on scenes); the held-out scenes show the bundled test identities, which neither model saw;",
        "- *the same people*: the held-out scenes' own identities, in other sequences (other seeds: other walks, "
        "background and order of poses), as a fixed group one films and then tracks.",
        "",
        "Re-id on each dataset's held-back identities (query: the earliest crop of each, gallery: its later ones, "
        "each crop its own camera: optimistic, see docs/own-data.md):",
        "",
        *reid_lines(data),
        "",
        f"Tracking: held-out scenes of {scene['people']} people (the bundled test identities), {scene['frames']} "
        f"frames of 640 x 360 each, scene seeds {seeds} ({', '.join(str(s['detections']) for s in data['scenes'])} "
        "detections), BoxMOT's trackers with `use_cmc=False` and the embeddings given in `Detections`, IDF1 and ID "
        "switches against the true boxes at IoU 0.5 (as in the tracking benchmark above; scene seed 0 is its "
        "scene).",
        "",
        *tracking_lines(data),
        "",
        *per_scene_lines(data),
        "",
    ])


def parse_args(argv=None):
    options = parser(PROG, __doc__, threads="2", repeats="-", budget=0.0)
    options.add_argument("--sequences", type=int, default=4, help="fine-tuning sequences per footage (at most 4; "
                                                                  "default 4)")
    options.add_argument("--people", type=int, default=10, help="people in each fine-tuning sequence (default 10)")
    options.add_argument("--frames", type=int, default=300, help="frames of each fine-tuning sequence (default 300)")
    options.add_argument("--every", type=int, default=5, help="mdpr-dataset --every (default 5, its own)")
    options.add_argument("--scene-seeds", type=int, nargs="+", default=[0, 1, 2],
                         help="seeds of the held-out scenes tracked (default 0 1 2)")
    options.add_argument("--work-dir", help="where the videos, datasets and models go (default: a new temporary "
                                            "folder; a demo model already there is reused)")
    options.add_argument("--write-docs", action="store_true", help="(re)write this benchmark's section of --output")
    args = options.parse_args(argv)
    args.scene_people, args.scene_frames = 10, 300
    if args.small:
        args.sequences, args.people, args.frames, args.every = 2, 8, 40, 2
        args.scene_seeds, args.scene_people, args.scene_frames = args.scene_seeds[:1], 4, 20
    args.threads = args.threads or 2
    return args


BENCHMARK = Benchmark(PROG, parse_args, no_worker, run_all, render, SECTION, writes_docs=lambda args: args.write_docs)

if __name__ == "__main__":
    raise SystemExit(BENCHMARK.main())
