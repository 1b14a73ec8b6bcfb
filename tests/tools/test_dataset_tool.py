"""mdpr-dataset from-mot, in this process: the gt.txt parser and its one-line refusals, the filters, the crops
(clipped to the frame, atomic), the layout ReidFolder reads, reruns that write only what is missing, and the output
folders it refuses. (tests/test_own_data.py runs the console script itself, end to end.)"""
import json
import os

import pytest
from helpers import load_config, logged
from PIL import Image

from mdpr_plugin.data import builders
from mdpr_plugin.errors import InputError
from mdpr_plugin.synthetic.mot_format import write_mot_sequence
from mdpr_plugin.synthetic.people_scene import make_sequence
from mdpr_plugin.tools import dataset
from mdpr_plugin.tools.dataset import Box, Filters, clipped_box, parse_gt_line, read_gt, rejection

GT = "SEQ/gt/gt.txt"


# ------------------------------------------------------------------------------------------- gt.txt
def test_a_gt_row_is_read_with_its_line_number():
    box = parse_gt_line("12, 3, 794.2, 47.5, 71.2, 174.8, 1, 1, 0.83\n", GT, 7)
    assert box == Box(12, 3, 794.2, 47.5, 71.2, 174.8, 1.0, 1, 0.83, 7)
    assert parse_gt_line("1,1,0,0,10,20,0,7,1.0,\n", GT, 1).cls == 7  # a trailing comma
    assert parse_gt_line("   \n", GT, 2) is None


@pytest.mark.parametrize("row, problem", [
    ("1,2,3,4,5,6,1,1", r"8 values, not 9"),
    ("1,2,3,4,5,6,1,1,0.5,9", r"10 values, not 9"),
    ("1,2,3,4,x,6,1,1,0.5", r"a value that is not a number"),
    ("1,2,3,4,nan,6,1,1,0.5", r"a value that is not finite"),
    ("0,2,3,4,5,6,1,1,0.5", r"frame 0 \(frames are whole numbers from 1\)"),
    ("1.5,2,3,4,5,6,1,1,0.5", r"frame 1\.5 \(frames are whole numbers from 1\)"),
    ("1,-1,3,4,5,6,1,1,0.5", r"track id -1 \(ids are whole numbers >= 0; det\.txt rows, with id -1, are detections, "
                             r"not ground truth\)"),
    ("1,2,3,4,5,6,1,1.5,0.5", r"class 1\.5 \(a whole number\)"),
], ids=["short", "long", "text", "nan", "frame 0", "fractional frame", "negative id", "fractional class"])
def test_a_malformed_gt_row_stops_in_one_line_naming_the_file_and_line(row, problem):
    with pytest.raises(InputError, match=rf"^SEQ/gt/gt\.txt:41: {problem} in '.*'; a gt\.txt row is frame,id,x,y,w,h,"
                                         r"conf,class,visibility .* Fix or remove that line\.$"):
        parse_gt_line(row + "\n", GT, 41)


