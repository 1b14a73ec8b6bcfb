"""Every tool checks its output paths before the work: a folder where a file goes, a file where a folder goes, a
folder nothing can be created in are refused in one line, and nothing is created or changed."""
import os

import pytest
from helpers import MDPR_DEMO_CONFIG

from mdpr_plugin.errors import InputError
from mdpr_plugin.tools import common, export, extract

UNCREATABLE = "/proc/mdpr-output-check"  # no file can be created under /proc, whoever runs the tests


def tree(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, folders, files in os.walk(folder) for name in folders + files)


@pytest.fixture
def places(tmp_path):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("kept")
    return tmp_path


@pytest.mark.parametrize("path, message", [
    ("a_folder", r"--output {d}/a_folder is a folder; give the path of the file to write"),
    ("a_file/x.npz", r"--output {d}/a_file/x\.npz cannot be written: {d}/a_file is a file, not a folder"),
    ("a_file/deeper/x.npz", r"--output {d}/a_file/deeper/x\.npz cannot be written: {d}/a_file is a file, not a folder"),
    (UNCREATABLE + "/x.npz", r"--output /proc/mdpr-output-check/x\.npz cannot be written: no file can be created "
                             r"in /proc \(.*\); give a path in a folder you can write"),
], ids=["folder", "under a file", "deeper under a file", "uncreatable"])
def test_an_output_file_that_cannot_be_written_is_refused(places, path, message):
    before = tree(places)
    with pytest.raises(InputError, match="^" + message.format(d=places)):
        common.check_output_file(str(places / path))
    assert tree(places) == before and (places / "a_file").read_text() == "kept"


def test_a_read_only_output_file_is_refused(places, monkeypatch):
    monkeypatch.setattr(common.os, "access", lambda path, mode: False)  # root may write any file: say it may not
    with pytest.raises(InputError, match=rf"^--json {places}/a_file is a read-only file; give another path"):
        common.check_output_file(str(places / "a_file"), "--json")


def test_an_output_file_that_can_be_written_passes_and_nothing_is_created(places):
    before = tree(places)
    for path in ("new.npz", "a_file", "new/deeper/x.npz"):
        common.check_output_file(str(places / path))
    assert tree(places) == before


@pytest.mark.parametrize("path, message", [
    ("a_file", r"--output-dir {d}/a_file is a file; give a folder"),
    ("a_file/vis", r"--output-dir {d}/a_file/vis cannot be written: {d}/a_file is a file, not a folder"),
    (UNCREATABLE, r"--output-dir /proc/mdpr-output-check cannot be written: no file can be created in /proc"),
], ids=["file", "under a file", "uncreatable"])
def test_an_output_folder_that_cannot_be_written_is_refused(places, path, message):
    before = tree(places)
    with pytest.raises(InputError, match="^" + message.format(d=places)):
        common.check_output_folder(str(places / path))
    assert tree(places) == before
    common.check_output_folder(str(places / "a_folder"))
    common.check_output_folder(str(places / "new" / "vis"))
    assert tree(places) == before


def refuse_to_build(*args, **kwargs):
    raise AssertionError("the model was built before the output path was checked")


@pytest.mark.parametrize("tool", [extract, export])
def test_extract_and_export_check_the_output_before_building_the_model(places, monkeypatch, tool):
    """mdpr-extract found an --output it could not write after extracting every image."""
    monkeypatch.setattr(tool, "FeatureExtractor", refuse_to_build)
    options = ["--input", str(places)] if tool is extract else []
    with pytest.raises(SystemExit, match=rf"^mdpr-{tool.__name__.rsplit('.', 1)[1]}: error: --output {places}/a_folder "
                                         r"is a folder; give the path of the file to write$"):
        tool.main(["--config-file", MDPR_DEMO_CONFIG, *options, "--output", str(places / "a_folder"),
                   "MODEL.WEIGHTS", "unused.pth"])
