"""MDPR's demo config end to end on the bundled real images, through train_net.py. (Through a fast-reid
clone's own script, and from a checkpoint in the authors' layout: tests/test_fastreid_clone.py.)"""
import pytest
from helpers import run_script
from test_train_net import metrics_rows

pytestmark = pytest.mark.slow  # train_net.py in a subprocess

DEMO = ("--config-file", "configs/MDPR/demo.yml")
SHORT = ("SOLVER.MAX_EPOCH", "2", "TEST.EVAL_PERIOD", "2", "SOLVER.WARMUP_ITERS", "1")
LOSS_KEYS = ["loss_hard_global_cls", "loss_hard_part_1_triplet", "loss_attn_bap3_cls",
             "loss_diversity_loss_reg_4", "loss_fusion_triplet", "loss_mutual_distillation"]


def test_demo_trains_and_evaluates_through_train_net(tmp_path):
    returncode, output = run_script("train_net.py", *DEMO, *SHORT, "OUTPUT_DIR", str(tmp_path))
    assert returncode == 0, output[-3000:]
    assert all(key in output for key in LOSS_KEYS)
    assert len(metrics_rows(output)) == 1
    assert (tmp_path / "model_best.pth").is_file()  # fastreid's best-model checkpointer