def test_read_gt_names_the_line_of_the_first_bad_row(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("1,1,0,0,10,20,1,1,1\n\n2,1,0,0,10,20,1,1\n")
    with pytest.raises(InputError, match=rf"^{path}:3: 8 values, not 9"):
        read_gt(str(path))


# ------------------------------------------------------------------------------------------- filters
FILTERS = Filters(classes=(1,), keep_ignored=False, min_visibility=0.5, min_height=32, min_width=8, every=5)


def box(frame=1, x=10.0, y=10.0, w=20.0, h=50.0, conf=1.0, cls=1, visibility=1.0):
    return Box(frame, 1, x, y, w, h, conf, cls, visibility, 1)


@pytest.mark.parametrize("row, filters, reason", [
    (box(), FILTERS, None),
    (box(cls=7), FILTERS, "class"),
    (box(cls=7), Filters((1, 7), False, 0.5, 32, 8, 5), None),
    (box(conf=0), FILTERS, "ignored (conf 0)"),
    (box(conf=0), Filters((1,), True, 0.5, 32, 8, 5), None),
    (box(visibility=0.49), FILTERS, "visibility"),
    (box(visibility=-1), FILTERS, None),  # not given
    (box(frame=6), FILTERS, None),
    (box(frame=7), FILTERS, "frame step"),
    (box(h=31), FILTERS, "size"),
    (box(w=7), FILTERS, "size"),
    (box(x=620, w=40), FILTERS, None),  # 20 px of it inside the 640-wide frame
    (box(x=630, y=340, w=40), FILTERS, "size"),  # 10 x 20 px of it inside: too short
], ids=["kept", "class", "class kept", "ignored", "ignored kept", "visibility", "no visibility", "frame 6",
        "frame 7", "short", "narrow", "partly outside", "mostly outside"])
def test_the_filters(row, filters, reason):
    assert rejection(row, filters, 640, 360) == reason


def test_boxes_are_clipped_to_the_frame():
    assert clipped_box(box(x=-5.4, y=-2, w=20, h=50), 640, 360) == (0, 0, 15, 48)
    assert clipped_box(box(x=630.6, y=300, w=40, h=80), 640, 360) == (631, 300, 640, 360)
    assert clipped_box(box(x=700, y=10, w=20, h=50), 640, 360) == (700, 10, 700, 60)  # wholly outside: empty


# ------------------------------------------------------------------------------------------- the tool
@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """Two short MOTChallenge-format sequences of the synthetic scene, with other classes and MOT17's ignore rows."""
    root = tmp_path_factory.mktemp("mot")
    folders = []
    for seed in (0, 1):
        folder = write_mot_sequence(make_sequence(num_people=5, num_frames=16, seed=seed), str(root / f"SYN-{seed}"))
        with open(os.path.join(folder, "gt", "gt.txt"), "a") as f:
            f.write("3,90,100,100,40,100,1,7,1\n3,91,100,100,40,100,0,1,1\n4,92,100,100,40,100,1,1,0.1\n")
        folders.append(folder)
    return folders


def run(*argv):
    dataset.main(["from-mot", *map(str, argv)])


def files(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root) for folder, _, names in os.walk(root)
                  for name in names)


def test_it_writes_the_layout_reidfolder_reads(sequences, tmp_path, capsys):
    root = tmp_path / "people"
    run(*sequences, "--output", root, "--every", "1", "--test-ids", "2")
    written = files(root)
    crops = [path for path in written if path.endswith(".jpg")]
    assert "mdpr_dataset.json" in written and not [p for p in written if os.path.basename(p).startswith(".")]
    assert not [p for p in crops if "_00090" in p or "_00091" in p or "_00092" in p]  # class 7, ignored, hidden
    train = [p for p in crops if p.startswith("train/")]
    # the sequence is the training crops' camera; query and gallery have none (each crop its own)
    assert {p.split("/")[2] for p in train} == {"c1", "c2"}
    assert all(p.split("/")[1].startswith("SYN-0_") == (p.split("/")[2] == "c1") for p in train)
    query = [p for p in crops if p.startswith("query/")]
    assert len(query) == 2 and all(len(p.split("/")) == 3 for p in crops if not p.startswith("train/"))
    # each query is its identity's earliest crop
    for path in query:
        identity = path.split("/")[1]
        assert os.path.basename(path) < min(os.listdir(root / "gallery" / identity))
    assert f"{root}: {len(crops)} crops ({len(crops)} written now, 0 already there) of " in capsys.readouterr().out

    # a crop is its box of the frame, clipped
    manifest = json.loads((root / "mdpr_dataset.json").read_text())
    assert manifest["complete"] and manifest["crops"] == len(crops) and manifest["options"]["every"] == 1
    first = Image.open(root / train[0])
    assert first.size[1] >= 32 and first.size[0] >= 8

    cfg = load_config("configs/MDPR/demo.yml", "DATASETS.NAMES", "('ReidFolder',)", "DATASETS.FOLDER.ROOT", str(root),
                      "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.IMS_PER_BATCH", "8")
    items = builders.train_loader_parts(cfg)["train_set"].img_items
    parts = builders.test_loader_parts(cfg, "ReidFolder")
    assert len(items) == len(train) and parts["num_query"] == 2 and len(parts["test_set"]) == len(crops) - len(train)


