"""A training run loses no work and mixes with no other: OUTPUT_DIR's lock, early checks, the checkpoint before
the evaluation, resuming a finished run, the config's learning rate on --resume, one-line multi-process errors."""
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from helpers import BUNDLED_IMAGES, REPO, load_config, logged, run_script

from mdpr_plugin.engine import Trainer
from mdpr_plugin.engine.output_dir import (OutputDirInUseError, lock_output_dir, release_output_dir,
                                           remove_partial_checkpoints)
from mdpr_plugin.errors import InputError
from mdpr_plugin.evaluation.evaluator import EmptyEvaluationSetError

DEMO = ("--config-file", "configs/Baseline-demo.yml")


# ----------------------------------------------------------------------------------- the folder lock
HOLD_THE_LOCK = f"""
import sys, time
sys.path.insert(0, {REPO!r})
from mdpr_plugin.engine.output_dir import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def running_run(tmp_path):
    """A process holding tmp_path/out's lock, as a training run's main process does; yields (folder, pid)."""
    folder = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield folder, process.pid
    process.kill()
    process.wait()


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_stops_at_once_naming_the_running_process(running_run):
    folder, pid = running_run
    in_use = rf"OUTPUT_DIR {folder} is in use by another training run \(pid {pid} "
    with pytest.raises(OutputDirInUseError, match=in_use):
        lock_output_dir(folder)
    start = time.perf_counter()
    returncode, output = run_script("train_net.py", *DEMO, "OUTPUT_DIR", str(folder))
    assert returncode == 1 and f"in use by another training run (pid {pid} on" in output, output[-2000:]
    assert "Traceback" not in output and time.perf_counter() - start < 60
    assert sorted(os.listdir(folder)) == ["run.lock"]  # no log.txt, config.yaml or checkpoint written


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over_and_its_partial_checkpoints_removed(running_run):
    folder, pid = running_run
    os.kill(pid, 9)  # the run dies without releasing its lock: the file keeps its record
    time.sleep(0.5)
    (folder / "model_0003.pth.tmp4242").write_bytes(b"half a checkpoint")
    (folder / "last_checkpoint.tmp4242").write_text("model_0003.pth")
    (folder / "model_0002.pth").write_bytes(b"a complete one")
    with logged() as warnings:
        lock_output_dir(folder)
    try:
        assert any(f"taking over from a run that ended without releasing it (pid {pid} " in w for w in warnings)
        assert sorted(os.path.basename(p) for p in remove_partial_checkpoints(str(folder))) == [
            "last_checkpoint.tmp4242", "model_0003.pth.tmp4242"]
        assert sorted(os.listdir(folder)) == ["model_0002.pth", "run.lock"]
    finally:
        release_output_dir(folder)
    assert (folder / "run.lock").read_text() == ""  # a released lock leaves no record


@pytest.mark.slow
def test_a_run_that_fails_its_checks_leaves_the_folders_config_yaml_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("the earlier run's config\n")
    empty = tmp_path / "datasets"
    empty.mkdir()
    returncode, output = run_script("train_net.py", *DEMO, "DATASETS.NAMES", "('Market1501',)", "OUTPUT_DIR", str(out),
                                    env={"FASTREID_DATASETS": str(empty)})
    assert returncode == 1 and "ERROR: Market1501: " in output, output[-2000:]
    assert (out / "config.yaml").read_text() == "the earlier run's config\n"


# ------------------------------------------------------------------------------- checks before training
@pytest.fixture
def market(tmp_path, monkeypatch):
    """A copy of the bundled images as FASTREID_DATASETS/Market-1501-v15.09.15, with the config reading it."""
    import fastreid.data.build as data_build

    root = tmp_path / "datasets"
    shutil.copytree(BUNDLED_IMAGES, root / "Market-1501-v15.09.15")
    monkeypatch.setattr(data_build, "_root", str(root))
    return root / "Market-1501-v15.09.15"


def _market_cfg(tmp_path, *overrides):
    return load_config("configs/Baseline-demo.yml", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
                       "DATASETS.NAMES", ("Market1501",), "DATASETS.TESTS", ("Market1501",), *overrides)


def test_a_test_set_no_query_of_which_can_be_ranked_stops_the_run_before_training(market, tmp_path):
    gallery = market / "bounding_box_test"
    query_people = {name[:4] for name in os.listdir(market / "query")}
    for name in os.listdir(gallery):  # every gallery image of a query's person goes
        if name[:4] in query_people:
            os.remove(gallery / name)
    shutil.copy(next((market / "bounding_box_train").iterdir()), gallery)  # a gallery of someone else
    with pytest.raises(EmptyEvaluationSetError, match=r"Market1501: none of its 32 queries has a gallery image of "
                                                      r"the same person from another camera \(1 gallery images\)"):
        Trainer(_market_cfg(tmp_path))


def test_queries_without_a_match_in_the_gallery_are_counted_in_a_warning(market, tmp_path):
    query = sorted(os.listdir(market / "query"))
    person = query[0][:4]
    for name in os.listdir(market / "bounding_box_test"):
        if name.startswith(person):
            os.remove(market / "bounding_box_test" / name)
    unmatched = sum(name.startswith(person) for name in query) + 2  # two queries had no match to start with
    with logged() as warnings:
        Trainer(_market_cfg(tmp_path))
    expected = f"Market1501: {unmatched} of 32 queries have no gallery image of their person from another camera"
    assert any(expected in w for w in warnings), warnings


def test_a_cosine_schedule_with_no_epoch_after_the_warm_up_is_refused(demo_cfg):
    demo_cfg.merge_from_list(["SOLVER.SCHED", "CosineAnnealingLR", "SOLVER.MAX_EPOCH", 2, "SOLVER.WARMUP_ITERS", 4])
    with pytest.raises(InputError, match=r"SOLVER.MAX_EPOCH 2, SOLVER.WARMUP_ITERS 4 \(2 iterations per epoch\).*"
                                         r"Raise SOLVER.MAX_EPOCH"):
        Trainer(demo_cfg)


# --------------------------------------------------------------------- checkpoints and the evaluation
def _train(cfg, resume=False):
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer, trainer.train()


@pytest.mark.slow
def test_the_checkpoint_is_written_before_an_evaluation_that_fails(demo_cfg, monkeypatch):
    demo_cfg.merge_from_list(["SOLVER.MAX_EPOCH", 2, "SOLVER.CHECKPOINT_PERIOD", 1, "TEST.EVAL_PERIOD", 1])

    def failing_evaluation(cfg, model):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(Trainer, "test", classmethod(lambda cls, cfg, model: failing_evaluation(cfg, model)))
    with pytest.raises(RuntimeError, match="evaluation failed"):
        _train(demo_cfg)
    folder = demo_cfg.OUTPUT_DIR
    assert open(os.path.join(folder, "last_checkpoint")).read() == "model_0000.pth"
    assert torch.load(os.path.join(folder, "model_0000.pth"), weights_only=False)["epoch"] == 0


@pytest.mark.slow
def test_model_best_is_chosen_by_the_epochs_own_evaluation(demo_cfg, monkeypatch):
    """Three epochs whose evaluations give 10, 30, 20: model_best is epoch 1's model, neither the first
    evaluated nor the last."""
    demo_cfg.merge_from_list(["SOLVER.MAX_EPOCH", 3, "SOLVER.CHECKPOINT_PERIOD", 1, "TEST.EVAL_PERIOD", 1])
    metrics = iter([10.0, 30.0, 20.0])
    monkeypatch.setattr(Trainer, "test", classmethod(lambda cls, cfg, model: {"metric": next(metrics)}))
    _train(demo_cfg)
    assert next(metrics, None) is None  # one evaluation per epoch

    folder = demo_cfg.OUTPUT_DIR
    best, *epochs = (torch.load(os.path.join(folder, name), weights_only=False)
                     for name in ("model_best.pth", "model_0000.pth", "model_0001.pth", "model_final.pth"))
    assert (best["epoch"], best["metric"]) == (1, 30.0)
    assert [epoch["epoch"] for epoch in epochs] == [0, 1, 2]

    def same_weights(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert [same_weights(best["model"], epoch["model"]) for epoch in epochs] == [False, True, False]
    assert open(os.path.join(folder, "last_checkpoint")).read() == "model_final.pth"


# ------------------------------------------------------------------------------------------ resuming
@pytest.mark.slow
def test_a_finished_run_resumed_says_so_and_writes_a_missing_model_final(tmp_path):
    out = str(tmp_path / "out")
    short = ("SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "OUTPUT_DIR", out)  # 2 iterations
    returncode, output = run_script("train_net.py", *DEMO, *short)
    assert returncode == 0, output[-3000:]  # fastreid's printer divided by zero at the end of such a short run
    # a kill while model_final was written: the last complete checkpoint is the epoch's other file
    os.replace(os.path.join(out, "model_final.pth"), os.path.join(out, "model_0000.pth"))
    open(os.path.join(out, "last_checkpoint"), "w").write("model_0000.pth")
    returncode, output = run_script("train_net.py", *DEMO, "--resume", *short)
    assert returncode == 0, output[-3000:]
    assert "holds a finished run (its checkpoint ends epoch 1 of SOLVER.MAX_EPOCH 1): nothing left to train" in output
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["epoch"] == 0


@pytest.mark.slow
def test_a_resumed_run_takes_the_learning_rate_from_the_config(demo_cfg):
    demo_cfg.merge_from_list(["SOLVER.MAX_EPOCH", 3, "SOLVER.CHECKPOINT_PERIOD", 1, "TEST.EVAL_PERIOD", 3,
                              "SOLVER.WARMUP_ITERS", 0])
    first = Trainer(demo_cfg)
    first.resume_or_load(resume=False)
    first.max_epoch, first.max_iter = 1, first.iters_per_epoch  # stop after the first epoch, as a killed run would
    first.train()
    halved = demo_cfg.clone()
    halved.SOLVER.BASE_LR = demo_cfg.SOLVER.BASE_LR / 2
    resumed = Trainer(halved)
    with logged(level=logging.INFO) as lines:
        resumed.resume_or_load(resume=True)
    assert resumed.start_epoch == 1
    for before, after in zip(first.optimizer.param_groups, resumed.optimizer.param_groups):
        assert after["lr"] == pytest.approx(before["lr"] / 2) and after["initial_lr"] == pytest.approx(
            before["initial_lr"] / 2)
    assert any("Learning rates from this config, not the checkpoint's" in line for line in lines)

    changed = demo_cfg.clone()
    changed.SOLVER.STEPS = (2,)
    with pytest.raises(InputError, match=r"--resume continues the learning-rate schedule .* lr_sched.milestones "
                                         r"Counter\(\{4: 1\}\) in the checkpoint, Counter\(\{2: 1\}\) in this config"):
        Trainer(changed).resume_or_load(resume=True)


@pytest.mark.slow
def test_the_advice_of_the_non_finite_loss_message_works(tmp_path):
    """Diverge after a checkpoint, follow the message (lower SOLVER.BASE_LR, --resume), and the run completes."""
    out = str(tmp_path / "out")
    # epoch 0 (2 iterations) is all warm-up at BASE_LR x 1e-36 and is checkpointed; epoch 1 runs at BASE_LR
    common = ("SEED", "3", "SOLVER.MAX_EPOCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "2",
              "SOLVER.WARMUP_ITERS", "2", "SOLVER.WARMUP_FACTOR", "1e-36", "SOLVER.WARMUP_METHOD", "constant",
              "SOLVER.STEPS", "[10]", "OUTPUT_DIR", out)
    returncode, output = run_script("train_net.py", *DEMO, *common, "SOLVER.BASE_LR", "1e30")
    assert returncode == 1, output[-3000:]
    assert "Training stopped at iteration 3" in output and "lower SOLVER.BASE_LR" in output and "--resume" in output
    returncode, output = run_script("train_net.py", *DEMO, "--resume", *common, "SOLVER.BASE_LR", "0.00035")
    assert returncode == 0, output[-3000:]
    assert "Learning rates from this config, not the checkpoint's" in output
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


# ------------------------------------------------------------------------------------ several processes
@pytest.mark.slow
def test_a_failure_in_every_process_is_one_line_for_the_run_and_no_traceback(tmp_path):
    empty = tmp_path / "datasets"
    empty.mkdir()
    returncode, output = run_script("train_net.py", *DEMO, "--num-gpus", "2", "MODEL.DEVICE", "cpu",
                                    "DATASETS.NAMES", "('Market1501',)", "OUTPUT_DIR", str(tmp_path / "out"),
                                    env={"FASTREID_DATASETS": str(empty), "OMP_NUM_THREADS": "1"})
    assert returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, output[-3000:]  # both processes stop on it; the run says it once
    assert errors[0].startswith("ERROR: Market1501: ") and "not found" in errors[0]
