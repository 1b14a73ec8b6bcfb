import functools

import pytest
from helpers import load_config
from process_guard import pytest_runtest_makereport, pytest_runtest_protocol  # noqa: F401 (hooks)


@functools.cache
def _cuda_available():
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """A test marked ``gpu`` is skipped, "needs CUDA", on a machine without CUDA."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not _cuda_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


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

