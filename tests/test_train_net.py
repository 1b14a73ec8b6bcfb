"""train_net.py end to end on the bundled real images: train, evaluate, save, resume, evaluate only."""
import os
import re

import pytest
from helpers import run_script

pytestmark = pytest.mark.slow  # train_net.py in a subprocess

DEMO = ("--config-file", "configs/Baseline-demo.yml")


def metrics_rows(output):
    """The 'Dataset | Rank-1 | ...' result rows fastreid prints, as lists of floats."""
    rows = re.findall(r"^\| MiniMarket1501 \|(.*)\|\s*$", output, flags=re.M)
    return [[float(v) for v in row.split("|")] for row in rows]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("baseline"))
    returncode, output = run_script("train_net.py", *DEMO, "SOLVER.MAX_EPOCH", "2", "TEST.EVAL_PERIOD", "2",
                                    "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", out)
    assert returncode == 0, output[-3000:]
    return out, output


def test_training_evaluates_and_saves(trained):
    out, output = trained
    assert "Rank-1" in output and "mAP" in output and "mINP" in output
    (rank1, rank5, rank10, mAP, mINP, _), = metrics_rows(output)
    assert 0 <= rank1 <= rank5 <= rank10 <= 100 and 0 < mINP <= mAP <= 100
    assert {"model_final.pth", "last_checkpoint", "config.yaml", "metrics.json"} <= set(os.listdir(out))


def test_resume_continues_from_the_last_checkpoint(trained):
    out, _ = trained
    returncode, output = run_script("train_net.py", *DEMO, "--resume", "SOLVER.MAX_EPOCH", "4",
                                    "TEST.EVAL_PERIOD", "4", "OUTPUT_DIR", out)
    assert returncode == 0, output[-3000:]
    assert f"Loading checkpoint from {out}/model_final.pth" in output
    assert "Starting training from epoch 2" in output
    assert "epoch/iter: 2/" in output and "epoch/iter: 0/" not in output

    # evaluating the saved model alone gives the numbers the trainer's last evaluation gave
    returncode, evaluated = run_script("train_net.py", *DEMO, "--eval-only",
                                       "MODEL.WEIGHTS", f"{out}/model_final.pth", "OUTPUT_DIR", out + "/eval")
    assert returncode == 0, evaluated[-3000:]
    assert metrics_rows(evaluated) == metrics_rows(output)[-1:]
