"""Bad input gets a message that names the file or key and the fix, and damages nothing written before."""
import glob
import os
import re
import shutil

import fastreid.data.build as data_build
import numpy as np
import pytest
import torch
from fastreid.config import get_cfg
from fastreid.engine.train_loop import HookBase
from helpers import REPO, load_config, logged, run_script
from PIL import Image

from mdpr_plugin import add_mdpr_config
from mdpr_plugin.config import MAX_BASE_FILES, ConfigKeyError, build_config, merge_config
from mdpr_plugin.data import BUNDLED_ROOT
from mdpr_plugin.data.checks import DatasetLayoutError, DatasetNotFoundError, SamplingError
from mdpr_plugin.data.images import BadImageError
from mdpr_plugin.engine import Trainer
from mdpr_plugin.errors import InputError, MDPRError, run_reporting_errors
from mdpr_plugin.engine.hooks import NonFiniteWeightsError
from mdpr_plugin.engine.train_loop import CheckedAMPTrainer, CheckedTrainer, NonFiniteLossError
from mdpr_plugin.evaluation import ReidEvaluator
from mdpr_plugin.evaluation.evaluator import EmptyEvaluationSetError
from mdpr_plugin.serialization import CheckpointError, safe_load


def test_missing_dataset_folder_names_it_and_fastreid_datasets(demo_cfg):
    demo_cfg.DATASETS.NAMES = ("DukeMTMC",)
    with pytest.raises(DatasetNotFoundError, match=r"DukeMTMC: .*DukeMTMC-reID not found.*FASTREID_DATASETS"):
        Trainer.build_train_loader(demo_cfg)


@pytest.mark.parametrize("source, overrides, message", [
    ("file", [], r"Unknown config key MODEL.BACKBONE.EMBEDING_DIM in .*typo.yml\. "
                 r"Did you mean MODEL.BACKBONE.EMBEDDING_DIM\?"),
    ("command line", ["SOLVER.BASE_LRR", "0.1"], r"Unknown config key SOLVER.BASE_LRR in the command line\. "
                                                  r"Did you mean SOLVER.BASE_LR\?"),
])
def test_unknown_config_key_suggests_the_closest(tmp_path, source, overrides, message):
    path = tmp_path / "typo.yml"
    path.write_text("MODEL:\n  BACKBONE:\n    EMBEDING_DIM: 256\n" if source == "file" else "SOLVER:\n  BASE_LR: 0.1\n")
    cfg = get_cfg()
    add_mdpr_config(cfg)
    with pytest.raises(ConfigKeyError, match=message):
        merge_config(cfg, str(path), overrides)


def test_a_missing_config_file_and_a_value_of_the_wrong_type_are_named(tmp_path):
    with pytest.raises(MDPRError, match=r"Config file .*nowhere\.yml not found"):
        build_config(str(tmp_path / "nowhere.yml"))
    with pytest.raises(MDPRError, match=r"Type mismatch .* for config key: SOLVER\.MAX_EPOCH \(in the command line\)"):
        build_config(os.path.join(REPO, "configs/MDPR/demo.yml"), ["SOLVER.MAX_EPOCH", "twenty"])


@pytest.mark.slow
def test_train_net_reports_an_unknown_key_without_a_deep_traceback(earlier_run):
    returncode, output = run_script("train_net.py", "--config-file", os.path.join(REPO, "configs/MDPR/demo.yml"),
                                    "MODEL.BACKBONE.DEPHT", "50x", "OUTPUT_DIR", earlier_run.path)
    assert returncode != 0
    assert ("ERROR: Unknown config key MODEL.BACKBONE.DEPHT in the command line. Did you mean MODEL.BACKBONE.DEPTH?"
            in output)
    assert "Traceback" not in output
    assert earlier_run.unchanged()


DEMO_CONFIG = os.path.join(REPO, "configs/MDPR/demo.yml")


