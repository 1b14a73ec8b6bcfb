"""A small MDPR checkpoint (the demo config, untrained: the tools' tests check plumbing, not accuracy)."""
import os

import pytest
import torch
from fastreid.modeling import build_model
from fastreid.utils.checkpoint import Checkpointer
from helpers import REPO, load_config

DEMO_CONFIG = os.path.join(REPO, "configs", "MDPR", "demo.yml")
BUNDLED_IMAGES = os.path.join(REPO, "mdpr_plugin", "data", "mini_market1501", "Market-1501-v15.09.15")


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory):
    """Path to a checkpoint of configs/MDPR/demo.yml with BN statistics moved away from their defaults."""
    torch.manual_seed(0)
    cfg = load_config("configs/MDPR/demo.yml", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.DEVICE", "cpu")
    model = build_model(cfg)
    # running statistics of a fresh model are 0 / 1; perturb them so eval-mode BN is not the identity
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d) or isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("demo_weights")
    Checkpointer(model, save_dir=str(folder)).save("model_final")
    return str(folder / "model_final.pth")
