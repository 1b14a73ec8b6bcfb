"""The fast tier (`make test-fast`, -m "not slow") is the edit loop: a test that starts a process (an interpreter,
loader workers, DDP ranks) belongs to `make test` and says so with @pytest.mark.slow. These hooks (imported by
tests/conftest.py) fail a test that is not marked slow and starts one, even where the code under test catches the
refusal."""
import multiprocessing.process
import os
import subprocess

import pytest

_STARTED_A_PROCESS = pytest.StashKey[str]()


class ProcessInAFastTest(RuntimeError):
    pass


def _process_starters():
    """(owner, attribute, what it starts): every way the project's code and libraries start a process
    (subprocess.run and os.popen go through Popen; torch's loader workers and mp.spawn through multiprocessing)."""
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
