"""A small MDPR checkpoint (the demo config, untrained: the tools' tests check plumbing, not accuracy)."""

import pytest
from helpers import MDPR_DEMO_CONFIG, run_script, save_demo_checkpoint


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory):
    """Path to a checkpoint of configs/MDPR/demo.yml with BN statistics moved away from their defaults."""
    return save_demo_checkpoint(tmp_path_factory.mktemp("demo_weights"))


@pytest.fixture(scope="session")
def demo_onnx(demo_weights, tmp_path_factory):
    """``(path, output)``: the demo checkpoint exported by the mdpr-export CLI (parity checked on 8 images)."""
    path = tmp_path_factory.mktemp("demo_onnx") / "demo.onnx"
    code, output = run_script("-m", "mdpr_plugin.tools.export", "--config-file", MDPR_DEMO_CONFIG,
                              "--output", str(path), "--check-batch", "8", "MODEL.WEIGHTS", demo_weights,
                              "MODEL.DEVICE", "cpu")
    assert code == 0, output
    return str(path), output