@pytest.mark.parametrize("files, message", [
    ({"a.yml": "_BASE_: b.yml\n", "b.yml": "SEED: 1\n_BASE_: a.yml\n"},
     r"Config files include each other through _BASE_ in a cycle: {d}/a\.yml -> {d}/b\.yml -> {d}/a\.yml\. "
     r"Remove the _BASE_ that leads back\."),
    ({"a.yml": "_BASE_: a.yml\n"}, r"in a cycle: {d}/a\.yml -> {d}/a\.yml\."),
    ({"a.yml": "_BASE_: ../configs/base.yml\n"},
     r"Config file {d}/a\.yml names _BASE_: \.\./configs/base\.yml, which is not found "
     r"\({d}/\.\./configs/base\.yml\)\. Fix the path in {d}/a\.yml: a _BASE_ is relative to the file that "
     r"names it\."),
    ({"a.py": "from fastreid.config import get_cfg\ncfg = get_cfg()\n"},
     r"Config file {d}/a\.py is a Python file: configs are YAML files of KEY: value mappings"),
    ({"a.yml": "_BASE_: b.yml\n", "b.yml": "SOLVER:\n  STEPS: [4, 8\n"},
     r"Config file {d}/b\.yml could not be read as YAML: while parsing a flow sequence at line 2, column 10; "
     r"expected ',' or '\]', but got '<stream end>' at line 3, column 1\. Fix the file there\."),
    ({"a.yml": "- SOLVER.BASE_LR\n- 0.1\n"},
     r"Config file {d}/a\.yml holds a list, not a mapping of KEY: value\. A config is a YAML file like"),
    ({"a.yml": "_BASE_: b.yml\n", "b.yml": ""}, r"Config file {d}/b\.yml is empty, not a mapping of KEY: value\."),
    ({"a.yml": "SEED: !!python/object/apply:os.getpid []\n"},
     r"Config file {d}/a\.yml could not be read as YAML: could not determine a constructor for the tag "
     r"'tag:yaml\.org,2002:python/object/apply:os\.getpid' at line 1, column 7\."),
    ({"a.yml": "_BASE_: b.yml\nMODEL:\n  WEIGHTS:\n    FILE: w.pth\n", "b.yml": "MODEL:\n  WEIGHTS: w.pth\n"},
     r"Config file {d}/a\.yml: WEIGHTS is a mapping in one of its files and a single value in a _BASE_ below it "
     r"\(a mapping in {d}/a\.yml; a single value in {d}/b\.yml\)\. Make them the same kind\."),
], ids=["_BASE_ cycle", "_BASE_ itself", "_BASE_ missing", "python file", "syntax error in a base", "a list",
        "an empty base", "python tag", "a mapping over a value"])
