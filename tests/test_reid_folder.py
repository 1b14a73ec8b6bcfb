"""ReidFolder, the data set read from the folder DATASETS.FOLDER.ROOT: its layouts, identity numbering, camera rule,
held-back split and split file, and its one-line refusals, through the plugin's loaders as train_net.py builds them."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
from helpers import BUNDLED_IMAGES, load_config, logged
from PIL import Image

from mdpr_plugin.data import ReidFolder, builders
from mdpr_plugin.data.checks import DatasetLayoutError, DatasetNotFoundError
from mdpr_plugin.data.datasets import MiniMarket1501
from mdpr_plugin.data.folder import SPLIT_FILE, Image as FolderImage, held_back_split
from mdpr_plugin.data.images import BadImageError
from mdpr_plugin.engine.output_dir import write_config
from mdpr_plugin.errors import InputError, MDPRError

MARKET_FOLDERS = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}


def write_images(root, paths):
    """A small distinct image at each of ``paths`` (relative to ``root``)."""
    for i, path in enumerate(paths):
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        colour = (i * 37 % 256, i * 91 % 256, i * 53 % 256)
        Image.new("RGB", (16, 32), colour).save(os.path.join(root, path))


def config(root, output_dir, *overrides):
    return load_config("configs/MDPR/demo.yml", "DATASETS.NAMES", "('ReidFolder',)", "DATASETS.TESTS",
                       "('ReidFolder',)", "DATASETS.FOLDER.ROOT", str(root), "MODEL.DEVICE", "cpu",
                       "OUTPUT_DIR", str(output_dir), *overrides)


def identity_copy(root, cameras=True):
    """The bundled images as ROOT/{train,query,gallery}/<person>/c<camera>/<Market name>, or, without ``cameras``,
    as ROOT/{train,query,gallery}/<person>/<number>.jpg (no camera in the path or the name)."""
    for market, split in MARKET_FOLDERS.items():
        for i, path in enumerate(sorted(glob.glob(os.path.join(BUNDLED_IMAGES, market, "*.jpg")))):
            name = os.path.basename(path)
            person, camera = name.split("_")[0], name.split("_")[1][:2]
            target = os.path.join(root, split, person, camera, name) if cameras else os.path.join(root, split, person,
                                                                                                  f"{i}.jpg")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(path, target)
    return root


def train_rows(cfg):
    return builders.train_loader_parts(cfg)["train_set"].img_items


def query_gallery_rows(cfg):
    parts = builders.test_loader_parts(cfg, "ReidFolder")
    items = parts["test_set"].img_items
    return items[:parts["num_query"]], items[parts["num_query"]:]


# ------------------------------------------------------------------------------------------- layouts
def test_identity_folders_with_camera_folders_read_as_the_bundled_market_set(tmp_path):
    cfg = config(identity_copy(tmp_path / "data"), tmp_path / "out")
    market = MiniMarket1501()
    train = train_rows(cfg)
    query, gallery = query_gallery_rows(cfg)
    assert len(train) == len(market.train) and len(query) == len(market.query) and len(gallery) == len(market.gallery)
    # the same person and camera behind each image as fastreid's Market-1501 reading of the same files
    by_name = {os.path.basename(path): (pid, camid) for path, pid, camid in market.query + market.gallery}
    people = {}
    for path, pid, camid in query + gallery:
        market_pid, market_camid = by_name[os.path.basename(path)]
        assert camid == market_camid + 1  # c<N> is N; fastreid's Market1501 counts from 0
        assert people.setdefault(market_pid, pid) == pid
    # identities of query and gallery numbered together in sorted order; training ones from 0, prefixed
    assert people == {p: i for i, p in enumerate(sorted(people))}
    assert sorted({pid for _, pid, _ in train}) == sorted(f"reidfolder_{i}" for i in range(16))
    assert train[0][1:] == ("reidfolder_0", "reidfolder_c1") and "/train/0002/c1/" in train[0][0]


def test_market_names_read_with_their_cameras(tmp_path):
    root = tmp_path / "data"
    for market in MARKET_FOLDERS:
        shutil.copytree(os.path.join(BUNDLED_IMAGES, market), root / market)
    write_images(root, ["bounding_box_test/-1_c1s1_000000_00.jpg"])  # Market-1501's junk: left out
    cfg = config(root, tmp_path / "out")
    query, gallery = query_gallery_rows(cfg)
    market = MiniMarket1501()
    names = lambda rows: sorted(os.path.basename(path) for path, _, _ in rows)  # noqa: E731
    assert names(gallery) == names(market.gallery)
    assert {(os.path.basename(p), c) for p, _, c in query} == {(os.path.basename(p), c + 1) for p, _, c in market.query}
    assert len(train_rows(cfg)) == len(market.train)


def test_without_cameras_each_image_is_its_own_camera_and_it_is_logged(tmp_path):
    cfg = config(identity_copy(tmp_path / "data", cameras=False), tmp_path / "out")
    with logged("mdpr_plugin", level=20) as messages:
        query, gallery = query_gallery_rows(cfg)
    cameras = [camid for _, _, camid in query + gallery]
    assert sorted(cameras) == list(range(len(query) + len(gallery)))
    assert any("each image counts as its own camera, so the evaluation leaves out no gallery image" in m
               for m in messages), messages


def test_market_style_names_in_identity_folders_give_the_camera(tmp_path):
    write_images(tmp_path / "data", ["query/7/0007_c2_a.jpg", "gallery/7/0007_c3_b.png", "gallery/7/0007_c2_c.jpg"])
    query, gallery = query_gallery_rows(config(tmp_path / "data", tmp_path / "out"))
    assert [c for _, _, c in query] == [2] and sorted(c for _, _, c in gallery) == [2, 3]


def test_every_image_suffix_is_read_and_hidden_and_other_files_are_not(tmp_path):
    root = tmp_path / "data"
    write_images(root, ["train/a/1.jpg", "train/a/2.PNG", "train/b/3.jpeg", "train/b/4.webp", "train/b/5.bmp"])
    (root / "train" / "a" / "._1.jpg").write_bytes(b"a macOS resource fork, not an image")
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "README.md").write_text("beside the identity folders")
    cfg = config(root, tmp_path / "out", "DATASETS.TESTS", "('MiniMarket1501',)", "SOLVER.IMS_PER_BATCH", "4")
    assert sorted(os.path.basename(p) for p, _, _ in train_rows(cfg)) == ["1.jpg", "2.PNG", "3.jpeg", "4.webp", "5.bmp"]


def test_a_folder_with_a_training_split_alone_trains_and_is_not_tested_without_test_ids(tmp_path):
    write_images(tmp_path / "data", [f"train/{p}/{i}.jpg" for p in "abcd" for i in range(2)])
    cfg = config(tmp_path / "data", tmp_path / "out", "SOLVER.IMS_PER_BATCH", "4")
    assert len(train_rows(cfg)) == 8
    with pytest.raises(DatasetNotFoundError, match=r"has no query split: add .*/data/query/<identity>/\.\.\. \(or, "
                                                   r"for a folder with a training split alone, set DATASETS.FOLDER."
                                                   r"TEST_IDS"):
        query_gallery_rows(cfg)


def test_a_folder_with_query_and_gallery_alone_is_tested_and_not_trained_on(tmp_path):
    write_images(tmp_path / "data", ["query/a/1.jpg", "gallery/a/2.jpg", "gallery/b/3.jpg"])
    cfg = config(tmp_path / "data", tmp_path / "out")
    query, gallery = query_gallery_rows(cfg)
    assert [pid for _, pid, _ in query] == [0] and [pid for _, pid, _ in gallery] == [0, 1]
    with pytest.raises(DatasetNotFoundError, match=r"ReidFolder: .*/data has no train split: add .*/data/train/"):
        train_rows(cfg)


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("paths, error, message", [
    (["train/a/1.jpg", "train/a/2.jpg", "train/b/3.jpg"], DatasetLayoutError,
     r"identity b has one image in the training split \(.*/train/b/3\.jpg\); training needs 2 or more per identity"),
    (["train/a/c1/1.jpg", "train/a/2.jpg", "train/b/c1/3.jpg", "train/b/c2/4.jpg"], DatasetLayoutError,
     r"the training split .*/train: a/2\.jpg has no camera .* but a/c1/1\.jpg has one: put every image"),
    (["train/a/1.jpg", "train/a/front/2.jpg"], DatasetLayoutError,
     r".*/train/a/front is a folder, but an identity folder holds images and, for cameras, folders named c1, c2"),
    (["train/1.jpg", "train/a/2.jpg"], DatasetLayoutError,
     r".*/train/1\.jpg lies directly in .*/train, which holds one folder per identity: move it into"),
    (["train/a/x.txt"], DatasetLayoutError, r"the train split is empty: no image in .*/train \("),
    (["train/a/1.jpg", "bounding_box_train/0001_c1_x.jpg"], DatasetLayoutError,
     r"holds both train/ or gallery/ and bounding_box_train/ or bounding_box_test/: keep one layout"),
    (["bounding_box_train/person1.jpg"], DatasetLayoutError,
     r"cannot read the person and camera from the file name .*/bounding_box_train/person1\.jpg"),
    (["notes/1.jpg"], DatasetLayoutError, r"holds no train/ or gallery/ folder"),
], ids=["one image", "cameras mixed", "other sub-folder", "image beside identities", "empty split", "two layouts",
        "market name", "no split folder"])
def test_a_training_folder_it_cannot_use_is_refused_in_one_line_naming_it(tmp_path, paths, error, message):
    root = tmp_path / "data"
    write_images(root, [p for p in paths if not p.endswith(".txt")])
    for p in paths:
        if p.endswith(".txt"):
            os.makedirs(os.path.dirname(root / p), exist_ok=True)
            (root / p).write_text("no image")
    with pytest.raises(error, match=message) as caught:
        train_rows(config(root, tmp_path / "out", "DATASETS.TESTS", "('MiniMarket1501',)"))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("paths, message", [
    (["query/a/1.jpg", "query/b/2.jpg", "gallery/a/3.jpg"],
     r"the query identity b \(.*/query/b/2\.jpg\) has no image in the gallery .*/gallery: add gallery images of it"),
    (["query/a/c1/1.jpg", "gallery/a/c1/2.jpg", "query/b/c1/3.jpg", "gallery/b/c1/4.jpg"],
     r"no query has a gallery image of its identity from another camera \(e\.g\. .*/query/a/c1/1\.jpg, camera 1\), "
     r"and the evaluation leaves out same-camera matches"),
    (["query/a/1.jpg"], r"the gallery split is empty: no image in .*/gallery"),
], ids=["query not in gallery", "one camera", "empty gallery"])
def test_a_test_folder_it_cannot_use_is_refused_in_one_line_naming_it(tmp_path, paths, message):
    write_images(tmp_path / "data", paths)
    os.makedirs(tmp_path / "data" / "gallery", exist_ok=True)
    with pytest.raises(DatasetLayoutError, match=message) as caught:
        query_gallery_rows(config(tmp_path / "data", tmp_path / "out"))
    assert "\n" not in str(caught.value)


def test_queries_some_of_which_only_the_same_camera_sees_are_kept_with_a_warning(tmp_path):
    write_images(tmp_path / "data", ["query/a/c1/1.jpg", "gallery/a/c2/2.jpg", "query/b/c1/3.jpg",
                                     "gallery/b/c1/4.jpg"])
    with logged("mdpr_plugin") as warnings:
        query, _ = query_gallery_rows(config(tmp_path / "data", tmp_path / "out"))
    assert len(query) == 2
    assert any(w.startswith("ReidFolder: 1 of 2 queries have no gallery image of their identity from another camera "
                            "(e.g. ") and "query/b/c1/3.jpg" in w for w in warnings), warnings


def test_an_unreadable_image_is_named(tmp_path):
    write_images(tmp_path / "data", ["query/a/1.jpg", "gallery/a/2.jpg"])
    (tmp_path / "data" / "gallery" / "a" / "3.jpg").write_bytes(b"half an image")
    with pytest.raises(BadImageError, match=r"gallery/a/3\.jpg \(empty, or not an image\)"):
        query_gallery_rows(config(tmp_path / "data", tmp_path / "out"))


@pytest.mark.parametrize("overrides, message", [
    (["DATASETS.FOLDER.ROOT", ""], r"DATASETS.NAMES or DATASETS.TESTS names ReidFolder, but DATASETS.FOLDER.ROOT is "
                                   r"empty: set it to your dataset's folder"),
    (["DATASETS.FOLDER.ROOT", "/nonexistent/people"], r"DATASETS.FOLDER.ROOT /nonexistent/people is not found"),
    (["DATASETS.FOLDER.TEST_IDS", "0"], r"DATASETS.FOLDER.TEST_IDS 0 is not allowed: give a fraction"),
    (["DATASETS.FOLDER.TEST_IDS", "1.0"], r"DATASETS.FOLDER.TEST_IDS 1.0 is not allowed"),
    (["DATASETS.FOLDER.TEST_IDS", "True"], r"DATASETS.FOLDER.TEST_IDS True is not allowed"),
    (["DATASETS.FOLDER.TEST_IDS", "0.2"],
     r"DATASETS.FOLDER.TEST_IDS is set, but .*/data has its own query and gallery"),
], ids=["no root", "missing root", "zero", "one as a fraction", "bool", "test ids with a test split"])
def test_a_key_it_cannot_use_is_refused_in_one_line(tmp_path, overrides, message):
    write_images(tmp_path / "data", ["train/a/1.jpg", "train/a/2.jpg", "query/a/3.jpg", "gallery/a/4.jpg"])
    with pytest.raises(MDPRError, match=message):
        train_rows(config(tmp_path / "data", tmp_path / "out", *overrides))


def test_built_outside_the_plugin_s_loaders_it_says_how_to_get_its_config(tmp_path):
    with pytest.raises(InputError, match=r"ReidFolder reads DATASETS.FOLDER.ROOT from the config: build it through "
                                         r"train_net.py or the plugin's Trainer, or give it the config"):
        ReidFolder(root="datasets")
    write_images(tmp_path / "data", ["query/a/1.jpg", "gallery/a/2.jpg"])
    assert len(ReidFolder(cfg=config(tmp_path / "data", tmp_path / "out")).query) == 1


# ------------------------------------------------------------------------------------------- the held-back rule
def people(count, cameras, per_camera):
    """FolderImage rows of ``count`` identities, each with ``per_camera[k]`` images in camera k + 1 of ``cameras``."""
    return [FolderImage(f"p{i:02d}/c{c + 1}/{j}.jpg", f"p{i:02d}", c + 1 if cameras else None)
            for i in range(count) for c in range(len(per_camera)) for j in range(per_camera[c])]


def test_the_rule_queries_one_image_per_camera_with_two_images_and_every_query_finds_its_identity_elsewhere():
    images = people(10, True, [3, 1, 2])
    train, query, gallery = held_back_split(images, 0.3, 0, "train")
    held = {image.identity for image in query}
    assert len(held) == 3 and not held & {image.identity for image in train}
    for identity in held:
        queried = [(q.camera, q.path.rsplit("/", 1)[1]) for q in query if q.identity == identity]
        assert queried == [(1, "0.jpg"), (3, "0.jpg")]
        assert sum(g.identity == identity for g in gallery) == 4  # 6 images, 2 queries
    assert sorted(train + query + gallery, key=lambda i: i.path) == sorted(images, key=lambda i: i.path)


def test_the_rule_queries_the_first_camera_when_no_camera_has_two_images_and_one_image_without_cameras():
    _, query, gallery = held_back_split(people(4, True, [1, 1]), 1, 0, "train")
    assert [q.camera for q in query] == [1] and [g.camera for g in gallery] == [2]
    _, query, gallery = held_back_split(people(4, False, [3]), 2, 0, "train")
    assert len(query) == 2 and len(gallery) == 4 and {q.path.rsplit("/", 1)[1] for q in query} == {"0.jpg"}


def test_the_rule_is_seeded_and_counts_a_fraction_of_all_identities():
    images = people(20, True, [2, 2])
    held = lambda seed, test_ids: sorted({q.identity for q in held_back_split(images, test_ids, seed, "t")[1]})  # noqa
    assert held(0, 0.25) == held(0, 0.25) and len(held(0, 0.25)) == 5
    assert held(0, 0.25) != held(1, 0.25)
    assert len(held(0, 0.01)) == 1 and len(held(3, 7)) == 7
    assert len(held_back_split(people(10, True, [2, 2]), 0.25, 0, "t")[1]) == 2 * 3  # 2.5 identities: 3, rounded up


def test_the_rule_draws_only_identities_two_cameras_see_and_refuses_too_many():
    images = people(3, True, [2, 2]) + [FolderImage(f"q{i}/c1/{j}.jpg", f"q{i}", 1) for i in range(5) for j in range(2)]
    assert {q.identity for q in held_back_split(images, 3, 0, "t")[1]} == {"p00", "p01", "p02"}
    with pytest.raises(InputError, match=r"asks for 4 held-back identities, but only 3 of the 8 in t are seen by 2 or "
                                         r"more cameras"):
        held_back_split(images, 4, 0, "t")
    with pytest.raises(InputError, match=r"holds back 8 of the 8 identities of t, leaving none to train on"):
        held_back_split(images, 8, 0, "t")


# ------------------------------------------------------------------------------------------- the split file
@pytest.fixture
def train_only(tmp_path):
    root = tmp_path / "data"
    write_images(root, [f"train/{p}/c{c}/{i}.jpg" for p in ("ann", "bob", "cid", "dan", "eve", "fay") for c in (1, 2)
                        for i in range(2)])
    return root


def test_the_split_is_written_with_config_yaml_only_and_reused(tmp_path, train_only):
    output = tmp_path / "out"
    os.makedirs(output)
    cfg = config(train_only, output, "DATASETS.FOLDER.TEST_IDS", "2", "SOLVER.IMS_PER_BATCH", "4")
    train = train_rows(cfg)
    query, gallery = query_gallery_rows(cfg)
    assert os.listdir(output) == []  # nothing before the run's checks have passed
    write_config(cfg)
    record = json.loads((output / SPLIT_FILE).read_text())
    assert len(record["held_back_identities"]) == 2 and record["test_ids"] == 2 and record["seed"] == 0
    assert sorted(record["query"]) == sorted(os.path.relpath(p, train_only / "train") for p, _, _ in query)
    assert len(query) == 4 and len(gallery) == 4 and len(train) == 16
    assert not {p for p, _, _ in train} & {p for p, _, _ in query + gallery}

    # a split edited by hand (one gallery image made a query) is what the next run uses
    record["gallery"].remove(moved := record["gallery"][0])
    record["query"].append(moved)
    (output / SPLIT_FILE).write_text(json.dumps(record))
    query, gallery = query_gallery_rows(cfg)
    assert len(query) == 5 and str(train_only / "train" / moved) in [p for p, _, _ in query]


@pytest.mark.parametrize("change, message", [
    (lambda root, cfg: write_images(root, ["train/gus/c1/0.jpg", "train/gus/c2/0.jpg"]),
     r"was made from other files: 24 training images then, 26 in .* now"),
    (lambda root, cfg: cfg.DATASETS.FOLDER.update(SEED=1),
     r"was made with DATASETS.FOLDER.TEST_IDS 2 and SEED 0, not 2 and 1"),
    (lambda root, cfg: (cfg.OUTPUT_DIR and open(os.path.join(cfg.OUTPUT_DIR, SPLIT_FILE), "w").write("{")),
     r"could not be read as ReidFolder's split \(JSONDecodeError"),
], ids=["images added", "other seed", "not json"])
def test_a_split_file_that_does_not_match_is_refused(tmp_path, train_only, change, message):
    output = tmp_path / "out"
    cfg = config(train_only, output, "DATASETS.FOLDER.TEST_IDS", "2", "SOLVER.IMS_PER_BATCH", "4")
    query_gallery_rows(cfg)
    os.makedirs(output)
    write_config(cfg)
    change(train_only, cfg)
    with pytest.raises(InputError, match=rf"ReidFolder: the split file {output}/{SPLIT_FILE} {message}.*Remove it to "
                                         r"make a new split"):
        query_gallery_rows(cfg)


def test_the_split_is_the_same_without_its_file(tmp_path, train_only):
    first = query_gallery_rows(config(train_only, tmp_path / "a", "DATASETS.FOLDER.TEST_IDS", "0.5"))
    second = query_gallery_rows(config(train_only, tmp_path / "b", "DATASETS.FOLDER.TEST_IDS", "0.5"))
    assert first == second and len({pid for _, pid, _ in first[0]}) == 3
    assert np.unique([c for _, _, c in first[0] + first[1]]).tolist() == [1, 2]
