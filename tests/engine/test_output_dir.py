"""OUTPUT_DIR's checks and lock within one process (a second process contending for the lock:
tests/engine/test_run_safety.py)."""
import os
import socket

import pytest
from helpers import load_config, logged

from mdpr_plugin.engine.output_dir import (abandon_output_dir, check_output_dir, lock_output_dir,
                                           release_output_dir, remove_partial_checkpoints, write_config)
from mdpr_plugin.errors import InputError


def test_an_empty_output_dir_and_links_where_the_run_writes_are_refused(tmp_path):
    with pytest.raises(InputError, match="OUTPUT_DIR is empty"):
        check_output_dir("")
    (tmp_path / "log.txt").symlink_to(tmp_path / "elsewhere.txt")
    (tmp_path / "notes.txt").symlink_to(tmp_path / "elsewhere.txt")  # not a file the run writes
    with pytest.raises(InputError, match=r"symbolic links where the run writes its files \(log\.txt -> .*elsewhere"
                                         r"\.txt\)") as refused:
        check_output_dir(str(tmp_path))
    assert "notes.txt" not in str(refused.value)


def test_the_lock_records_this_process_until_the_run_ends(tmp_path):
    folder = tmp_path / "run"
    lock_output_dir(str(folder))
    try:
        assert (folder / "run.lock").read_text().startswith(f"pid {os.getpid()} on {socket.gethostname()}, since ")
    finally:
        release_output_dir(str(folder))
    assert (folder / "run.lock").read_text() == ""


def test_a_refused_run_leaves_a_new_folder_absent_and_an_old_record_as_it_was(tmp_path):
    new = tmp_path / "new"
    lock_output_dir(str(new))
    abandon_output_dir(str(new))
    assert not new.exists()

    old = tmp_path / "old"
    old.mkdir()
    record = "pid 4242 on a-host-that-is-not-this-one, since 2020-01-01 00:00:00\n"
    (old / "run.lock").write_text(record)
    with logged() as warnings:
        lock_output_dir(str(old))
    abandon_output_dir(str(old))
    assert any("taking over from a run that ended without releasing it (pid 4242 " in w for w in warnings)
    assert (old / "run.lock").read_text() == record


def test_only_the_temporary_files_of_interrupted_saves_are_removed(tmp_path):
    for name in ("model_0003.pth.tmp4242", "model_0002.pth", "notes.tmp", "model_0001.pth.tmpx"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_partial_checkpoints(str(tmp_path))
    assert [os.path.basename(path) for path in removed] == ["model_0003.pth.tmp4242"]
    assert sorted(os.listdir(tmp_path)) == ["model_0001.pth.tmpx", "model_0002.pth", "notes.tmp"]


def test_config_yaml_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    cfg = load_config("configs/Baseline-demo.yml", "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_EPOCH", "3")
    target = tmp_path / "target.txt"
    target.write_text("not the config\n")
    (tmp_path / "config.yaml").symlink_to(target)
    write_config(cfg)
    assert target.read_text() == "not the config\n"
    assert not (tmp_path / "config.yaml").is_symlink()
    assert load_config(str(tmp_path / "config.yaml")).SOLVER.MAX_EPOCH == 3
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "target.txt"]
