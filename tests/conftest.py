import pytest
from helpers import load_config
from process_guard import pytest_runtest_makereport, pytest_runtest_protocol  # noqa: F401 (hooks)


@pytest.fixture
def demo_cfg(tmp_path):
    """The bundled-data Baseline demo config, on the CPU, writing into a temporary folder."""
    return load_config("configs/Baseline-demo.yml", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path))


@pytest.fixture
def no_downloads(monkeypatch):
    """A BoxMOT tracker that builds a ReID model of its own (downloading its weights) fails the test."""
    import boxmot.reid.core as reid_core

    def refuse(*args, **kwargs):
        raise AssertionError("the tracker built a ReID model of its own")

    monkeypatch.setattr(reid_core, "ReID", refuse)

