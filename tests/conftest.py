import pytest
from helpers import load_config


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


# ------------------------------------------------------------------------------------ test tiers
# `make test-fast` (-m "not slow") is the edit loop: a test that starts a process (an interpreter, loader workers,
# DDP ranks) belongs to `make test` and must say so with @pytest.mark.slow. A test that is not marked slow and
# starts one fails, even where the code under test catches the refusal.
_STARTED_A_PROCESS = pytest.StashKey[str]()


class ProcessInAFastTest(RuntimeError):
    pass


def _process_starters():
    """(owner, attribute, what it starts): every way the project's code and libraries start a process."""
    import multiprocessing.process
    import os
    import subprocess

    return [(subprocess.Popen, "_execute_child", "a subprocess"),
            (multiprocessing.process.BaseProcess, "start", "a multiprocessing process"),
            (os, "fork", "a forked process"),
            (os, "posix_spawn", "a spawned process"), (os, "posix_spawnp", "a spawned process")]


def _refusing(item, what):
    def refuse(*args, **kwargs):
        message = (f"{item.nodeid} starts {what} but is not marked slow: mark it @pytest.mark.slow "
                   "(the fast tier, `make test-fast`, starts no process)")
        item.stash[_STARTED_A_PROCESS] = message
        raise ProcessInAFastTest(message)
    return refuse


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Setup, call and teardown of a test not marked slow run with every process starter refusing (session-scoped
    fixtures included: they are set up within the first test that needs them)."""
    if item.get_closest_marker("slow"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        for owner, name, what in _process_starters():
            patch.setattr(owner, name, _refusing(item, what))
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A refused start that the code under test swallowed still fails the test, in the phase it happened in."""
    outcome = yield
    report = outcome.get_result()
    message = item.stash.get(_STARTED_A_PROCESS, None)
    if message:
        del item.stash[_STARTED_A_PROCESS]
        if report.passed:
            report.outcome, report.longrepr = "failed", message
