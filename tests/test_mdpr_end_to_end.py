"""MDPR's demo config end to end on the bundled real images: through train_net.py, through a deployment's
stock fastreid script with the two added lines, and evaluated from a checkpoint in the authors' layout."""
import torch
from helpers import run_script
from test_train_net import metrics_rows

from mdpr_plugin.modeling import to_authors_state_dict

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


def test_stock_fastreid_script_with_two_added_lines_trains_evaluates_and_loads_authors_layout(tmp_path):
    script = "tests/fixtures/stock_train_net.py"
    returncode, trained = run_script(script, *DEMO, *SHORT, "OUTPUT_DIR", str(tmp_path))
    assert returncode == 0, trained[-3000:]
    assert all(key in trained for key in LOSS_KEYS)
    (final_metrics,) = metrics_rows(trained)

    # the same weights saved in the MDPR authors' key layout load through MODEL.WEIGHTS with no key
    # missing or unexpected (NUM_CLASSES given, so that the classifiers match too), and give the
    # numbers of the trainer's own evaluation
    checkpoint = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    authors = tmp_path / "authors_layout.pth"
    torch.save({"model": to_authors_state_dict(checkpoint["model"])}, authors)
    for weights in (tmp_path / "model_final.pth", authors):
        returncode, evaluated = run_script(script, *DEMO, "--eval-only", "MODEL.WEIGHTS", str(weights),
                                           "MODEL.HEADS.NUM_CLASSES", "16",
                                           "OUTPUT_DIR", str(tmp_path / "eval"))
        assert returncode == 0, evaluated[-3000:]
        assert "not found in the checkpoint" not in evaluated and "not used by the model" not in evaluated
        assert metrics_rows(evaluated) == [final_metrics]
