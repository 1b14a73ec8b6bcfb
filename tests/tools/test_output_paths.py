"""Every tool checks its output paths before the work: a folder where a file goes, a file where a folder goes, a
folder nothing can be created in, a symbolic link are refused in one line, and nothing is created or changed. What
the tools write replaces the old files only once complete (mdpr_plugin.output_files)."""
import errno
import io
import os

import pytest
from helpers import MDPR_DEMO_CONFIG

from mdpr_plugin.errors import InputError
from mdpr_plugin.output_files import OutputWriteError, staged_outputs
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


def test_an_output_file_that_is_a_symbolic_link_is_refused(places):
    """The new file replaces the entry at the path: it would replace the link, not write where it points."""
    os.symlink(places / "a_file", places / "link.npz")
    os.symlink(places / "nowhere", places / "dangling.npz")
    for name, target in (("link.npz", "a_file"), ("dangling.npz", "nowhere")):
        with pytest.raises(InputError, match=rf"^--output {places}/{name} is a symbolic link \(to {places}/{target}\): "
                                             rf"the tool writes a new file in its place and would replace the link; "
                                             rf"give the path it points to \({places}/{target}\), or remove the link"):
            common.check_output_file(str(places / name))
    assert (places / "a_file").read_text() == "kept"


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


@pytest.mark.parametrize("code, fix", [
    (errno.ENOSPC, "free space there, or give --output on another disk"),
    (errno.EDQUOT, "free space within your disk quota, or give --output on another disk"),
    (errno.EFBIG, "the file system or a file-size limit (ulimit -f) does not allow a file this large: raise the limit, "
                  "or give --output on another file system"),
    (errno.EIO, "the disk reported an input/output error: check it (dmesg), or give --output on another disk"),
], ids=["no space", "quota", "too large", "disk error"])
def test_a_failed_write_of_files_staged_together_replaces_none_and_names_the_fix(places, code, fix):
    """The mdpr-search index and its .json: the second failing after the first was written leaves both old ones."""
    (places / "g.index").write_text("old index")
    (places / "g.index.json").write_text("old json")
    before = {name: (places / name).read_bytes() for name in tree(places) if (places / name).is_file()}
    with pytest.raises(OutputWriteError) as raised:
        with staged_outputs("--output") as outputs:
            with outputs.open(places / "g.index") as f:
                f.write(b"new index")
            with outputs.open(places / "g.index.json", "w") as f:
                f.write("{")
                raise OSError(code, os.strerror(code))
    assert str(raised.value) == (f"could not write {places}/g.index.json: {os.strerror(code)} (no file was replaced: "
                                 f"the previous ones are unchanged); {fix}")
    assert raised.value.errno == code
    assert {name: (places / name).read_bytes() for name in tree(places) if (places / name).is_file()} == before


def test_staged_files_replace_the_old_ones_keeping_their_mode_and_a_link_is_replaced_not_followed(places):
    (places / "old.csv").write_text("old")
    os.chmod(places / "old.csv", 0o640)
    os.symlink(places / "a_file", places / "planted.png")
    with staged_outputs() as outputs:
        for name in ("old.csv", "new.txt", "planted.png"):
            with outputs.open(places / name, "w") as f:
                f.write(f"new {name} \u00e9")
    for name in ("old.csv", "new.txt", "planted.png"):
        assert (places / name).read_text(encoding="utf-8") == f"new {name} \u00e9"
    assert oct(os.stat(places / "old.csv").st_mode & 0o777) == "0o640"
    assert not os.path.islink(places / "planted.png") and (places / "a_file").read_text() == "kept"
    assert tree(places) == sorted(["a_file", "a_folder", "new.txt", "old.csv", "planted.png"])


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_an_output_file_does_not_hand_out_its_descriptor(places, mode):
    """Pillow's encoders write a JPEG to a file's descriptor themselves and take the short write a file-size limit or
    a full disk gives for a complete one: the crop would be cut without an error. Without a descriptor they write
    through the file object, which raises."""
    with staged_outputs() as outputs, outputs.open(places / "crop.jpg", mode) as f:
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()
        f.write(b"x" if "b" in mode else "x")
    assert (places / "crop.jpg").read_bytes() == b"x"


def test_a_text_output_writes_the_bytes_of_a_name_that_are_not_utf8_escaped(places):
    """A Latin-1 file name, as Python decodes it (surrogateescape), raised UnicodeEncodeError in a CSV file."""
    with staged_outputs() as outputs, outputs.open(places / "results.csv", "w") as f:
        f.write(os.fsdecode(b"caf\xe9.jpg") + ",\u00e9t\u00e9.jpg\n")
    assert (places / "results.csv").read_bytes() == "caf\\xe9.jpg,\u00e9t\u00e9.jpg\n".encode("utf-8")
