"""Your own data, no code, as a user runs it (docs/own-data.md): tracking videos in MOTChallenge format (the synthetic
street scene of the bundled people) -> `mdpr-dataset from-mot` -> `train_net.py` on DATASETS.NAMES ("ReidFolder",) ->
`--eval-only` from the run's config.yaml -> FeatureExtractor as a BoxMOT tracker's appearance model on another video.
And a folder with a training split alone, its query and gallery held back by DATASETS.FOLDER.TEST_IDS: the split file
written into OUTPUT_DIR only by a run whose checks passed."""
import json
import os
import re
import subprocess
import sys

import pytest
from boxmot import BotSort
from helpers import REPO, run_script

from benchmarks.tracking import run_tracker
from mdpr_plugin import FeatureExtractor
from mdpr_plugin.evaluation.tracking_metrics import identity_scores
from mdpr_plugin.synthetic.mot_format import read_mot_sequence, write_mot_sequence
from mdpr_plugin.synthetic.people_scene import make_sequence

pytestmark = pytest.mark.slow

MDPR_DATASET = os.path.join(os.path.dirname(sys.executable), "mdpr-dataset")
TRAIN_NET = os.path.join(REPO, "train_net.py")
READ_FOLDER = ["DATASETS.NAMES", "('ReidFolder',)", "DATASETS.TESTS", "('ReidFolder',)"]
SHORT = ["SOLVER.MAX_EPOCH", "2", "TEST.EVAL_PERIOD", "2", "SOLVER.WARMUP_ITERS", "1", "SEED", "0"]


def metrics_rows(output):
    """The 'ReidFolder | Rank-1 | ...' rows of the evaluations printed, as lists of floats."""
    return [[float(v) for v in row.split("|")] for row in re.findall(r"^\| ReidFolder \|(.*)\|\s*$", output, re.M)]


def mdpr_dataset(cwd, *argv):
    proc = subprocess.run([MDPR_DATASET, "from-mot", *argv], cwd=cwd, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's folder: videos/SYN-01 and SYN-02, the bundled training people walking (8 of them each), and
    videos/SYN-00, other people (the bundled test identities), to track on."""
    root = tmp_path_factory.mktemp("own-data")
    for seed in (1, 2):
        write_mot_sequence(make_sequence(num_people=8, num_frames=40, seed=seed, splits=("bounding_box_train",)),
                           str(root / "videos" / f"SYN-0{seed}"))
    write_mot_sequence(make_sequence(num_people=5, num_frames=30, seed=0), str(root / "videos" / "SYN-00"))
    return root


@pytest.fixture(scope="module")
def trained(project):
    status, out, err = mdpr_dataset(project, "videos/SYN-01", "videos/SYN-02", "--output", "people", "--every", "2")
    assert status == 0, err[-3000:]
    assert "writing crops: done" in err and out.startswith("people: ")
    status, log = run_script(TRAIN_NET, "--config-file", "configs/MDPR/demo.yml", *READ_FOLDER,
                             "DATASETS.FOLDER.ROOT", "people", *SHORT, "OUTPUT_DIR", "logs/people", cwd=project)
    return {"status": status, "log": log, "output": project / "logs" / "people", "dataset": out}


def test_the_crops_of_a_video_train_and_evaluate_through_train_net(project, trained):
    assert trained["status"] == 0, trained["log"][-3000:]
    train = sorted(os.listdir(project / "people" / "train"))
    assert train and all(name.startswith(("SYN-01_", "SYN-02_")) for name in train)
    table = re.search(r"\| train +\| (\d+) +\| (\d+) +\| (\d+) +\|", trained["log"])
    assert table and int(table.group(1)) == len(train) and int(table.group(3)) == 2  # two videos, two cameras
    assert "each image counts as its own camera, so the evaluation leaves out no gallery image" in trained["log"]
    (rank1, rank5, rank10, mAP, mINP, _), = metrics_rows(trained["log"])
    assert 0 <= rank1 <= rank5 <= rank10 <= 100 and 0 < mINP <= mAP <= 100
    assert re.search(r"^  FOLDER:\n    ROOT: people$", (trained["output"] / "config.yaml").read_text(), re.M)


def test_its_config_yaml_evaluates_it_again_and_a_rerun_of_the_dataset_writes_nothing(project, trained):
    status, log = run_script(TRAIN_NET, "--config-file", "logs/people/config.yaml", "--eval-only", "MODEL.WEIGHTS",
                             "logs/people/model_final.pth", cwd=project)
    assert status == 0, log[-3000:]
    assert metrics_rows(log) == metrics_rows(trained["log"])[-1:]
    before = {path: os.stat(path).st_mtime_ns for path in (project / "people").rglob("*.jpg")}
    status, out, err = mdpr_dataset(project, "videos/SYN-01", "videos/SYN-02", "--output", "people", "--every", "2")
    assert status == 0, err[-3000:]
    assert out.startswith(f"people: {len(before)} crops (0 written now, {len(before)} already there)"), out
    assert {path: os.stat(path).st_mtime_ns for path in (project / "people").rglob("*.jpg")} == before


def test_the_trained_model_is_a_boxmot_tracker_s_appearance_model_on_another_video(project, trained, no_downloads):
    extractor = FeatureExtractor(str(trained["output"] / "config.yaml"), str(trained["output"] / "model_final.pth"),
                                 device="cpu")
    scene = read_mot_sequence(str(project / "videos" / "SYN-00"))
    calls = []
    get_features = extractor.get_features
    extractor.get_features = lambda boxes, frame: calls.append(len(boxes)) or get_features(boxes, frame)
    ids, boxes = run_tracker(BotSort(reid_model=extractor, use_cmc=False), scene)
    scores = identity_scores(scene.truth_people, scene.truth, ids, boxes)
    assert len(calls) == sum(len(d) > 0 for d in scene.detections) and sum(calls) == scores.true_boxes
    assert scores.track_ids >= 1 and 0 < scores.idf1 <= 1


def test_a_training_split_alone_is_split_by_test_ids_and_the_split_kept_only_by_a_run_that_passed(project):
    status, _, err = mdpr_dataset(project, "videos/SYN-01", "--output", "everyone", "--every", "4", "--test-ids", "0")
    assert status == 0, err[-3000:]
    assert sorted(os.listdir(project / "everyone")) == ["mdpr_dataset.json", "train"]
    run = ["--config-file", "configs/MDPR/demo.yml", *READ_FOLDER, "DATASETS.FOLDER.ROOT", "everyone",
           "DATASETS.FOLDER.TEST_IDS", "2", "SOLVER.IMS_PER_BATCH", "8", *SHORT,
           "OUTPUT_DIR", "logs/split"]
    (project / "bad.pth").write_bytes(b"not a checkpoint")
    status, log = run_script(TRAIN_NET, *run, "MODEL.WEIGHTS", "bad.pth", cwd=project)
    assert status == 1 and "Traceback" not in log, log[-3000:]
    assert "held back as query" in log  # the split was made ...
    assert not (project / "logs" / "split").exists()  # ... and not written by a refused run

    status, log = run_script(TRAIN_NET, *run, cwd=project)
    assert status == 0, log[-3000:]
    split = json.loads((project / "logs" / "split" / "reid_folder_split.json").read_text())
    assert len(split["held_back_identities"]) == 2 and len(split["query"]) == 2  # one crop each: no cameras
    assert re.search(rf"2 of \d+ identities of .*everyone/train held back as query \(2 images\) and gallery "
                     rf"\({len(split['gallery'])} images\)", log), log[-3000:]
    assert len(metrics_rows(log)) == 1
