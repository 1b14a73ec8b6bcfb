"""The plugin's checkpointer: weights_only=True reading (fastreid's own checkpoints still load and resume),
bad files refused, atomic writes."""
import os
import pickle

import numpy as np
import pytest
import torch
from fastreid.solver import build_lr_scheduler
from helpers import BUNDLED_IMAGES, MDPR_DEMO_CONFIG, run_script
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


class _RunsShellCommand:
    """An object whose unpickling would run a shell command that creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Plain:
    """An instance of a class of the user's: unpickling it imports and builds it."""

    def __init__(self, marker):
        self.marker = marker


def _pickle_dump(protocol):
    def dump(obj, path):
        with open(path, "wb") as f:  # a plain pickle named .pth, not a torch zip archive
            pickle.dump(obj, f, protocol=protocol)
    return dump


def _torch_save_legacy(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("payload, named", [(_RunsCode, r"(io|builtins|__builtin__)\.open"),
                                            (_RunsShellCommand, r"(posix|nt)\.system"),
                                            (_Plain, r"tests\.engine\.test_checkpoint\._Plain")],
                         ids=["open", "os.system", "custom-class"])
@pytest.mark.parametrize("write", [torch.save, _torch_save_legacy, _pickle_dump(None), _pickle_dump(2),
                                   _pickle_dump(0)], ids=["torch.save", "torch.save-legacy", "pickle", "pickle-2",
                                                          "pickle-0"])
def test_checkpoint_holding_arbitrary_objects_is_refused_without_running_them(tmp_path, payload, named, write):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    write({"model": {}, "extra": payload(str(marker))}, str(path))
    with pytest.raises(CheckpointError, match=rf"^Refusing to load .*evil\.pth: it holds a pickled Python object "
                                              rf"\([^)]*\b{named}\b[^)]*\), which could run arbitrary code"):
        load_checkpoint_file(str(path))
    assert not marker.exists()


def test_a_plain_pickle_of_numbers_is_not_called_malicious(tmp_path):
    path = tmp_path / "plain.pth"
    _pickle_dump(None)({"model": {"w": 1.0}}, str(path))
    with pytest.raises(CheckpointError, match=r"plain\.pth could not be read as a torch checkpoint"):
        load_checkpoint_file(str(path))


@pytest.mark.slow
def test_extract_reports_a_malicious_checkpoint_in_one_line(tmp_path):
    evil, marker = tmp_path / "evil.pth", tmp_path / "payload-ran"
    torch.save({"model": {}, "extra": _RunsShellCommand(str(marker))}, evil)
    returncode, output = run_script("-m", "mdpr_plugin.tools.extract", "--config-file", MDPR_DEMO_CONFIG, "--input",
                                    BUNDLED_IMAGES, "--output", str(tmp_path / "f.npz"), "MODEL.WEIGHTS", str(evil),
                                    "MODEL.DEVICE", "cpu")
    assert returncode == 1, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert errors == [f"mdpr-extract: error: Refusing to load {evil}: it holds a pickled Python object (posix.system), "
                      "which could run arbitrary code when unpickled; only tensors, containers and numbers are "
                      "accepted. If you trust the file, re-save its tensors alone: "
                      "torch.save({'model': model.state_dict()}, path)."], output
    assert "Traceback" not in output and not marker.exists() and not (tmp_path / "f.npz").exists()


def test_truncated_checkpoint_is_refused_with_the_file_named(parts, tmp_path):
    model, _, _ = parts()
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.pth could not be read.*truncated"):
        load_checkpoint_file(str(path))


@pytest.mark.parametrize("save", [_torch_save_legacy, torch.save], ids=["legacy", "zip"])
def test_a_checkpoint_cut_anywhere_is_refused_with_the_file_named(tmp_path, save):
    """Cut at every byte, a file of either format gives the one error: torch's reader raises IndexError,
    KeyError, struct.error, EOFError or UnpicklingError depending on where the legacy format is cut."""
    whole = tmp_path / "whole.pth"
    save({"model": {"w": torch.arange(6.0), "b": torch.ones(2, 3)}, "iteration": 5}, str(whole))
    data = whole.read_bytes()
    cut = tmp_path / "cut.pth"
    failures = {}
    for length in range(len(data)):
        cut.write_bytes(data[:length])
        try:
            load_checkpoint_file(str(cut))
        except CheckpointError as error:
            assert str(error).startswith(f"{cut} could not be read as a torch checkpoint: it is truncated"), error
        except Exception as error:  # noqa: BLE001  collected, to name every kind that escapes
            failures.setdefault(type(error).__name__, length)
        else:
            failures.setdefault("loaded", length)
    assert failures == {}


@pytest.mark.parametrize("text", ["hello\n", "model: weights\n", ""], ids=["hello", "yaml", "empty"])
def test_a_text_file_as_checkpoint_is_refused_with_the_file_named(tmp_path, text):
    path = tmp_path / "notes.pth"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=rf"^{path} could not be read as a torch checkpoint: it is truncated, "
                                              r"corrupt or of another format; re-save or re-download it"):
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


@pytest.mark.slow
def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    returncode, output = run_script("-c", KILLED_WHILE_SAVING, str(tmp_path))
    assert returncode == -9, output
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    model = torch.nn.Linear(3, 2)
    MDPRCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(model.weight, torch.ones(2, 3))