def test_a_rerun_writes_only_what_is_missing_and_an_interrupted_one_leaves_no_half_image(sequences, tmp_path, capsys,
                                                                                         monkeypatch):
    root = tmp_path / "people"
    run(*sequences, "--output", root)
    before = {path: os.stat(root / path).st_mtime_ns for path in files(root) if path.endswith(".jpg")}
    capsys.readouterr()
    run(*sequences, "--output", root)
    assert {path: os.stat(root / path).st_mtime_ns for path in before} == before
    assert "(0 written now, " in capsys.readouterr().out

    # a run killed while writing: the crop being written is not there, nor its temporary file
    gone = sorted(before)[:3]
    for path in gone:
        os.remove(root / path)
    save = Image.Image.save

    def killed(image, f, *args, **kwargs):
        save(image, f, *args, **kwargs)
        f.truncate(100)  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        run(*sequences, "--output", root)
    assert not os.path.exists(root / gone[0]) and not [p for p in files(root) if ".tmp" in p]
    monkeypatch.setattr(Image.Image, "save", save)
    (root / gone[1]).parent.joinpath("000999.jpg.tmp4242").write_bytes(b"left by a kill -9")
    run(*sequences, "--output", root)
    assert "(3 written now, " in capsys.readouterr().out
    assert sorted(p for p in files(root) if p.endswith(".jpg")) == sorted(before)
    assert not [p for p in files(root) if ".tmp" in p]


@pytest.mark.parametrize("prepare, argv, message", [
    (lambda root, sequences: (root.mkdir(), (root / "notes.txt").write_text("mine")), [],
     r"--output {root} already holds other files \(notes\.txt\); give a new or empty folder"),
    (lambda root, sequences: run(*sequences, "--output", root), ["--every", "2"],
     r"--output {root} holds a dataset made from other sequences or options \(see {root}/mdpr_dataset\.json\)"),
    (lambda root, sequences: root.write_text("a file"), [], r"--output {root} is a file; give a folder"),
], ids=["other data", "other options", "a file"])
def test_an_output_folder_holding_something_else_is_refused(sequences, tmp_path, capsys, prepare, argv, message):
    root = tmp_path / "people"
    prepare(root, sequences)
    before = files(root) if root.is_dir() else None
    with pytest.raises(SystemExit, match="^mdpr-dataset: error: " + message.format(root=root)):
        run(*sequences, "--output", root, *argv)
    assert (files(root) if root.is_dir() else None) == before


def test_a_malformed_row_stops_before_anything_is_written(sequences, tmp_path):
    bad = tmp_path / "BAD"
    os.makedirs(bad / "gt")
    os.symlink(os.path.join(sequences[0], "img1"), bad / "img1")
    lines = open(os.path.join(sequences[0], "gt", "gt.txt")).read().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0]
    (bad / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=rf"^mdpr-dataset: error: {bad}/gt/gt\.txt:5: 8 values, not 9 in "):
        run(bad, "--output", tmp_path / "people")
    assert not (tmp_path / "people").exists()


def test_a_sequence_given_twice_or_without_gt_and_too_few_identities(sequences, tmp_path):
    with pytest.raises(SystemExit, match=r"^mdpr-dataset: error: sequence folder .*/nowhere does not exist$"):
        run(tmp_path / "nowhere", "--output", tmp_path / "a")
    os.makedirs(tmp_path / "NOGT" / "img1")
    with pytest.raises(SystemExit, match=r"NOGT has no gt/gt\.txt: from-mot reads the ground truth"):
        run(tmp_path / "NOGT", "--output", tmp_path / "a")
    with pytest.raises(SystemExit, match=r"identities with 2 or more crops are left after the filters .* Loosen"):
        run(sequences[0], "--output", tmp_path / "a", "--min-height", "1000")
    with logged("mdpr_plugin") as warnings:
        run(sequences[0], sequences[0], "--output", tmp_path / "b", "--test-ids", "0")
    assert any("has the same gt.txt as" in w for w in warnings), warnings
    assert {p.split("/")[0] for p in files(tmp_path / "b") if p.endswith(".jpg")} == {"train"}
    assert all(len(p.split("/")) == 3 for p in files(tmp_path / "b") if p.endswith(".jpg"))  # one sequence: no camera


@pytest.mark.parametrize("value, parsed", [("0", 0), ("3", 3), ("0.25", 0.25)])
def test_test_ids_values(value, parsed):
    assert dataset.test_ids_value(value) == parsed and type(dataset.test_ids_value(value)) is type(parsed)


@pytest.mark.parametrize("value", ["-1", "1.5", "1.0", "x"])
def test_test_ids_values_refused(value, capsys):
    with pytest.raises(SystemExit):
        dataset.parse_args(["from-mot", "S", "--output", "o", "--test-ids", value])
    assert "argument --test-ids: " in capsys.readouterr().err
