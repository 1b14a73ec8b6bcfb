"""Bad input gets a message that names the file or key and the fix."""
import os

import pytest
from fastreid.config import get_cfg
from fastreid.data import build_reid_train_loader
from helpers import REPO, run_script

from mdpr_plugin import add_mdpr_config
from mdpr_plugin.compat import DatasetNotFoundError
from mdpr_plugin.config import ConfigKeyError, merge_config


def test_missing_dataset_folder_names_it_and_fastreid_datasets(demo_cfg):
    demo_cfg.DATASETS.NAMES = ("DukeMTMC",)
    with pytest.raises(DatasetNotFoundError, match=r"DukeMTMC: .*DukeMTMC-reID not found.*FASTREID_DATASETS"):
        build_reid_train_loader(demo_cfg)


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


def test_train_net_reports_an_unknown_key_without_a_deep_traceback(tmp_path):
    returncode, output = run_script("train_net.py", "--config-file", os.path.join(REPO, "configs/MDPR/demo.yml"),
                                    "MODEL.BACKBONE.DEPHT", "50x", "OUTPUT_DIR", str(tmp_path))
    assert returncode != 0
    assert "Unknown config key MODEL.BACKBONE.DEPHT in the command line. Did you mean MODEL.BACKBONE.DEPTH?" in output
