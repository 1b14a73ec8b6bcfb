"""Tracking with MDPR embeddings, measured: BoxMOT's BotSort (and StrongSort) on the synthetic street scene of
:mod:`mdpr_plugin.synthetic.people_scene` built from the held-out bundled identities, with the embeddings of models
trained on the bundled training images, against motion alone; the appearance distances a tracker's thresholds are
compared with; and how much a feature moves when its box shifts by 1-4 pixels, as a detector's boxes jitter.

    python -m benchmarks.tracking --write-docs   # and its section of docs/benchmarks.md (~15 min)
    python -m benchmarks.tracking --small        # a short scene, one short training: a check that it runs

It trains with train_net.py: each recipe is ``train_net.py --config-file <config> SEED 0``
plus its overrides, into --weights-dir (a recipe whose model_final.pth is there is not trained again). Nothing here
is timed; the trackers run with camera-motion compensation off (the scene's camera does not move).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from .harness import REPO, Benchmark, Section, log, machine, parser, recording_run, run_header
from mdpr_plugin.evaluation.tracking_metrics import identity_scores
from mdpr_plugin.synthetic.people_scene import make_sequence

SECTION = Section("tracking-benchmark")
PROG = "python -m benchmarks.tracking"
# name -> (config, overrides): the demo recipe, and what its crop augmentation becomes without padding or with
# random resized crops; fastreid's Baseline trained as long, as a reference re-id model
RECIPES = {
    "MDPR demo": ("configs/MDPR/demo.yml", []),
    "MDPR demo, no padding": ("configs/MDPR/demo.yml", ["INPUT.PADDING.ENABLED", "False"]),
    "MDPR demo + random resized crop": ("configs/MDPR/demo.yml", [
        "INPUT.CROP.ENABLED", "True", "INPUT.CROP.SIZE", "[128, 64]", "INPUT.CROP.SCALE", "[0.8, 1.0]",
        "INPUT.CROP.RATIO", "[0.4, 0.6]"]),
    "fastreid Baseline (reference)": ("configs/Baseline-demo.yml", [
        "SOLVER.MAX_EPOCH", "20", "SOLVER.STEPS", "[15]"]),
}
BOTSORT_THRESHOLDS = (0.05, 0.1, 0.25, 0.5, 1.0)   # appearance_thresh; BoxMOT's default 0.25
STRONGSORT_THRESHOLDS = (0.05, 0.1, 0.2, 0.4, 0.6)  # max_cos_dist; BoxMOT's default 0.2
DEFAULT_THRESHOLDS = {"BotSort": 0.25, "StrongSort": 0.2}
SHIFTS = (1, 2, 3, 4)
SAME_PERSON_WITHIN = 30  # frames: the pairs a tracker compares (a lost track waits about this long)


# ------------------------------------------------------------------------------------ models
def train(name, folder, small):
    """The weights of recipe ``name`` in ``folder`` (trained now unless already there)."""
    config, overrides = RECIPES[name]
    output = os.path.join(folder, name.replace(" ", "_").replace(",", "").replace("+", "plus"))
    weights = os.path.join(output, "model_final.pth")
    if os.path.isfile(weights):
        log(f"  {name}: reusing {weights}")
        return weights
    script = os.path.join(REPO, "train_net.py")
    short = ["SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "100"] if small else []
    command = [sys.executable, script, "--config-file", os.path.join(REPO, config), "MODEL.DEVICE", "cpu",
               "OUTPUT_DIR", output, "SEED", "0", *overrides, *short]
    log(f"  training {name}: {' '.join(command[1:])}")
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return weights


# ------------------------------------------------------------------------------------ tracking
def run_tracker(tracker, scene, features=None):
    """``(track ids, boxes)`` per frame of ``scene``: the tracker computing embeddings itself (numpy detections)
    or, with ``features`` (one N x D array per frame), given them in BoxMOT's ``Detections``."""
    ids, boxes = [], []
    for t, (frame, dets) in enumerate(zip(scene.frames, scene.detections)):
        if features is None:
            tracks = tracker.update(dets, frame)
            ids.append(tracks[:, 4].astype(int))
            boxes.append(tracks[:, :4])
        else:
            tracks = tracker.update(detections_with_embeddings(dets, features[t], f"scene:{t}"), frame)
            ids.append(tracks.track_ids.numpy())
            boxes.append(tracks.geometry.values.numpy())
    return ids, boxes


