"""A small MDPR checkpoint (the demo config, untrained: the tools' tests check plumbing, not accuracy)."""

import pytest
import torch
from fastreid.modeling import build_model
from fastreid.utils.checkpoint import Checkpointer
from helpers import MDPR_DEMO_CONFIG, load_config, run_script



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


@pytest.fixture(scope="session")
def demo_onnx(demo_weights, tmp_path_factory):
    """``(path, output)``: the demo checkpoint exported by the mdpr-export CLI (parity checked on 8 images)."""
    path = tmp_path_factory.mktemp("demo_onnx") / "demo.onnx"
    code, output = run_script("-m", "mdpr_plugin.tools.export", "--config-file", MDPR_DEMO_CONFIG,
                              "--output", str(path), "--check-batch", "8", "MODEL.WEIGHTS", demo_weights,
                              "MODEL.DEVICE", "cpu")
    assert code == 0, output
    return str(path), output
