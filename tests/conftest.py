import pytest
from helpers import load_config


@pytest.fixture
def demo_cfg(tmp_path):
    """The bundled-data Baseline demo config, on the CPU, writing into a temporary folder."""
    return load_config("configs/Baseline-demo.yml", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path))
