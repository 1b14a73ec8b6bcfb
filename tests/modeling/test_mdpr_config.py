"""MDPR's config keys and the configs under configs/MDPR."""
import glob
import os

import pytest
import torch

from fastreid.config import get_cfg
from helpers import REPO, load_config
from mdpr_plugin import add_mdpr_config
from mdpr_plugin.config import build_config
from modeling.mdpr_testutils import build

DEFAULTS = {
    "ATTN_NUM": 2, "PART_NUM": 2, "ATTN_GUIDED": True, "FUSION_ENABLE": True, "DISTILLATION_ENABLE": True,
    "ATTN_DIVERSITY_LOSS_ENABLE": True, "OUTPUT_ALL": False, "HARD_BRANCH_ENABLE": True,
    "SOFT_BRANCH_ENABLE": True,
}
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "MDPR", "*.yml")))


def test_defaults_and_idempotence():
    cfg = get_cfg()
    add_mdpr_config(cfg)
    cfg.ATTN_NUM = 3
    add_mdpr_config(cfg)  # a second call neither fails nor resets values
    assert {k: cfg[k] for k in DEFAULTS} == dict(DEFAULTS, ATTN_NUM=3)
    assert cfg.MODEL.BACKBONE.EMBEDDING_DIM == 512
    assert cfg.MODEL.BACKBONE.BRANCH_STAGES == () and cfg.MODEL.BACKBONE.TIMM_MODEL == ""
    assert cfg.MODEL.LOSSES.ATTN_DIVERSITY.SCALE == 0.001
    assert cfg.INPUT.RPT.POOL_CAPACITY == 0  # the meta-architecture's own pool (1000 for MDPR)


def test_authors_style_root_keys_load(tmp_path):
    path = tmp_path / "authors.yml"
    path.write_text(
        "MODEL:\n  META_ARCHITECTURE: MDPR\n  BACKBONE:\n    EMBEDDING_DIM: 256\n"
        "  LOSSES:\n    ATTN_DIVERSITY:\n      SCALE: 0.01\n"
        "ATTN_NUM: 3\nPART_NUM: 3\nATTN_GUIDED: False\nFUSION_ENABLE: False\nDISTILLATION_ENABLE: False\n"
        "ATTN_DIVERSITY_LOSS_ENABLE: False\nOUTPUT_ALL: True\n")
    cfg = get_cfg()
    add_mdpr_config(cfg)
    cfg.merge_from_file(str(path))
    assert (cfg.ATTN_NUM, cfg.PART_NUM, cfg.ATTN_GUIDED, cfg.OUTPUT_ALL) == (3, 3, False, True)
    assert cfg.MODEL.BACKBONE.EMBEDDING_DIM == 256 and cfg.MODEL.LOSSES.ATTN_DIVERSITY.SCALE == 0.01


def test_branch_stages_read_from_a_file_and_the_command_line(tmp_path):
    path = tmp_path / "stages.yml"
    path.write_text("MODEL:\n  BACKBONE:\n    BRANCH_STAGES: [features.7, features.14]\n"
                    "    TIMM_MODEL: convnext_atto\n")
    cfg = build_config(str(path))
    assert tuple(cfg.MODEL.BACKBONE.BRANCH_STAGES) == ("features.7", "features.14")
    assert cfg.MODEL.BACKBONE.TIMM_MODEL == "convnext_atto"
    cfg = build_config(str(path), ["MODEL.BACKBONE.BRANCH_STAGES", "('layer3', 'layer4')"])
    assert tuple(cfg.MODEL.BACKBONE.BRANCH_STAGES) == ("layer3", "layer4")


ALL_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yml"), recursive=True))


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[os.path.relpath(p, REPO) for p in ALL_CONFIGS])
def test_every_config_reads_as_fastreid_reads_it_and_passes_the_checks(path):
    """build_config loads a config as fastreid does (after checking its files, to name them in errors), and checks
    the values."""
    fastreids = add_mdpr_config(get_cfg())
    fastreids.merge_from_file(path)
    assert build_config(path).dump() == fastreids.dump()


def test_the_paper_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"duke.yml", "market.yml", "msmt17.yml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_loads_and_builds(path):
    cfg = load_config(os.path.relpath(path, REPO), "MODEL.BACKBONE.PRETRAIN", False, "MODEL.DEVICE", "cpu",
                      "MODEL.HEADS.NUM_CLASSES", 7)
    assert cfg.MODEL.META_ARCHITECTURE == "MDPR"
    assert cfg.MODEL.BACKBONE.LAST_STRIDE == 1
    model = build(cfg).eval()
    with torch.no_grad():
        feature = model(torch.rand(1, 3, 64, 32) * 255)  # small input, the config's own model
    e, p, hard, soft = cfg.MODEL.BACKBONE.EMBEDDING_DIM, cfg.PART_NUM, cfg.HARD_BRANCH_ENABLE, cfg.SOFT_BRANCH_ENABLE
    width = e * (p + 1) * hard + 2 * e * soft + 4 * e * (hard and soft and cfg.FUSION_ENABLE)
    assert feature.shape == (1, width) and torch.isfinite(feature).all()


@pytest.mark.parametrize("name,dataset", [("duke", "DukeMTMC"), ("market", "Market1501"), ("msmt17", "MSMT17")])
def test_paper_recipe(name, dataset):
    cfg = load_config(f"configs/MDPR/{name}.yml")
    assert cfg.DATASETS.NAMES == (dataset,) and cfg.DATASETS.TESTS == (dataset,)
    assert cfg.OUTPUT_DIR == f"logs/mdpr/{name}"
    b = cfg.MODEL.BACKBONE
    assert (b.DEPTH, b.WITH_IBN, b.WITH_NL, b.EMBEDDING_DIM) == ("101x", True, False, 512)
    assert b.PRETRAIN and b.PRETRAIN_PATH == "pretrained/lup_moco_r101.pth"
    assert cfg.MODEL.LOSSES.TRI.MARGIN == 0.05 and cfg.MODEL.HEADS.CLS_LAYER == "CircleSoftmax"
    assert cfg.INPUT.SIZE_TRAIN == [384, 192] and not cfg.INPUT.AUTOAUG.ENABLED
    assert cfg.INPUT.RPT.ENABLED and cfg.INPUT.RPT.POOL_CAPACITY == 1000
    s = cfg.SOLVER
    assert (s.MAX_EPOCH, s.DELAY_EPOCHS, s.FREEZE_ITERS, s.ETA_MIN_LR, s.SCHED) == (
        60, 0, 0, 1e-7, "CosineAnnealingLR")
    assert s.AMP.ENABLED and cfg.TEST.EVAL_PERIOD == 10 and cfg.DATALOADER.NUM_INSTANCE == 16
    assert (cfg.SEED, s.CHECKPOINT_PERIOD) == (3407, 60)  # the authors' seed and checkpoint period
    assert {k: cfg[k] for k in DEFAULTS if k not in ("HARD_BRANCH_ENABLE", "SOFT_BRANCH_ENABLE")} == {
        k: v for k, v in DEFAULTS.items() if k not in ("HARD_BRANCH_ENABLE", "SOFT_BRANCH_ENABLE")}

