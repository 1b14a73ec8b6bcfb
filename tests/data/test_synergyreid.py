"""SynergyReID in the MDPR authors' folder layout: what it reads, and its errors for a folder that does not fit."""
import os
import shutil

import fastreid.data.build as data_build
import pytest
from helpers import synergyreid_copy

from mdpr_plugin.data import SynergyReID
from mdpr_plugin.data.checks import DatasetLayoutError, DatasetNotFoundError
from mdpr_plugin.engine import Trainer


@pytest.fixture
def synergy_cfg(demo_cfg):
    demo_cfg.DATASETS.NAMES = ("SynergyReID",)
    demo_cfg.DATASETS.TESTS = ("SynergyReID",)
    return demo_cfg


def point_fastreid_at(monkeypatch, root):
    monkeypatch.setattr(data_build, "_root", str(root))


def test_ids_come_from_the_file_name_and_cameras_from_the_split(tmp_path):
    # a path with a "<number>_<digit>" and "gallery" in it: the authors' class read both from the whole path
    root = tmp_path / "gallery_2023_1"
    ids = synergyreid_copy(root)
    data = SynergyReID(root=str(root))

    assert len(data.train) == len(data.query) == len(data.gallery) == 32
    assert {path: pid for path, pid, _ in data.query + data.gallery} == {
        path: pid for path, pid in ids.items() if "reid_test" in path}
    assert {path: pid for path, pid, _ in data.train} == {
        path: f"synergyreid_{pid}" for path, pid in ids.items() if "reid_training" in path}
    assert {camid for _, _, camid in data.query} == {0} and {camid for _, _, camid in data.gallery} == {1}
    assert {camid for _, _, camid in data.train} == {"synergyreid_0"}
    assert len({pid for _, pid, _ in data.train}) == 16


def test_the_splits_may_lie_in_the_datasets_folder_itself(tmp_path):
    synergyreid_copy(tmp_path)
    for split in os.listdir(tmp_path / "synergyreid_data"):
        shutil.move(tmp_path / "synergyreid_data" / split, tmp_path / split)
    os.rmdir(tmp_path / "synergyreid_data")
    data = SynergyReID(root=str(tmp_path))
    assert data.train_dir == os.path.join(str(tmp_path), "reid_training") and len(data.gallery) == 32


def test_the_challenge_split_is_neither_needed_nor_read(tmp_path):
    synergyreid_copy(tmp_path)
    challenge = tmp_path / "synergyreid_data" / "reid_challenge" / "query"
    challenge.mkdir(parents=True)
    (challenge / "7.jpeg").write_bytes(b"")
    data = SynergyReID(root=str(tmp_path))
    assert not any("reid_challenge" in path for path, _, _ in data.train + data.query + data.gallery)


def test_a_missing_split_folder_is_named_with_the_layout(tmp_path, monkeypatch, synergy_cfg):
    synergyreid_copy(tmp_path)
    shutil.rmtree(tmp_path / "synergyreid_data" / "reid_test" / "gallery")
    point_fastreid_at(monkeypatch, tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"^SynergyReID: .*synergyreid_data/reid_test/gallery not found .*"
                                                   r"The dataset needs: .*reid_training, .*reid_test/query, "
                                                   r".*reid_test/gallery\. fastreid looks for datasets under "
                                                   r"FASTREID_DATASETS"):
        Trainer.build_test_loader(synergy_cfg, "SynergyReID")


def test_no_data_set_folder_names_where_it_was_looked_for(tmp_path, monkeypatch, synergy_cfg):
    point_fastreid_at(monkeypatch, tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"^SynergyReID: .*/synergyreid_data not found"):
        Trainer.build_train_loader(synergy_cfg)


def test_a_file_name_without_an_id_is_named_with_the_layout(tmp_path, monkeypatch, synergy_cfg):
    synergyreid_copy(tmp_path)
    train = tmp_path / "synergyreid_data" / "reid_training"
    shutil.copyfile(next(train.iterdir()), train / "player.jpeg")
    point_fastreid_at(monkeypatch, tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"SynergyReID: cannot parse the file name .*reid_training/player\.jpeg"
                                                 r" in .*\. SynergyReID expects synergyreid_data/ .* name starts with "
                                                 r"<person id>_<digit>, e\.g\. 12_3_001\.jpeg\. Rename or move"):
        Trainer.build_train_loader(synergy_cfg)


def test_the_trainer_builds_its_loaders_from_it(tmp_path, monkeypatch, synergy_cfg):
    synergyreid_copy(tmp_path)
    point_fastreid_at(monkeypatch, tmp_path)
    train = Trainer.build_train_loader(synergy_cfg)
    assert train.dataset.num_classes == 16
    test, num_query = Trainer.build_test_loader(synergy_cfg, "SynergyReID")
    assert num_query == 32 and len(test.dataset) == 64