def detections_with_embeddings(dets, embeddings, sample_id):
    """BoxMOT's ``Detections`` of N x 6 rows (x1, y1, x2, y2, confidence, class) and their N x D features."""
    import torch
    from boxmot.structures import Boxes, Detections

    rows = torch.as_tensor(np.asarray(dets), dtype=torch.float32)
    return Detections(geometry=Boxes(rows[:, :4].contiguous()), scores=rows[:, 4].contiguous(),
                      class_ids=rows[:, 5].long(), sample_id=sample_id,
                      embeddings=torch.as_tensor(np.asarray(embeddings), dtype=torch.float32))


def scores_of(tracker, scene, features=None):
    ids, boxes = run_tracker(tracker, scene, features)
    return identity_scores(scene.truth_people, scene.truth, ids, boxes).as_dict()


def tracker_runs(scene, features):
    """IDF1 / ID switches of BotSort and StrongSort at each appearance threshold, with ``features``."""
    from boxmot import BotSort, StrongSort

    runs = [{"tracker": "BotSort", "threshold": t,
             **scores_of(BotSort(appearance_thresh=t, use_cmc=False), scene, features)} for t in BOTSORT_THRESHOLDS]
    runs += [{"tracker": "StrongSort", "threshold": t, **scores_of(StrongSort(max_cos_dist=t), scene, features)}
             for t in STRONGSORT_THRESHOLDS]
    return runs


# ------------------------------------------------------------------------------------ appearance
def distance_quantiles(scene, features):
    """Cosine distances (1 - cosine) between detections of the same person at most SAME_PERSON_WITHIN frames
    apart, and of different people in the same frame: their 5/50/95th percentiles."""
    same, different = [], []
    for t, (people, rows) in enumerate(zip(scene.detection_people, features)):
        different += [1 - rows[i] @ rows[j] for i in range(len(rows)) for j in range(i + 1, len(rows))
                      if people[i] != people[j]]
        for u in range(t + 1, min(t + SAME_PERSON_WITHIN + 1, len(features))):
            for i, j in zip(*np.nonzero(np.asarray(people)[:, None] == np.asarray(scene.detection_people[u])[None])):
                same.append(1 - rows[i] @ features[u][j])
    quantiles = lambda values: [float(q) for q in np.percentile(values, [5, 50, 95])] if values else None  # noqa
    return {"same": quantiles(same), "different": quantiles(different), "pairs": [len(same), len(different)]}


def shift_stability(extractor, scene, boxes_wanted=40, every=10):
    """Mean and lowest cosine between the feature of a true box and of the box shifted by each of SHIFTS pixels
    left, right, up and down, over up to ``boxes_wanted`` boxes taken every ``every`` frames; and the mean of the
    sideways (left, right) and of the vertical (up, down) shifts apart."""
    frames, boxes = [], []
    for t in range(0, len(scene.frames), every):
        for box in scene.truth[t]:
            if len(boxes) < boxes_wanted:
                moved = [box] + [box + np.array([dx, dy, dx, dy]) * k for k in SHIFTS
                                 for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1))]
                frames.append(scene.frames[t])
                boxes.append(np.array(moved))
    features = extractor.get_features_batch(boxes, frames)
    cosines = np.stack([f[1:] @ f[0] for f in features]).reshape(len(features), len(SHIFTS), 4)
    mean = lambda values: values.mean(axis=(0, 2)).tolist()  # noqa: E731  (over boxes and directions)
    return {"boxes": len(boxes), "mean": mean(cosines), "lowest": cosines.min(axis=(0, 2)).tolist(),
            "sideways": mean(cosines[:, :, :2]), "vertical": mean(cosines[:, :, 2:])}