def test_a_config_file_that_cannot_be_read_is_named_with_the_fix(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(MDPRError, match=message.format(d=re.escape(str(tmp_path)))):
        build_config(str(tmp_path / next(iter(files))))


def _write_base_chain(folder, bases):
    """``folder/a.yml`` standing on ``bases`` _BASE_ files, each naming the next; the last sets SEED 1."""
    names = ["a.yml"] + [f"base{i}.yml" for i in range(1, bases + 1)]
    for name, base in zip(names, names[1:]):
        (folder / name).write_text(f"_BASE_: {base}\n")
    (folder / names[-1]).write_text("SEED: 1\n")


def test_a_config_may_stand_on_max_base_files_and_no_more(tmp_path):
    _write_base_chain(tmp_path, MAX_BASE_FILES)
    assert build_config(str(tmp_path / "a.yml")).SEED == 1
    _write_base_chain(tmp_path, MAX_BASE_FILES + 1)
    with pytest.raises(InputError, match=rf"Config file .*base{MAX_BASE_FILES}\.yml names _BASE_: "
                                         rf"base{MAX_BASE_FILES + 1}\.yml, one more than the {MAX_BASE_FILES} _BASE_"):
        build_config(str(tmp_path / "a.yml"))


@pytest.mark.slow
@pytest.mark.parametrize("write, message", [
    (lambda folder: _write_base_chain(folder, 2000),
     "ERROR: Config file {d}/base100.yml names _BASE_: base101.yml, one more than the 100 _BASE_ files a config may "
     "stand on (counting from {d}/a.yml). Merge files of that chain into one."),
    (lambda folder: (folder / "a.yml").write_text("SEED: 1\n", encoding="utf-16"),
     "ERROR: Config file {d}/a.yml is not UTF-8 text (byte 0: invalid start byte), and fastreid reads config files "
     "as UTF-8: save it as UTF-8."),
], ids=["2,000 _BASE_ files", "a UTF-16 file"])
def test_train_net_names_a_config_file_fastreid_could_not_load(tmp_path, earlier_run, write, message):
    write(tmp_path)
    returncode, output = run_script("train_net.py", "--config-file", str(tmp_path / "a.yml"),
                                    "OUTPUT_DIR", earlier_run.path)
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert returncode == 1 and errors == [message.format(d=tmp_path)], output[-3000:]
    assert "Traceback" not in output
    assert earlier_run.unchanged()  # not even run.lock


@pytest.mark.parametrize("key, value, message", [
    ("INPUT.SIZE_TRAIN", "[0, 0]", r"INPUT\.SIZE_TRAIN \[0, 0\] is not allowed: it must be \[height, width\], "
                                   r"two integers from 1 to 8192 \(to keep images at their size, give that size\)\. Fix it in"),
    ("INPUT.SIZE_TEST", "[8193, 128]", r"INPUT\.SIZE_TEST \[8193, 128\] is not allowed: it must be \[height, width\], "
                                       r"two integers from 1 to 8192"),
    ("MODEL.BACKBONE.EMBEDDING_DIM", "0", r"MODEL\.BACKBONE\.EMBEDDING_DIM 0 is not allowed: it must be an integer "
                                          r"from 1 to 16384 \(E, the width of every MDPR embedding"),
    ("MODEL.BACKBONE.EMBEDDING_DIM", "16385", r"MODEL\.BACKBONE\.EMBEDDING_DIM 16385 is not allowed"),
    ("ATTN_NUM", "65", r"ATTN_NUM 65 is not allowed: it must be an integer from 1 to 64 \(M, MDPR's foreground"),
    ("PART_NUM", "0", r"PART_NUM 0 is not allowed: it must be an integer from 1 to 64 \(P, MDPR's horizontal"),
    ("INPUT.SIZE_TEST", "[256]", r"INPUT\.SIZE_TEST \[256\] is not allowed: it must be \[height, width\]"),
    ("INPUT.SIZE_TEST", "[256, 128.0]", r"INPUT\.SIZE_TEST \[256, 128\.0\] is not allowed"),
    ("SOLVER.IMS_PER_BATCH", "-4", r"SOLVER\.IMS_PER_BATCH -4 is not allowed: it must be an integer >= 1 "
                                   r"\(training images per batch, over all processes\)\. Fix it in the config file"),
    ("TEST.IMS_PER_BATCH", "0", r"TEST\.IMS_PER_BATCH 0 is not allowed: it must be an integer >= 1"),
    ("DATALOADER.NUM_INSTANCE", "0", r"DATALOADER\.NUM_INSTANCE 0 is not allowed: it must be an integer >= 1"),
    ("DATALOADER.NUM_WORKERS", "-1", r"DATALOADER\.NUM_WORKERS -1 is not allowed: it must be an integer >= 0"),
    ("SOLVER.MAX_EPOCH", "0", r"SOLVER\.MAX_EPOCH 0 is not allowed: it must be an integer >= 1 \(epochs to train\)"),
])
def test_a_config_value_no_run_can_use_is_refused_naming_the_key(key, value, message):
    with pytest.raises(InputError, match=message):
        build_config(DEMO_CONFIG, [key, value])


def test_the_smallest_allowed_config_values_pass():
    cfg = build_config(DEMO_CONFIG, ["INPUT.SIZE_TRAIN", "[1, 1]", "INPUT.SIZE_TEST", "[1, 1]",
                                     "SOLVER.IMS_PER_BATCH", "1", "TEST.IMS_PER_BATCH", "1", "DATALOADER.NUM_INSTANCE",
                                     "1", "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_EPOCH", "1",
                                     "MODEL.BACKBONE.EMBEDDING_DIM", "1", "ATTN_NUM", "1", "PART_NUM", "1"])
    assert (cfg.INPUT.SIZE_TRAIN, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS) == ([1, 1], 1, 0)


@pytest.mark.slow
@pytest.mark.parametrize("files, overrides, message", [
    ({"a.yml": "_BASE_: b.yml\n", "b.yml": "_BASE_: a.yml\n"}, [], "ERROR: Config files include each other"),
    ({"a.yml": f"_BASE_: {DEMO_CONFIG}\n"}, ["SOLVER.IMS_PER_BATCH", "-4"],
     "ERROR: SOLVER.IMS_PER_BATCH -4 is not allowed: it must be an integer >= 1"),
], ids=["config file", "config value"])
def test_train_net_reports_a_bad_config_before_writing_anything(tmp_path, earlier_run, files, overrides, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    returncode, output = run_script("train_net.py", "--config-file", str(tmp_path / "a.yml"), *overrides,
                                    "OUTPUT_DIR", earlier_run.path)
    assert returncode == 1 and message in output, output[-3000:]
    assert "Traceback" not in output
    assert sorted(os.listdir(earlier_run.path)) == ["last_checkpoint", "model_0007.pth"]  # not even a log


# ------------------------------------------------------------------------------------------------
# Small Market-1501-layout folders built from the bundled images, read through FASTREID_DATASETS.
# ------------------------------------------------------------------------------------------------
BUNDLED = os.path.join(BUNDLED_ROOT, "Market-1501-v15.09.15")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


@pytest.fixture
def market(tmp_path, monkeypatch):
    """<tmp>/datasets/Market-1501-v15.09.15, a copy of the bundled images, as FASTREID_DATASETS."""
    root = tmp_path / "datasets"
    shutil.copytree(BUNDLED, root / "Market-1501-v15.09.15")
    monkeypatch.setattr(data_build, "_root", str(root))
    monkeypatch.setenv("FASTREID_DATASETS", str(root))  # for subprocesses
    return root / "Market-1501-v15.09.15"


@pytest.fixture
def market_cfg(market, demo_cfg):
    demo_cfg.DATASETS.NAMES = ("Market1501",)
    demo_cfg.DATASETS.TESTS = ("Market1501",)
    return demo_cfg


def images(folder):
    return sorted(glob.glob(os.path.join(str(folder), "*.jpg")))


@pytest.fixture
def earlier_run(tmp_path):
    """An OUTPUT_DIR holding an earlier run's checkpoint; ``unchanged()`` says whether it is intact."""
    output = tmp_path / "output"
    output.mkdir()
    torch.save({"model": {"weight": torch.arange(4.0)}, "epoch": 7}, output / "model_0007.pth")
    (output / "last_checkpoint").write_text("model_0007.pth")
    before = {p.name: p.read_bytes() for p in output.iterdir()}

    class EarlierRun:
        path = str(output)
        checkpoint = before["model_0007.pth"]

        @staticmethod
        def unchanged():
            """The folder byte for byte as it was: the earlier files, and nothing new (a refused run writes neither
            a checkpoint nor its log, config.yaml, metrics.json or events)."""
            return {p.name: p.read_bytes() for p in output.iterdir()} == before

    return EarlierRun


# (a) a dataset folder in the wrong layout ---------------------------------------------------------
def test_images_directly_in_the_dataset_folder_are_pointed_at(market, market_cfg):
    for split in SPLITS:
        for path in images(market / split):
            shutil.move(path, market)
        os.rmdir(market / split)
    with pytest.raises(DatasetNotFoundError, match=r"bounding_box_train not found.* holds 96 images directly "
                                                   r"\(e\.g\. \d{4}_c\d\w+\.jpg\): they belong in the train / "
                                                   r"query / gallery sub-folders"):
        Trainer.build_train_loader(market_cfg)


def test_identity_sub_folders_give_a_clear_error_not_an_empty_set(market, market_cfg, earlier_run):
    train = market / "bounding_box_train"
    for path in images(train):  # ImageFolder style: one folder per person
        person = train / os.path.basename(path)[:4]
        person.mkdir(exist_ok=True)
        shutil.move(path, person)
    market_cfg.OUTPUT_DIR = earlier_run.path
    with pytest.raises(DatasetLayoutError, match=(
            rf"Market1501: the train set is empty: no image found in {re.escape(str(train))} "
            rf"\({re.escape(str(train))} holds 16 sub-folders "
            r"\(e\.g\. 0002/\)\)\. Market1501 expects bounding_box_train/, query/ and bounding_box_test/, "
            r"each holding \.jpg files directly")):
        Trainer(market_cfg)
    assert earlier_run.unchanged()


def test_images_of_another_format_are_named(market, market_cfg):
    for path in images(market / "bounding_box_train"):
        Image.open(path).save(path[:-4] + ".png")
        os.remove(path)
    with pytest.raises(DatasetLayoutError, match=r"the train set is empty: .* holds 32 \.png files\)"):
        Trainer.build_train_loader(market_cfg)


def test_images_of_suffixes_the_dataset_does_not_glob_are_counted_with_their_folder(market, market_cfg):
    """Market1501 globs *.jpg: .JPG, .jpeg and .png files beside them were left out of training and evaluation
    without a word."""
    query, train = market / "query", market / "bounding_box_train"
    moved = images(query)[:3]
    for path, suffix in zip(moved, (".png", ".JPG", ".jpeg")):
        Image.open(path).save(path[:-4] + suffix, format="PNG" if suffix == ".png" else "JPEG")
        os.remove(path)
    shutil.move(images(train)[0], str(train / "0002_c1s1_000451_03.PNG"))
    (query / "notes.txt").write_text("not an image")
    with logged("mdpr_plugin.data.checks") as warnings:
        _, num_query = Trainer.build_test_loader(market_cfg, "Market1501")
        loader = Trainer.build_train_loader(market_cfg)
    assert (num_query, len(loader.dataset)) == (29, 31)  # fastreid's own reading: the warning changes nothing
    left_out = [w for w in warnings if "image files were not read" in w]
    assert left_out == [
        f"3 image files were not read into Market1501's query set: {query}: 1 .JPG, 1 .jpeg, 1 .png (e.g. "
        f"{os.path.basename(moved[1])[:-4]}.JPG), next to its .jpg files. The dataset class reads only the suffixes "
        "it globs, case-sensitively: rename or convert these files to one of those to use them.",
        f"1 image files were not read into Market1501's training set: {train}: 1 .PNG (e.g. "
        "0002_c1s1_000451_03.PNG), next to its .jpg files. The dataset class reads only the suffixes it globs, "
        "case-sensitively: rename or convert these files to one of those to use them."]


def test_junk_images_a_dataset_skips_on_purpose_are_not_counted(market, market_cfg):
    shutil.copy(images(market / "bounding_box_test")[0], market / "bounding_box_test" / "-1_c1s1_000401_03.jpg")
    with logged("mdpr_plugin.data.checks") as warnings:
        Trainer.build_test_loader(market_cfg, "Market1501")
    assert [w for w in warnings if "not read" in w] == []


@pytest.mark.parametrize("name", ["person0002.jpg", "0002_c9s1_000451_03.jpg"])
def test_unparsable_file_names_are_named(market, market_cfg, name):
    shutil.copy(images(market / "bounding_box_train")[0], market / "bounding_box_train" / name)
    with pytest.raises(DatasetLayoutError, match=rf"Market1501: cannot parse the file name .*/bounding_box_train/"
                                                 rf"{name} in .*bounding_box_train\. Market1501 expects .* e\.g\. "
                                                 r"0002_c1s1_000451_03\.jpg.*Rename or move"):
        Trainer.build_train_loader(market_cfg)


# a dataset folder whose path fastreid reads as a file name ------------------------------------------
def test_a_dataset_folder_whose_path_reads_as_an_id_and_camera_is_refused(tmp_path, monkeypatch, demo_cfg,
                                                                          earlier_run):
    root = tmp_path / "0001_c1" / "datasets"
    shutil.copytree(BUNDLED, root / "Market-1501-v15.09.15")
    monkeypatch.setattr(data_build, "_root", str(root))
    demo_cfg.merge_from_list(["DATASETS.NAMES", ("Market1501",), "DATASETS.TESTS", ("Market1501",),
                              "OUTPUT_DIR", earlier_run.path])
    message = (rf"Market1501: the dataset folder {re.escape(str(root))}/? has '0001_c1' in its path, and fastreid's "
               r"Market1501 reads the person id and camera from the whole image path, not the file name: every "
               r"image would get those of '0001_c1'\. Move or rename the folder so that its path has no such text")
    with pytest.raises(DatasetLayoutError, match=message):
        Trainer(demo_cfg)
    with pytest.raises(DatasetLayoutError, match=message):
        Trainer.build_test_loader(demo_cfg, "Market1501")
    assert earlier_run.unchanged()


@pytest.mark.parametrize("name, folder", [("DukeMTMC", "0001_c1"), ("VeRi", "0001_c001"), ("cuhkSYSU", "p1_s1")])
def test_every_fastreid_class_that_parses_whole_paths_is_checked(tmp_path, monkeypatch, demo_cfg, name, folder):
    monkeypatch.setattr(data_build, "_root", str(tmp_path / folder))
    demo_cfg.DATASETS.NAMES = (name,)
    with pytest.raises(DatasetLayoutError, match=rf"{name}: the dataset folder .*/{folder}/[\w-]+ has '{folder}' in"):
        Trainer.build_train_loader(demo_cfg)


def test_the_bundled_dataset_reads_ids_from_file_names_under_any_folder(tmp_path, monkeypatch, demo_cfg):
    import mdpr_plugin.data.datasets as datasets

    monkeypatch.setattr(datasets, "BUNDLED_ROOT", shutil.copytree(BUNDLED_ROOT, tmp_path / "0001_c1" / "mini"))
    train = Trainer.build_train_loader(demo_cfg).dataset.img_items
    test, num_query = Trainer.build_test_loader(demo_cfg, "MiniMarket1501")
    query = test.dataset.img_items[:num_query]
    assert train[0][0].startswith(str(tmp_path / "0001_c1")) and len({pid for _, pid, _ in train}) == 16
    for path, pid, camid in train:  # 0002_c1s1_000451_03.jpg: person 2, camera 0
        name = os.path.basename(path)
        assert (pid, camid) == (f"minimarket_{int(name[:4])}", f"minimarket_{int(name[6]) - 1}")
    for path, pid, camid in query:
        name = os.path.basename(path)
        assert (pid, camid) == (int(name[:4]), int(name[6]) - 1)


# (g) an empty query or gallery set ----------------------------------------------------------------
@pytest.mark.parametrize("split, role", [("query", "query"), ("bounding_box_test", "gallery")])
def test_an_empty_query_or_gallery_folder_is_named(market, market_cfg, split, role):
    for path in images(market / split):
        os.remove(path)
    with pytest.raises(DatasetLayoutError, match=rf"Market1501: the {role} set is empty: no image found in "
                                                 rf".*{split} \(.*{split} is empty\)"):
        Trainer.build_test_loader(market_cfg, "Market1501")


@pytest.mark.parametrize("num_query, which", [(0, "query"), (4, "gallery")])
def test_the_evaluator_refuses_an_empty_query_or_gallery_set(demo_cfg, num_query, which):
    evaluator = ReidEvaluator(demo_cfg, num_query)
    batch = {"targets": torch.tensor([1, 2, 1, 2]), "camids": torch.tensor([0, 0, 1, 1])}
    evaluator.process(batch, torch.randn(4, 8))
    evaluator.dataset_name = "Market1501"
    with pytest.raises(EmptyEvaluationSetError, match=rf"Market1501's {which} set is empty"):
        evaluator.evaluate()


# (b) unreadable images ---------------------------------------------------------------------------
def damage(path, how):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not an image\n"}[how])


@pytest.mark.parametrize("how", ["truncated", "empty", "text"])
def test_an_unreadable_image_stops_the_run_naming_the_file_and_the_switch(market, market_cfg, earlier_run, how):
    bad = images(market / "bounding_box_train")[5]
    damage(bad, how)
    market_cfg.OUTPUT_DIR = earlier_run.path
    with pytest.raises(BadImageError, match=rf"1 of 32 images of Market1501's training set could not be read:\n  "
                                            rf"{bad} \(.+\)\n.*DATALOADER\.BAD_IMAGES skip"):
        Trainer(market_cfg)
    assert earlier_run.unchanged()


@pytest.mark.slow
@pytest.mark.parametrize("kind, make, policy", [("a FIFO (named pipe)", os.mkfifo, "error"),
                                                ("a folder", os.mkdir, "skip")], ids=["fifo", "folder"])
def test_a_special_file_named_like_an_image_is_refused_by_its_type_in_one_line(market, earlier_run, kind, make,
                                                                                policy):
    special = str(market / "bounding_box_train" / "0002_c1s1_000000_09.jpg")  # read into the training set
    make(special)
    returncode, output = run_script("train_net.py", "--config-file", DEMO_CONFIG, "DATASETS.NAMES", "('Market1501',)",
                                    "DATASETS.TESTS", "('Market1501',)", "DATALOADER.BAD_IMAGES", policy,
                                    "OUTPUT_DIR", earlier_run.path, timeout=300)  # a FIFO once blocked the check
    assert returncode == 1 and "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    assert errors == [f"ERROR: {special} is {kind}, not an image file (reading it could wait forever). Remove it "
                      "from the image folder, or put the image file it stands for in its place."], output[-3000:]
    assert earlier_run.unchanged()


def test_skip_leaves_unreadable_images_out_and_counts_them(market, market_cfg):
    train_bad = images(market / "bounding_box_train")[3]
    query_bad = images(market / "query")[0]
    damage(train_bad, "truncated")
    damage(query_bad, "empty")
    market_cfg.DATALOADER.BAD_IMAGES = "skip"
    with logged("mdpr_plugin.data.checks") as warnings:
        loader = Trainer.build_train_loader(market_cfg)
        test_loader, num_query = Trainer.build_test_loader(market_cfg, "Market1501")
    assert [item[0] for item in loader.dataset.img_items if item[0] == train_bad] == []
    assert len(loader.dataset) == 31
    assert (num_query, len(test_loader.dataset)) == (31, 63)
    assert any(f"left out 1 unreadable images of Market1501's training set (of 32), e.g. {train_bad}" in w
               for w in warnings)
    assert any(f"left out 1 unreadable images of Market1501's query set (of 32), e.g. {query_bad}" in w
               for w in warnings)
    assert next(iter(loader))["images"].shape == (16, 3, 128, 64)


def test_skip_refuses_a_set_left_empty(market, market_cfg):
    for path in images(market / "query"):
        damage(path, "empty")
    market_cfg.DATALOADER.BAD_IMAGES = "skip"
    with pytest.raises(BadImageError, match=r"(?s)32 of 32 images of Market1501's query set could not be read:\n  "
                                            r".*query/\d{4}_c\w+\.jpg \(empty, or not an image\)\n.*"
                                            r"\.\.\. and 27 more\nNone is left to skip"):
        Trainer.build_test_loader(market_cfg, "Market1501")


def test_an_image_damaged_after_the_check_is_still_named_when_loaded(market, market_cfg):
    loader = Trainer.build_train_loader(market_cfg)
    index = 7
    damage(loader.dataset.img_items[index][0], "truncated")
    with pytest.raises(BadImageError, match=rf"{loader.dataset.img_items[index][0]} could not be read as an image "
                                            r"\(image file is truncated"):
        loader.dataset[index]


def test_an_unknown_bad_images_value_is_refused(market_cfg):
    market_cfg.DATALOADER.BAD_IMAGES = "ignore"
    with pytest.raises(ValueError, match=r"DATALOADER\.BAD_IMAGES must be one of \('error', 'skip'\), got 'ignore'"):
        Trainer.build_train_loader(market_cfg)


# (c) image modes ---------------------------------------------------------------------------------
def _reference():
    return Image.open(images(os.path.join(BUNDLED, "bounding_box_train"))[0]).convert("RGB")


MODES = {  # mode -> (image written in that mode, PIL format, expected RGB result, tolerance)
    "L": (lambda rgb: rgb.convert("L"), "JPEG", "grey", 1.0),
    "LA": (lambda rgb: rgb.convert("LA"), "PNG", "grey", 0.0),
    "RGBA": (lambda rgb: rgb.convert("RGBA"), "PNG", "colour", 0.0),
    "P": (lambda rgb: rgb.quantize(256), "PNG", "colour", 4.0),
    "P with transparency": (lambda rgb: rgb.quantize(256), "PNG", "colour", 4.0),
    "CMYK": (lambda rgb: rgb.convert("CMYK"), "JPEG", "colour", 3.0),
    "I;16": (lambda rgb: Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257), "PNG", "grey", 0.0),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_image_mode_is_read_as_rgb(tmp_path, mode):
    from mdpr_plugin.data import read_image  # what the plugin's loaders read with

    make, file_format, expected, tolerance = MODES[mode]
    rgb = _reference()
    path = str(tmp_path / "0002_c1s1_000451_03.jpg")
    extra = {"transparency": 0} if mode == "P with transparency" else {}
    make(rgb).save(path, format=file_format, **extra)
    assert Image.open(path).mode == mode.split(" ")[0]

    image = read_image(path)
    reference = np.asarray(rgb if expected == "colour" else rgb.convert("L").convert("RGB"), dtype=float)
    assert image.mode == "RGB" and image.size == rgb.size
    assert np.abs(np.asarray(image, dtype=float) - reference).mean() <= tolerance


def test_a_training_set_of_mixed_modes_gives_rgb_batches(market, market_cfg):
    for path, mode in zip(images(market / "bounding_box_train"), MODES):
        make, file_format, _, _ = MODES[mode]
        make(Image.open(path).convert("RGB")).save(path, format=file_format)
    loader = Trainer.build_train_loader(market_cfg)
    for item in range(len(loader.dataset)):
        assert loader.dataset[item]["images"].shape == (3, 128, 64)


# (d) images smaller than the input --------------------------------------------------------------
def test_tiny_images_are_upscaled_with_a_warning(market, market_cfg):
    tiny = images(market / "bounding_box_train")[:2]
    Image.open(tiny[0]).resize((5, 10)).save(tiny[0])
    Image.open(tiny[1]).resize((1, 1)).save(tiny[1])
    with logged("mdpr_plugin.data.checks") as warnings:
        loader = Trainer.build_train_loader(market_cfg)
    assert any("2 images of Market1501's training set are more than 4x smaller than the input size 64x128" in w
               for w in warnings), warnings
    kept = [item for item, (path, _, _) in enumerate(loader.dataset.img_items) if path in tiny]
    assert sorted(loader.dataset.img_items[item][0] for item in kept) == tiny  # kept, not left out
    for item in kept:
        assert loader.dataset[item]["images"].shape == (3, 128, 64)


# (e) too few identities or images for the identity sampler ----------------------------------------
def keep_identities(folder, count):
    kept = sorted({os.path.basename(p)[:4] for p in images(folder)})[:count]
    for path in images(folder):
        if os.path.basename(path)[:4] not in kept:
            os.remove(path)


def test_fewer_identities_than_a_batch_needs_is_refused_instead_of_hanging(market, market_cfg, earlier_run):
    train = market / "bounding_box_train"
    keep_identities(train, 3)
    for index, path in enumerate(images(train) * 3):  # 6 + 18 images: enough images, too few people
        shutil.copy(path, path.replace(".jpg", f"{index}.jpg"))
    market_cfg.OUTPUT_DIR = earlier_run.path
    with pytest.raises(SamplingError, match=r"NaiveIdentitySampler needs 8 different identities for one batch "
                                            r"\(SOLVER\.IMS_PER_BATCH 16 / DATALOADER\.NUM_INSTANCE 2\), but the "
                                            r"training set has 3: it would wait forever"):
        Trainer(market_cfg)
    assert earlier_run.unchanged()


@pytest.mark.slow
def test_a_training_set_of_one_identity_is_refused_in_one_line(market, earlier_run):
    keep_identities(market / "bounding_box_train", 1)  # its two images fill a batch of SOLVER.IMS_PER_BATCH 2
    returncode, output = run_script("train_net.py", "--config-file", DEMO_CONFIG, "DATASETS.NAMES", "('Market1501',)",
                                    "DATASETS.TESTS", "('Market1501',)", "SOLVER.IMS_PER_BATCH", "2",
                                    "OUTPUT_DIR", earlier_run.path)
    assert returncode == 1 and "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    assert errors == [f"ERROR: The training set has one identity (person id market1501_2, 2 images): re-identification learns "
                      f"to tell people apart, which takes two or more (the classifier would have one class and a "
                      f"triplet loss no negative). Add the images of other people to the training set, or check "
                      f"DATASETS.NAMES and its folder."], output[-3000:]
    assert earlier_run.unchanged()


