"""A training run under faults and bad input, through train_net.py: refused runs leave OUTPUT_DIR byte for byte as
they found it, in one line; the lock dies with the main process; a removed or full OUTPUT_DIR keeps the last good
checkpoint; nothing is written through links planted in a shared OUTPUT_DIR."""
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers import REPO, run_script

from mdpr_plugin.errors import InputError, reporting_errors
from mdpr_plugin.serialization import safe_load

DEMO = ["train_net.py", "--config-file", "configs/MDPR/demo.yml"]
SHORT = ["SOLVER.MAX_EPOCH", "4", "SEED", "0"]  # 2 iterations per epoch


def snapshot(folder):
    """Every file under ``folder`` (names and contents), or None when it does not exist."""
    if not os.path.isdir(folder):
        return None
    return {os.path.relpath(os.path.join(root, name), folder):
            hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest() if not os.path.islink(
                os.path.join(root, name)) else "link -> " + os.readlink(os.path.join(root, name))
            for root, _, names in os.walk(folder) for name in names}


def one_error_line(output):
    assert "Traceback" not in output, output[-4000:]
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, output[-4000:]
    return errors[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-epoch demo run with a checkpoint after every epoch."""
    output = tmp_path_factory.mktemp("runs") / "finished"
    status, log = run_script(*DEMO, *SHORT, "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(output))
    assert status == 0, log[-4000:]
    return output


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# ------------------------------------------------------------------------------ refused: nothing changes
def _truncate_last_checkpoint(folder):
    last = folder / (folder / "last_checkpoint").read_text()
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])


def _text_checkpoint(folder):
    (folder / "model_final.pth").write_text("not a checkpoint\n")


def _last_checkpoint_altered(state=None, **entries):
    """Rewrite the last checkpoint with ``entries`` (or, with ``state``, those entries of its ``state``) changed."""
    def alter(folder):
        last = folder / (folder / "last_checkpoint").read_text()
        checkpoint = safe_load(str(last))
        (checkpoint[state] if state else checkpoint).update(entries)
        torch.save(checkpoint, last)
    return alter


BAD_RUNS = [  # (name, how the folder is prepared, the command line's additions, what the one line says)
    ("a changed schedule on --resume", None, ["--resume", "SOLVER.MAX_EPOCH", "6"],
     "--resume continues the learning-rate schedule"),
    ("a checkpoint of another width on --resume", None, ["--resume", "MODEL.BACKBONE.EMBEDDING_DIM", "64"],
     "does not fit the model"),
    ("a truncated checkpoint on --resume", _truncate_last_checkpoint, ["--resume"], "could not be read"),
    ("a text file as the checkpoint", _text_checkpoint, ["--resume"], "could not be read"),
    ("a checkpoint of epoch -1 on --resume", _last_checkpoint_altered(epoch=-1), ["--resume"],
     "model_final.pth cannot be resumed from: its 'epoch' is -1, not a count (an integer from 0 to 4294967295)"),
    ("a checkpoint of epoch 'abc' on --resume", _last_checkpoint_altered(epoch="abc"), ["--resume"],
     "model_final.pth cannot be resumed from: its 'epoch' is 'abc', not a count"),
    ("a checkpoint of iteration 'abc' on --resume", _last_checkpoint_altered("warmup_sched", last_epoch="abc"),
     ["--resume"], "model_final.pth cannot be resumed from: its warmup_sched 'last_epoch' is 'abc', not a count"),
    ("a batch the sampler cannot fill", None, ["SOLVER.IMS_PER_BATCH", "15"],
     "is not a multiple of DATALOADER.NUM_INSTANCE 2"),
    ("one image of each identity in a batch", None, ["DATALOADER.NUM_INSTANCE", "1"],
     "DATALOADER.NUM_INSTANCE 1 gives each identity one image per training batch: the triplet loss"),
    ("one identity in each batch", None, ["DATALOADER.NUM_INSTANCE", "16"],
     "16 images per process with DATALOADER.NUM_INSTANCE 16 puts 1 identity in each training batch"),
    ("a negative learning rate", None, ["SOLVER.BASE_LR", "-0.00035"], "SOLVER.BASE_LR -0.00035 is not allowed"),
    ("checkpoints every 0 epochs", None, ["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD 0 is not allowed"),
    ("evaluations every 0 epochs", None, ["TEST.EVAL_PERIOD", "0"], "TEST.EVAL_PERIOD 0 is not allowed"),
    ("MODEL.DEVICE gpu", None, ["MODEL.DEVICE", "gpu"], "MODEL.DEVICE 'gpu' is not allowed"),
    ("an embedding width of 0", None, ["MODEL.BACKBONE.EMBEDDING_DIM", "0"],
     "MODEL.BACKBONE.EMBEDDING_DIM 0 is not allowed: it must be an integer from 1 to 16384"),
    ("a negative embedding width", None, ["MODEL.BACKBONE.EMBEDDING_DIM", "-5"],
     "MODEL.BACKBONE.EMBEDDING_DIM -5 is not allowed: it must be an integer from 1 to 16384"),
    ("an embedding width of 10^7", None, ["MODEL.BACKBONE.EMBEDDING_DIM", "10000000"],
     "MODEL.BACKBONE.EMBEDDING_DIM 10000000 is not allowed: it must be an integer from 1 to 16384"),
    ("10^4 attention maps", None, ["ATTN_NUM", "10000"], "ATTN_NUM 10000 is not allowed: it must be an integer from 1 "
                                                         "to 64"),
    ("a training input of 10^5 pixels", None, ["INPUT.SIZE_TRAIN", "[100000, 50000]"],
     "INPUT.SIZE_TRAIN [100000, 50000] is not allowed: it must be [height, width], two integers from 1 to 8192"),
    ("a test input of 10^5 pixels", None, ["INPUT.SIZE_TEST", "[100000, 50000]"],
     "INPUT.SIZE_TEST [100000, 50000] is not allowed: it must be [height, width], two integers from 1 to 8192"),
    ("an unknown backbone", None, ["MODEL.BACKBONE.NAME", "build_resnet_backbon"], "Did you mean"),
    ("a missing IMPORTS module", None, ["IMPORTS", "no_such_module"], "IMPORTS: module no_such_module"),
    ("a missing dataset folder", None, ["DATASETS.NAMES", "('Market1501',)"], "FASTREID_DATASETS"),
    ("a symbolic link planted as log.txt", lambda f: _replace_by_link(f / "log.txt", f / "model_final.pth"), [],
     "holds symbolic links where the run writes its files (log.txt -> "),
]


def _replace_by_link(path, target):
    path.unlink()
    os.symlink(target, path)


@pytest.mark.slow
@pytest.mark.parametrize("prepare, additions, expected", [case[1:] for case in BAD_RUNS],
                         ids=[case[0] for case in BAD_RUNS])
def test_a_refused_run_says_why_in_one_line_and_leaves_output_dir_as_it_was(run_copy, prepare, additions,
                                                                             expected):
    if prepare:
        prepare(run_copy)
    before = snapshot(run_copy)
    flags = [a for a in additions if a.startswith("--")]
    opts = [a for a in additions if not a.startswith("--")]
    status, output = run_script(*DEMO, *flags, *SHORT, *opts, "OUTPUT_DIR", str(run_copy))
    assert status == 1
    assert expected in one_error_line(output)
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_a_run_refused_into_a_new_folder_leaves_no_folder(tmp_path):
    status, output = run_script(*DEMO, *SHORT, "DATASETS.NAMES", "('Market1501',)", "OUTPUT_DIR",
                                str(tmp_path / "new"), env={"FASTREID_DATASETS": str(tmp_path / "nothing")})
    assert status == 1 and "FASTREID_DATASETS" in one_error_line(output)
    assert not os.path.exists(tmp_path / "new")


@pytest.mark.slow
def test_an_empty_output_dir_is_refused_and_writes_nothing_where_it_runs(tmp_path):
    status, output = run_script(os.path.join(REPO, "train_net.py"), "--config-file", "MDPR/demo.yml", "OUTPUT_DIR",
                                "", cwd=tmp_path)
    assert status == 1 and "OUTPUT_DIR is empty" in one_error_line(output)
    assert os.listdir(tmp_path) == []  # no stray run.lock, log.txt or checkpoint in the working folder


# ----------------------------------------------------------------------------------------- the lock
@pytest.mark.slow
def test_the_lock_dies_with_the_main_process_though_its_loader_workers_live_on(tmp_path):
    output = tmp_path / "run"
    log = open(tmp_path / "first.out", "w")
    first = subprocess.Popen([sys.executable, *DEMO, "DATALOADER.NUM_WORKERS", "2", "SOLVER.MAX_EPOCH", "20",
                              "OUTPUT_DIR", str(output)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 600
    while "epoch/iter:" not in open(tmp_path / "first.out").read():  # training, its workers running
        assert first.poll() is None and time.monotonic() < deadline, open(tmp_path / "first.out").read()[-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # the main process only: its workers are orphaned for a while
    first.wait()
    status, resumed = run_script(*DEMO, "--resume", "DATALOADER.NUM_WORKERS", "2", "SOLVER.MAX_EPOCH", "20",
                                 "OUTPUT_DIR", str(output))
    assert status == 0, resumed[-4000:]
    assert "taking over from a run that ended without releasing it (pid" in resumed


# ------------------------------------------------------------------------- a removed or full folder
FAULTS = textwrap.dedent("""
    # IMPORTS module of the tests: a fault at one point of the run (AT: a checkpoint's name, "checks" once the run's
    # checks have passed, "first-step" at its first training step)
    import errno, os, shutil, subprocess, torch
    from mdpr_plugin.engine.checkpointer import MDPRCheckpointer
    from mdpr_plugin.engine.trainer import Trainer

    FAULT, AT = os.environ["MDPR_TEST_FAULT"], os.environ["MDPR_TEST_FAULT_AT"]
    save, torch_save = MDPRCheckpointer.save, torch.save
    resume_or_load, run_step = Trainer.resume_or_load, Trainer.run_step

    def fault(folder):
        if FAULT == "remove-folder":
            shutil.rmtree(folder)
        if FAULT == "read-only":  # root writes into a folder without write permission: make it immutable
            subprocess.run(["chattr", "+i", folder], check=True) if os.geteuid() == 0 else os.chmod(folder, 0o555)

    def faulty_save(self, name, **kwargs):
        if name == AT:
            fault(self.save_dir)
        if name == AT and FAULT == "disk-full":
            torch.save = lambda *args, **kwargs: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left"))
        try:
            return save(self, name, **kwargs)
        finally:
            torch.save = torch_save

    def faulty_resume_or_load(self, resume=True):
        resume_or_load(self, resume)
        if AT == "checks":
            fault(self.cfg.OUTPUT_DIR)

    def faulty_run_step(self):
        if AT == "first-step" and self.iter == self.start_iter:
            fault(self.cfg.OUTPUT_DIR)
        run_step(self)

    MDPRCheckpointer.save = faulty_save
    Trainer.resume_or_load, Trainer.run_step = faulty_resume_or_load, faulty_run_step
""")


def _run_with_fault(tmp_path, fault, at, *additions, output=None, checkpoint_period=1):
    (tmp_path / "faults.py").write_text(FAULTS)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "MDPR_TEST_FAULT": fault, "MDPR_TEST_FAULT_AT": at}
    output = output or tmp_path / "run"
    status, log = run_script(*DEMO, *additions, *SHORT, "SOLVER.CHECKPOINT_PERIOD", str(checkpoint_period),
                             "IMPORTS", "faults", "OUTPUT_DIR", str(output), env=env)
    return status, log, output


@contextlib.contextmanager
def writable_again(folder):
    """Give ``folder`` back its write permission (and take away the immutable flag) after the block."""
    try:
        yield
    finally:
        if os.geteuid() == 0 and os.path.isdir(folder):
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        if os.path.isdir(folder):
            os.chmod(folder, 0o755)


@pytest.mark.slow
def test_an_output_dir_removed_during_training_is_made_again(tmp_path):
    status, log, output = _run_with_fault(tmp_path, "remove-folder", "model_0001")
    assert status == 0, log[-4000:]
    assert "was removed during training: recreating it for this checkpoint" in log
    files = set(os.listdir(output))
    assert {"model_0001.pth", "model_final.pth", "last_checkpoint", "config.yaml", "log.txt", "run.lock"} <= files
    assert "model_0000.pth" not in files  # removed with the folder
    assert "Saving checkpoint to" in (output / "log.txt").read_text()  # the log goes on in the new folder
    assert safe_load(str(output / "model_final.pth"))["model"]


@pytest.mark.slow
def test_a_full_disk_stops_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    status, log, output = _run_with_fault(tmp_path, "disk-full", "model_0002")
    assert status == 1
    line = one_error_line(log)
    assert f"No space left in OUTPUT_DIR {output} to save model_0002.pth: it needs about" in line
    assert "the last checkpoint written, model_0001.pth, is intact" in line
    assert (output / "last_checkpoint").read_text() == "model_0001.pth"
    assert not [name for name in os.listdir(output) if ".tmp" in name]  # the partial file is gone
    assert torch.is_tensor(next(iter(safe_load(str(output / "model_0001.pth"))["model"].values())))


def _resumable_after_epoch_2(folder):
    """``folder``, a finished run, as a run interrupted after its second epoch: model_0000 and model_0001 kept."""
    for name in ("model_0002.pth", "model_final.pth"):
        (folder / name).unlink()
    (folder / "last_checkpoint").write_text("model_0001.pth")


def _checkpoints(folder):
    return {name: digest for name, digest in snapshot(folder).items() if name.endswith(".pth") or name ==
            "last_checkpoint"}


@pytest.mark.slow
def test_a_file_size_limit_during_a_checkpoint_is_one_line_and_keeps_the_checkpoints(run_copy):
    """ulimit -f below a checkpoint's size (a full disk as a quota shows it): torch's zip writer reported the failed
    write as a RuntimeError ("unexpected pos") with a traceback."""
    _resumable_after_epoch_2(run_copy)
    before = _checkpoints(run_copy)
    limit = 8 * 2 ** 20
    assert os.path.getsize(run_copy / "model_0001.pth") > limit
    status, log = run_script(*DEMO, "--resume", *SHORT, "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(run_copy),
                             limits={resource.RLIMIT_FSIZE: limit},
                             before=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))  # writes fail with EFBIG
    assert status == 1, log[-4000:]
    line = one_error_line(log)
    assert line.startswith(f"ERROR: model_0002.pth could not be saved into OUTPUT_DIR {run_copy}: this process may "
                           "write files of at most 8.0 MiB (ulimit -f), and it needs about "), line
    assert line.endswith("; the last checkpoint written, model_0001.pth, is intact. Raise the limit (ulimit -f "
                         "unlimited) or free space, then continue with --resume."), line
    assert _checkpoints(run_copy) == before  # and no partial file left
    assert not [name for name in os.listdir(run_copy) if ".tmp" in name]


@pytest.mark.slow
def test_an_output_dir_removed_before_the_metrics_are_written_is_made_again(tmp_path):
    """No checkpoint comes before the epoch's metrics: the metrics writer failed with a FileNotFoundError traceback.
    As for a checkpoint, the folder is made again and the run goes on; the metrics go on in the new folder."""
    status, log, output = _run_with_fault(tmp_path, "remove-folder", "first-step", checkpoint_period=10)
    assert status == 0, log[-4000:]
    assert f"OUTPUT_DIR {output} was removed during training: recreating it for metrics.json" in log
    assert "Traceback" not in log
    assert {"metrics.json", "model_final.pth", "last_checkpoint", "config.yaml", "log.txt"} <= set(os.listdir(output))
    with open(output / "metrics.json") as f:  # the training's scalars go on in the folder made again
        assert any("total_loss" in json.loads(line) for line in f)


@pytest.mark.slow
@pytest.mark.parametrize("at, kept", [("checks", "the last checkpoint written, model_final.pth, is intact"),
                                      ("model_0001", "the last checkpoint written, model_0000.pth, is intact")])
def test_an_output_dir_made_read_only_during_a_run_is_one_line(run_copy, tmp_path, at, kept):
    """Made read-only (immutable for root) once the checks passed, or at a checkpoint: the config.yaml or checkpoint
    written through a temporary file failed with a PermissionError traceback."""
    if at == "checks":
        flags, folder = ["--resume"], run_copy  # a finished run: a refusal leaves it byte for byte
    else:
        flags, folder = [], tmp_path / "new"
    before = snapshot(folder)
    with writable_again(folder):
        status, log, output = _run_with_fault(tmp_path, "read-only", at, *flags, output=folder)
        name = "log.txt" if at == "checks" else "model_0001.pth"
        assert status == 1, log[-4000:]
        expected = (f"ERROR: OUTPUT_DIR {folder} can no longer be written (REASON, writing {name}): it was made "
                    f"read-only after the run started; {kept}. Make it writable again (chmod u+w {folder}; chattr -i "
                    "if it was made immutable), then continue with --resume.")
        reason = "(Permission denied|Operation not permitted)"  # chmod, chattr +i
        assert re.fullmatch(re.escape(expected).replace("REASON", reason), one_error_line(log)), log[-2000:]
    if at == "checks":
        assert snapshot(folder) == before
    else:
        assert (folder / "last_checkpoint").read_text() == "model_0000.pth"
        assert not [name for name in os.listdir(folder) if ".tmp" in name]


@pytest.mark.slow
def test_a_stale_temporary_file_is_removed_and_folders_named_like_one_are_left_alone(tmp_path):
    """A config.yaml.tmp<pid> of an ended process that had the run's process id made the run fail on config.yaml; a
    folder named like a partly written file (backup.tmp1, model_0001.pth.tmp77) in the removal of an interrupted
    run's leftovers."""
    output = tmp_path / "run"
    for folder in ("backup.tmp1", "model_0001.pth.tmp77"):
        (output / folder).mkdir(parents=True)
        (output / folder / "kept.txt").write_text("kept\n")
    (output / "notes.txt.tmp5").write_text("not the run's\n")

    def leave_a_stale_config():  # in the new process, before Python starts: its process id is the run's
        (output / f"config.yaml.tmp{os.getpid()}").write_text("stale\n")

    status, log = run_script(*DEMO, *SHORT, "OUTPUT_DIR", str(output), before=leave_a_stale_config)
    assert status == 0, log[-4000:]
    assert "Traceback" not in log
    assert {"backup.tmp1/kept.txt", "model_0001.pth.tmp77/kept.txt", "notes.txt.tmp5", "config.yaml",
            "model_final.pth"} <= set(snapshot(output))
    assert not [name for name in os.listdir(output) if name.startswith("config.yaml.tmp")]
    assert (output / "notes.txt.tmp5").read_text() == "not the run's\n"
    assert "MAX_EPOCH: 4" in (output / "config.yaml").read_text()


# ----------------------------------------------------------------------------------------- memory
def _address_space_after_start_up():
    """Bytes of address space an interpreter has taken once it imported the plugin and torch."""
    status, output = run_script("-c", "import mdpr_plugin, torch; print(open('/proc/self/status').read()"
                                      ".split('VmSize:')[1].split()[0])")
    assert status == 0, output
    return int(output.strip().splitlines()[-1]) * 1024


@pytest.fixture(scope="module")
def memory_limit():
    """A limit (RLIMIT_AS, ulimit -v) that leaves 1.6 GiB after start-up: the demo's data and model fit (1.1 GiB
    here), a training step at 384 x 192 (2.9 GiB) or an evaluation of 64 such images (2.3 GiB) does not."""
    return {resource.RLIMIT_AS: _address_space_after_start_up() + int(1.6 * 2 ** 30)}


CPU = ["MODEL.DEVICE", "cpu"]  # a CUDA context would take the limited address space itself


@pytest.mark.slow
@pytest.mark.parametrize("additions, expected", [
    (["INPUT.SIZE_TRAIN", "[8192, 4096]"], r"ERROR: INPUT.SIZE_TRAIN \[8192, 4096\] cannot be loaded: a batch of 16 "
                                           r"images \(SOLVER.IMS_PER_BATCH\) that size needs at least 13.5 GiB of "
                                           r"memory before the model runs, and \d\.\d GiB are available\. Lower "
                                           r"INPUT.SIZE_TRAIN .* or SOLVER.IMS_PER_BATCH\."),
    (["MODEL.BACKBONE.EMBEDDING_DIM", "8192"],
     r"ERROR: The model of this config \(MODEL.BACKBONE.EMBEDDING_DIM 8192, ATTN_NUM 2, PART_NUM 2, "
     r"MODEL.BACKBONE.DEPTH 18x\) has 63.7 GiB of weights, and \d\.\d GiB are available on cpu .* Lower "
     r"MODEL.BACKBONE.EMBEDDING_DIM or ATTN_NUM or PART_NUM, or choose a smaller backbone\."),
], ids=["input size", "embedding width"])
def test_sizes_beyond_the_memory_left_are_refused_before_anything_is_built(run_copy, memory_limit, additions,
                                                                            expected):
    before = snapshot(run_copy)
    status, output = run_script(*DEMO, *SHORT, *CPU, *additions, "OUTPUT_DIR", str(run_copy), limits=memory_limit)
    assert status == 1
    assert re.fullmatch(expected, one_error_line(output)), one_error_line(output)
    assert snapshot(run_copy) == before


@pytest.mark.slow
@pytest.mark.parametrize("stage, additions, expected", [
    ("training", ["INPUT.SIZE_TRAIN", "[384, 192]", "OUTPUT_DIR", "{new}"],
     "ERROR: Out of memory during a training step ({allocator}; ulimit -v allows this process {limit}; the machine "
     "has {available} available). Lower SOLVER.IMS_PER_BATCH or INPUT.SIZE_TRAIN, or free memory (other processes on "
     "this machine); the checkpoints written before are intact."),
    ("evaluation", ["--eval-only", "MODEL.WEIGHTS", "{run}/model_final.pth", "TEST.IMS_PER_BATCH", "64",
                    "INPUT.SIZE_TEST", "[384, 192]", "OUTPUT_DIR", "{new}"],
     "ERROR: Out of memory during the evaluation ({allocator}; ulimit -v allows this process {limit}; the machine has "
     "{available} available). Lower TEST.IMS_PER_BATCH or INPUT.SIZE_TEST, or free memory (other processes on this "
     "machine)."),
])
def test_running_out_of_memory_during_a_run_is_one_line_saying_what_to_lower(run_copy, memory_limit, tmp_path, stage,
                                                                             additions, expected):
    before = snapshot(run_copy)
    folders = {"run": run_copy, "new": tmp_path / "new"}
    additions = [a.format(**folders) for a in additions]
    flags = [a for a in additions if a.startswith("--")]
    opts = [a for a in additions if not a.startswith("--")]
    status, output = run_script(*DEMO, *flags, *SHORT, *CPU, *opts, limits=memory_limit)
    assert status == 1, output[-4000:]
    line = one_error_line(output)
    pattern = re.escape(expected).replace(re.escape("{allocator}"), r"[^;]*(can't allocate memory|could not create a "
                                                                    r"primitive)[^;]*")
    pattern = pattern.replace(re.escape("{limit}"), re.escape(f"{memory_limit[resource.RLIMIT_AS] / 2 ** 30:.1f} GiB"))
    assert re.fullmatch(pattern.replace(re.escape("{available}"), r"\d+\.\d GiB"), line), line
    assert snapshot(run_copy) == before


# ------------------------------------------------------------------------------- processes and workers
@pytest.mark.slow
@pytest.mark.parametrize("open_files", [14, 32], ids=["at the workers' start", "handing batches over"])
def test_loader_workers_out_of_open_files_end_the_run_in_one_line(tmp_path, open_files):
    """With ulimit -n 32 the workers cannot hand batches over (each travels as file descriptors): the evaluation's
    loader used to wait forever for the batch its worker dropped. With 14 the workers cannot all start: torch's
    cleanup of its half-made iterator printed a traceback of its own."""
    output = tmp_path / "run"
    output.mkdir()
    (output / "notes.txt").write_text("kept\n")
    status, log = run_script(*DEMO, "SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "2",
                             "DATALOADER.NUM_WORKERS", "2", "OUTPUT_DIR", str(output),
                             limits={resource.RLIMIT_NOFILE: open_files}, timeout=300)
    assert status == 1, log[-4000:]
    assert one_error_line(log) == (
        f"ERROR: A data loader ran out of open files: this process may open {open_files} (ulimit -n), and each of the "
        "DATALOADER.NUM_WORKERS 2 loader processes hands its batches over through open files. Raise the limit (e.g. "
        "ulimit -n 4096) or lower DATALOADER.NUM_WORKERS (0 loads in the main process).")
    assert (output / "notes.txt").read_text() == "kept\n"


@pytest.mark.slow
def test_a_process_group_port_in_use_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, output = run_script("train_net.py", "--config-file", "configs/Baseline-demo.yml", "--num-gpus", "2",
                                    "--dist-url", f"tcp://127.0.0.1:{port}", "MODEL.DEVICE", "cpu", "OUTPUT_DIR",
                                    str(tmp_path / "run"), env={"OMP_NUM_THREADS": "1"})
    assert status == 1, output[-4000:]
    line = one_error_line(output)  # the process that stopped says why; the launcher adds no line of its own
    assert f"could not join the process group at --dist-url tcp://127.0.0.1:{port}" in line
    assert "--dist-url auto" in line


def test_fastreid_s_default_address_becomes_a_free_port_on_one_machine(monkeypatch):
    from fastreid.engine import default_argument_parser

    from mdpr_plugin.engine import launch as launcher

    started = {}
    monkeypatch.setattr(launcher.mp, "spawn", lambda fn, nprocs, daemon, args: started.update(url=args[4]))
    default = default_argument_parser().get_default("dist_url")
    launcher.launch(print, 2, dist_url=default, device_type="cpu")
    assert started["url"] != default and started["url"].startswith("tcp://127.0.0.1:")
    launcher.launch(print, 2, dist_url="tcp://127.0.0.1:29999", device_type="cpu")  # a port given is kept
    assert started["url"] == "tcp://127.0.0.1:29999"


def test_an_error_in_a_loader_worker_is_reported_as_its_own_line():
    from torch._utils import ExceptionWrapper

    try:
        raise InputError("image /data/0001_c1.jpg could not be read: truncated")
    except InputError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(SystemExit) as stop, reporting_errors():
        wrapped.reraise()  # what the main process of a loader with workers raises
    assert stop.value.code == "ERROR: image /data/0001_c1.jpg could not be read: truncated"


# ---------------------------------------------------------------------------------------------- links
@pytest.mark.slow
def test_eval_only_does_not_log_through_a_link(finished_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (folder / "log.txt").unlink()
    os.symlink(victim, folder / "log.txt")
    status, output = run_script(*DEMO, "--eval-only", "MODEL.WEIGHTS", str(folder / "model_final.pth"), "OUTPUT_DIR",
                                str(folder))
    assert status == 0, output[-3000:]
    assert "Not writing log.txt into OUTPUT_DIR" in output
    assert victim.read_text() == "precious\n"
