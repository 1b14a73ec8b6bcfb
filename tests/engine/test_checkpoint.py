"""The plugin's checkpointer: weights_only=True reading (fastreid's own checkpoints still load and resume),
bad files refused, atomic writes."""
import os

import numpy as np
import pytest
import torch
from fastreid.solver import build_lr_scheduler
from helpers import run_script
from mdpr_plugin.engine import CheckpointError, MDPRCheckpointer, Trainer, load_checkpoint_file


@pytest.fixture
def parts(demo_cfg):
    demo_cfg.MODEL.HEADS.NUM_CLASSES = 16

    def build():
        model = Trainer.build_model(demo_cfg)
        optimizer, _ = Trainer.build_optimizer(demo_cfg, model)
        return model, optimizer, build_lr_scheduler(demo_cfg, optimizer, iters_per_epoch=2)

    return build


def test_fastreid_checkpoint_with_optimizer_scheduler_and_numpy_metric_round_trips(parts, tmp_path):
    model, optimizer, schedulers = parts()
    optimizer.param_groups[0]["lr"] = 0.123
    for _ in range(3):
        schedulers["lr_sched"].step()
    MDPRCheckpointer(model, str(tmp_path), optimizer=optimizer, **schedulers).save(
        "model_best", epoch=4, metric=np.float64(61.5))  # fastreid stores the metric as numpy

    model2, optimizer2, schedulers2 = parts()
    extra = MDPRCheckpointer(model2, str(tmp_path), optimizer=optimizer2, **schedulers2).resume_or_load("", resume=True)
    assert extra["epoch"] == 4 and extra["metric"] == 61.5
    assert optimizer2.param_groups[0]["lr"] == 0.123
    assert schedulers2["lr_sched"].last_epoch == schedulers["lr_sched"].last_epoch == 3
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


class _RunsCode:
    """An object whose unpickling would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_holding_arbitrary_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "extra": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="Refusing to load .*evil.pth.*arbitrary code"):
        load_checkpoint_file(str(path))
    assert not marker.exists()


def test_truncated_checkpoint_is_refused_with_the_file_named(parts, tmp_path):
    model, _, _ = parts()
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.pth could not be read.*truncated"):
        load_checkpoint_file(str(path))


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "could not be read|not a torch checkpoint"),
    ([1, 2, 3], "holds a list, not a checkpoint"),
    ({"epoch": 3}, "neither a fastreid checkpoint"),
    ({"model": [1]}, r"checkpoint\['model'\] is a list"),
])
def test_malformed_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint_file(str(path))


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.pth not found.*MODEL.WEIGHTS"):
        load_checkpoint_file(os.path.join(tmp_path, "nowhere.pth"))


def test_bare_state_dict_loads_as_weights(parts, tmp_path):
    model, _, _ = parts()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    model2, _, _ = parts()
    MDPRCheckpointer(model2).load(str(path))
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


KILLED_WHILE_SAVING = """
import os, signal, sys, torch
from mdpr_plugin.engine import MDPRCheckpointer

model = torch.nn.Linear(3, 2)
checkpointer = MDPRCheckpointer(model, sys.argv[1])
torch.nn.init.constant_(model.weight, 1.0)
checkpointer.save("model_final")

def killed_half_way(data, f):
    f.write(b"PK\\x03\\x04 half a zip archive")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.nn.init.constant_(model.weight, 2.0)
torch.save = killed_half_way
checkpointer.save("model_final")
"""


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    returncode, output = run_script("-c", KILLED_WHILE_SAVING, str(tmp_path))
    assert returncode == -9, output
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    model = torch.nn.Linear(3, 2)
    MDPRCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(model.weight, torch.ones(2, 3))