def test_fewer_images_than_a_batch_is_refused(market, market_cfg):
    keep_identities(market / "bounding_box_train", 5)  # 10 images
    with pytest.raises(SamplingError, match=r"The training set has 10 images, fewer than SOLVER\.IMS_PER_BATCH 16"):
        Trainer.build_train_loader(market_cfg)


def test_fewer_images_per_identity_than_num_instance_warns_with_counts(market_cfg):
    market_cfg.DATALOADER.NUM_INSTANCE = 4  # the bundled identities have 2 images each
    with logged("mdpr_plugin.data.checks") as warnings:
        Trainer.build_train_loader(market_cfg)
    assert ("16 of 16 training identities have fewer images than DATALOADER.NUM_INSTANCE 4 (fewest: 2); "
            "NaiveIdentitySampler repeats their images to fill a batch.") in warnings


# (f) a non-finite loss ---------------------------------------------------------------------------
# SOLVER.AMP.ENABLED picks the AMP loop; on the CPU it trains in float32, so the second case checks that loop's
# wiring, not float16. Real AMP is trained on CUDA by the GPU check (make gpu-check).
@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True], ids=["float32_loop", "amp_loop_in_float32_on_cpu"])
def test_a_nan_loss_stops_training_naming_the_term_and_keeps_the_checkpoints(demo_cfg, earlier_run, amp):
    demo_cfg.merge_from_list(["OUTPUT_DIR", earlier_run.path, "SOLVER.MAX_EPOCH", 2, "SOLVER.CHECKPOINT_PERIOD", 1,
                              "TEST.EVAL_PERIOD", 100, "SOLVER.AMP.ENABLED", amp])
    trainer = Trainer(demo_cfg)
    assert type(trainer._trainer) is (CheckedAMPTrainer if amp else CheckedTrainer)
    assert not getattr(trainer._trainer, "amp_enabled", False)  # no autocast on the CPU
    forward = trainer.model.forward

    def nan_from_iteration_2(batch):
        losses = forward(batch)
        if trainer.iter >= 2:  # the first step of the last epoch, after epoch 0's checkpoint
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    trainer.model.forward = nan_from_iteration_2
    with pytest.raises(NonFiniteLossError, match=r"Training stopped at iteration 2: loss term\(s\) loss_cls = nan "
                                                 r"\(all terms: .*'loss_triplet': [0-9.]+.*SOLVER\.BASE_LR"):
        trainer.train()

    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the step was not taken
    files = sorted(os.listdir(earlier_run.path))
    assert "model_final.pth" not in files and "model_0000.pth" in files, files
    assert open(os.path.join(earlier_run.path, "last_checkpoint")).read() == "model_0000.pth"
    for name in ("model_0000.pth", "model_0007.pth"):
        state = safe_load(os.path.join(earlier_run.path, name))["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert open(os.path.join(earlier_run.path, "model_0007.pth"), "rb").read() == earlier_run.checkpoint
    assert not hasattr(trainer, "_last_eval_results")  # the failed model was not evaluated


@pytest.mark.slow
def test_nan_weights_behind_a_finite_loss_are_not_saved(demo_cfg, earlier_run):
    demo_cfg.merge_from_list(["OUTPUT_DIR", earlier_run.path, "SOLVER.MAX_EPOCH", 2, "SOLVER.CHECKPOINT_PERIOD", 1,
                              "TEST.EVAL_PERIOD", 100])
    trainer = Trainer(demo_cfg)

    class NaNWeightsAfterIteration1(HookBase):  # as a step that diverged; the loss it computed was finite
        def after_step(self):
            if self.trainer.iter == 1:  # the last step of epoch 0, whose checkpoint follows
                with torch.no_grad():
                    self.trainer.model.heads.bottleneck[0].weight.fill_(float("nan"))

    trainer.register_hooks([NaNWeightsAfterIteration1()])
    with pytest.raises(NonFiniteWeightsError, match=r"Not saving the checkpoint of epoch 0 \(after 2 iterations\): 1 "
                                                    r"weight tensors hold NaN or infinite values \(heads\.bottleneck\."
                                                    r"0\.weight\); the checkpoints in OUTPUT_DIR are from before"):
        trainer.train()
    assert earlier_run.unchanged()  # no model_0000.pth, last_checkpoint still names model_0007.pth


# errors found before this work: an earlier run in OUTPUT_DIR stays as it was --------------------
def truncated_checkpoint(folder):
    path = os.path.join(folder, "weights.pth")
    torch.save({"model": {"weight": torch.zeros(1000)}}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("config, overrides, error, message", [
    ("configs/Baseline-demo.yml", ["DATASETS.NAMES", ("DukeMTMC",)], DatasetNotFoundError,
     r"DukeMTMC: .*DukeMTMC-reID not found.*FASTREID_DATASETS"),
    ("configs/MDPR/demo.yml", ["MODEL.BACKBONE.LAST_STRIDE", 2], ValueError,
     r"MDPR needs MODEL\.BACKBONE\.LAST_STRIDE 1 \(got 2\)"),
    ("configs/Baseline-demo.yml", ["MODEL.WEIGHTS", "truncated"], CheckpointError,
     r"weights\.pth could not be read as a torch checkpoint: it is truncated"),
    ("configs/Baseline-demo.yml", ["MODEL.WEIGHTS", "missing"], CheckpointError,
     r"Checkpoint .*missing\.pth not found \(absolute: .*\)\. Check MODEL\.WEIGHTS"),
], ids=["dataset missing", "MDPR last stride 2", "weights truncated", "weights missing"])
def test_errors_before_training_leave_the_output_folder_as_it_was(tmp_path, earlier_run, config, overrides, error,
                                                                   message):
    if overrides[1] == "truncated":
        overrides = ["MODEL.WEIGHTS", truncated_checkpoint(str(tmp_path))]
    elif overrides[1] == "missing":
        overrides = ["MODEL.WEIGHTS", str(tmp_path / "missing.pth")]
    cfg = load_config(config, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", earlier_run.path, *overrides)
    with pytest.raises(error, match=message):
        Trainer(cfg).resume_or_load(resume=False)
    assert earlier_run.unchanged()


# the command line ---------------------------------------------------------------------------------
def test_every_error_the_plugin_defines_is_an_mdpr_error():
    import importlib
    import inspect
    import pkgutil

    import mdpr_plugin

    defined = []
    for module in pkgutil.walk_packages(mdpr_plugin.__path__, "mdpr_plugin."):
        if not module.name.endswith("__main__"):
            for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__.startswith("mdpr_plugin"):
                    defined.append(cls)
    assert len(set(defined)) >= 12
    assert [cls for cls in set(defined) if not issubclass(cls, MDPRError)] == []


def test_known_errors_are_reported_as_their_message_alone():
    def fails():
        raise SamplingError("The training set has 10 images, fewer than SOLVER.IMS_PER_BATCH 16.")

    with pytest.raises(SystemExit) as stop:
        run_reporting_errors(fails)
    # a message as the exit code: Python prints it on stderr and exits with status 1
    assert stop.value.code == "ERROR: The training set has 10 images, fewer than SOLVER.IMS_PER_BATCH 16."
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_reporting_errors(lambda: 1 / 0)


@pytest.mark.slow
def test_train_net_reports_a_dataset_in_the_wrong_layout(market, tmp_path):
    for path in images(market / "bounding_box_train"):
        os.remove(path)
    returncode, output = run_script("train_net.py", "--config-file", os.path.join(REPO, "configs/Baseline-demo.yml"),
                                    "DATASETS.NAMES", "('Market1501',)", "DATASETS.TESTS", "('Market1501',)",
                                    "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"))
    assert returncode != 0
    message = (f"Market1501: the train set is empty: no image found in {market / 'bounding_box_train'} "
               f"({market / 'bounding_box_train'} is empty). Market1501 expects bounding_box_train/")
    assert message in output, output[-3000:]
    assert "Traceback" not in output
