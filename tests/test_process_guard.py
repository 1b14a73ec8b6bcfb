"""The fast tier's guard (tests/process_guard.py) on small suites of its own, run inline in this process."""
import pytest

pytest_plugins = ["pytester"]

UNMARKED = """
import multiprocessing
import subprocess
import sys


def test_runs_a_script():
    subprocess.run([sys.executable, "-c", "pass"])


def test_swallows_the_refusal():
    try:
        subprocess.run([sys.executable, "-c", "pass"])
    except Exception:
        pass


def test_starts_a_multiprocessing_process():
    multiprocessing.get_context("spawn").Process(target=print).start()


def test_starts_nothing():
    assert sum(range(4)) == 6
"""

MARKED_SLOW = """
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_runs_a_script():
    assert subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True, text=True).stdout == "ran\\n"
"""


def run_guarded(pytester, suite):
    """``suite`` run inline with the guard's hooks; returns {test name: outcome of its call}."""
    pytester.makeconftest("from process_guard import pytest_runtest_makereport, pytest_runtest_protocol\n")
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(test_suite=suite)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    return result, {report.nodeid.split("::")[1]: report.outcome
                    for report in result.reprec.getreports("pytest_runtest_logreport") if report.when == "call"}


def test_a_test_not_marked_slow_that_starts_a_process_fails_naming_the_fix(pytester):
    result, outcomes = run_guarded(pytester, UNMARKED)
    assert outcomes == {"test_runs_a_script": "failed", "test_swallows_the_refusal": "failed",
                        "test_starts_a_multiprocessing_process": "failed", "test_starts_nothing": "passed"}
    result.stdout.fnmatch_lines(["*test_swallows_the_refusal starts a subprocess but is not marked slow: "
                                 "mark it @pytest.mark.slow*"])


@pytest.mark.slow  # its suite starts an interpreter: this process's own guard must let it
def test_a_test_marked_slow_starts_processes_freely(pytester):
    _, outcomes = run_guarded(pytester, MARKED_SLOW)
    assert outcomes == {"test_runs_a_script": "passed"}