# ------------------------------------------------------------------------------------ the run
def run_recipe(name, scene, args):
    from mdpr_plugin.inference import FeatureExtractor

    weights = train(name, args.weights_dir, args.small)
    extractor = FeatureExtractor(os.path.join(REPO, RECIPES[name][0]), weights, device="cpu")
    log(f"  {name}: features of {sum(len(d) for d in scene.detections)} detections ...")
    features = extractor.get_features_batch([d[:, :4] for d in scene.detections], scene.frames)
    return {"recipe": name, "overrides": RECIPES[name][1], "feature_dim": int(extractor.feature_dim),
            "distances": distance_quantiles(scene, features), "shifts": shift_stability(extractor, scene),
            "runs": tracker_runs(scene, features)}


def run_all(args):
    import torch
    from boxmot import BotSort

    torch.set_num_threads(args.threads)
    args.weights_dir = args.weights_dir or tempfile.mkdtemp(prefix="mdpr-tracking-benchmark-")
    scene = make_sequence(num_people=args.people, num_frames=args.frames, seed=args.seed)
    info = machine("boxmot")
    recipes = list(RECIPES)[:1] if args.small else list(RECIPES)
    command = f"{PROG} --people {args.people} --frames {args.frames} --seed {args.seed}" + (
        " --small" if args.small else "")
    with recording_run(command=command, threads=args.threads, repeats=None, budget=None) as run:
        motion = scores_of(BotSort(use_embeddings=False, use_cmc=False), scene)
        results = []
        for name in recipes:
            log(f"{name} ...")
            results.append(run_recipe(name, scene, args))
    scene_info = {"people": args.people, "frames": args.frames, "seed": args.seed, "identities": scene.identities,
                  "detections": sum(len(d) for d in scene.detections),
                  "edge_detections": int(sum(((d[:, 0] < 0) | (d[:, 2] > scene.frames[0].shape[1])).sum()
                                             for d in scene.detections)),
                  "size": list(scene.frames[0].shape[:2])}
    data = {"machine": info, "run": run, "scene": scene_info, "motion": motion, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    return data


# ------------------------------------------------------------------------------------ report
def best(runs, tracker):
    return max((r for r in runs if r["tracker"] == tracker), key=lambda r: (r["idf1"], -r["id_switches"]))


def fmt_scores(r):
    return f"{100 * r['idf1']:.1f} / {r['id_switches']}"


def tracking_table(data):
    default = DEFAULT_THRESHOLDS
    motion = data["motion"]
    lines = [f"Motion only (BotSort, `use_embeddings=False`): IDF1 {100 * motion['idf1']:.1f} %, "
             f"{motion['id_switches']} ID switches, {motion['track_ids']} track ids.", "",
             "| model (recipe) | tracker (its thresholds) | IDF1 % / ID switches at each threshold, smallest first | "
             "| | | |", "|" + "---|" * 7]
    for result in data["results"]:
        for tracker, thresholds in (("BotSort", BOTSORT_THRESHOLDS), ("StrongSort", STRONGSORT_THRESHOLDS)):
            by_threshold = {r["threshold"]: r for r in result["runs"] if r["tracker"] == tracker}
            cells = [fmt_scores(by_threshold[t]) + (" (default)" if t == default[tracker] else "")
                     for t in thresholds]
            name = "`appearance_thresh`" if tracker == "BotSort" else "`max_cos_dist`"
            lines.append(f"| {result['recipe']} | {tracker} ({name} " + ", ".join(map(str, thresholds)) + ") | "
                         + " | ".join(cells) + " |")
    return lines


def appearance_table(data):
    lines = ["| model (recipe) | cosine distance, same person within 30 frames (5 / 50 / 95 %) | different people, "
             "same frame (5 / 50 / 95 %) | " + " | ".join(f"cosine to the box shifted {k} px: mean / lowest (sideways "
                                                         "/ vertical means)" for k in SHIFTS) + " |",
             "|" + "---|" * (3 + len(SHIFTS))]
    for result in data["results"]:
        d, s = result["distances"], result["shifts"]
        q = lambda values: " / ".join(f"{v:.3f}" for v in values)  # noqa: E731
        lines.append(f"| {result['recipe']} | {q(d['same'])} | {q(d['different'])} | " + " | ".join(
            f"{m:.3f} / {low:.3f} ({side:.3f} / {up:.3f})"
            for m, low, side, up in zip(s["mean"], s["lowest"], s["sideways"], s["vertical"])) + " |")
    return lines


def render(data):
    info, run, scene = data["machine"], data["run"], data["scene"]
    first = data["results"][0]
    header = run_header("Tracking with MDPR embeddings (BoxMOT)", run, info, [f"boxmot {info.get('boxmot')}"], "torch")
    busy = [i for i, line in enumerate(header) if line.startswith("**Other jobs")]
    if busy:  # the warning that times are unreliable, and its blank line: nothing here is timed
        del header[busy[0]:busy[0] + 2]
    return SECTION.wrap([
        *header,
        f"The scene: {scene['people']} held-out people (identities {', '.join(scene['identities'])}: the bundled "
        f"test split, not trained on) walking for {scene['frames']} frames of {scene['size'][1]} x "
        f"{scene['size'][0]} pixels (seed {scene['seed']}; `mdpr_plugin.synthetic.people_scene`), crossing "
        f"and hiding one another: {scene['detections']} detections (boxes jittered by 1 px, "
        f"{scene['edge_detections']} of them partly outside the frame). Models: trained on the 32 bundled training "
        f"images with `train_net.py --config-file <config> SEED 0` plus each recipe's overrides "
        f"({first['feature_dim']}-d MDPR features). Trackers: BoxMOT's defaults but `use_cmc=False`, the "
        "embeddings given in `Detections`; IDF1 and ID switches against the true boxes at IoU 0.5 "
        "(`mdpr_plugin.evaluation.tracking_metrics`). Nothing is timed: the load above does not affect these numbers. "
        "StrongSort has no motion-only mode; at a small `max_cos_dist` appearance hardly ever matches.",
        "",
        *tracking_table(data),
        "",
        "Appearance: the cosine distances (1 - cosine) a tracker's threshold is compared with, and the cosine "
        f"between the feature of a true box and of that box moved 1-4 px left, right, up or down "
        f"({first['shifts']['boxes']} boxes of the scene).",
        "",
        *appearance_table(data),
        "",
    ])


def parse_args(argv=None):
    options = parser(PROG, __doc__, threads="2", repeats="-", budget=0.0)
    options.add_argument("--people", type=int, default=10, help="people in the scene (at most 16; default 10)")
    options.add_argument("--frames", type=int, default=300, help="frames of the scene (default 300)")
    options.add_argument("--seed", type=int, default=0, help="the scene's seed (default 0)")
    options.add_argument("--weights-dir", help="where the recipes' models are trained or found (default: a new "
                                               "temporary folder)")
    options.add_argument("--write-docs", action="store_true", help="(re)write this benchmark's section of --output")
    args = options.parse_args(argv)
    if args.small:
        args.people, args.frames = min(args.people, 4), min(args.frames, 20)
    args.threads = args.threads or 2
    return args


def no_worker(case):
    raise NotImplementedError("the tracking benchmark runs in one process")


BENCHMARK = Benchmark(PROG, parse_args, no_worker, run_all, render, SECTION, writes_docs=lambda args: args.write_docs)

if __name__ == "__main__":
    raise SystemExit(BENCHMARK.main())
