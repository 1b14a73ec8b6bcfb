"""The model speed benchmark (benchmarks.model) in its small mode, its report logic and its
command line."""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time

import pytest
from helpers import REPO

from benchmarks import model as benchmark
from benchmarks.harness import OtherLoad

EXPECTED_ROWS = {("MDPR", "fp32"), ("MDPR", "channels_last"), ("Baseline", "fp32"), ("MGN", "fp32")}
POSITIVE = ("train step (s)", "train images/s", "train GFLOP/image", "train % of ceiling",
            "inference images/s", "inference GFLOP/image", "inference % of ceiling")


def _table(section):
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    return header, rows


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model-benchmark")
    docs = tmp / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- evaluation-benchmark:start -->\nkept\n<!-- evaluation-benchmark:end -->\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = benchmark.main(["--small", "--no-isolate", "--threads", "1", "--modes", "fp32", "channels_last",
                                 "--write-docs", "--output", str(docs), "--feature-dir", str(tmp / "features"),
                                 "--json", str(tmp / "results.json")])
    data = json.loads((tmp / "results.json").read_text())
    return {"status": status, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "data": data,
            "docs": docs.read_text(), "tmp": tmp}


@pytest.mark.slow
def test_small_run_writes_every_row_and_column_with_positive_numbers(small_run):
    text = small_run["docs"]
    section = text[text.index(benchmark.SECTION.start):text.index(benchmark.SECTION.end)]
    header, rows = _table(section)
    assert header == [c[0] for c in benchmark.COLUMNS]
    assert {(r[0], r[1]) for r in rows} == EXPECTED_ROWS and len(rows) == len(EXPECTED_ROWS)
    for row in rows:
        assert len(row) == len(header)
        cells = dict(zip(header, row))
        for column in POSITIVE:
            assert float(cells[column]) > 0, (row[:2], column)
        assert float(cells["train peak memory added (GiB)"]) >= 0


@pytest.mark.slow
def test_small_run_reports_on_stdout_progress_on_stderr_and_exits_0(small_run):
    assert small_run["status"] == 0
    section = small_run["stdout"].strip()
    assert section.startswith(benchmark.SECTION.start) and section.endswith(benchmark.SECTION.end)
    assert section in small_run["docs"]  # what was printed is what was written
    assert "MDPR fp32 infer ..." in small_run["stderr"] and "| MDPR |" not in small_run["stderr"]


@pytest.mark.slow
def test_shares_of_the_ceiling_are_the_measured_flops_per_second_over_the_ceiling(small_run):
    data = small_run["data"]
    ceiling = data["ceiling"]["ceiling"]
    assert ceiling == max(v for k, v in data["ceiling"].items() if k != "ceiling") > 0
    raw = {(r["mode"], r["phase"]): r for r in data["results"] if r["arch"] == "MDPR"}
    fp32 = {r["mode"]: r for r in benchmark.rows(data) if r["arch"] == "MDPR"}["fp32"]
    train, infer = raw["fp32", "train"], raw["fp32", "infer"]
    assert fp32["train_share"] == pytest.approx(train["flops"] / train["step_s"] / ceiling)
    assert fp32["infer_share"] == pytest.approx(infer["flops"] / infer["batch_s"] / ceiling)
    goals = benchmark.goals(data)
    assert [g.value for g in goals[:2]] == [fp32["infer_share"], fp32["train_share"]]
    assert [g.met for g in goals[:2]] == [fp32["infer_share"] >= 0.75, fp32["train_share"] >= 0.50]
    speedup = raw["channels_last", "infer"]["images_per_s"] / infer["images_per_s"]
    assert goals[2].value == pytest.approx(speedup)  # the only other mode is the fastest


@pytest.mark.slow
def test_docs_section_leaves_the_other_sections_alone_and_is_replaced_in_place(small_run):
    text, tmp = small_run["docs"], small_run["tmp"]
    assert "<!-- evaluation-benchmark:start -->\nkept\n<!-- evaluation-benchmark:end -->" in text
    with contextlib.redirect_stdout(io.StringIO()):
        benchmark.main(["--from-json", str(tmp / "results.json"), "--write-docs",
                        "--output", str(tmp / "benchmarks.md")])
    again = (tmp / "benchmarks.md").read_text()
    assert again.count(benchmark.SECTION.start) == 1 and again == text


def _command_line(*args):
    """``python -m benchmarks.model`` run as its docstring says: from the repository's root."""
    return subprocess.run([sys.executable, "-m", "benchmarks.model", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_the_command_line_exits_0_and_prints_the_section(small_run):
    proc = _command_line("--from-json", str(small_run["tmp"] / "results.json"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == small_run["stdout"].strip()


@pytest.mark.slow
def test_the_command_line_names_a_missing_config_file_in_one_line(tmp_path):
    missing = tmp_path / "nowhere.yml"
    proc = _command_line("--small", "--config-file", str(missing))
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and str(missing) in proc.stderr
    assert proc.stderr.startswith("python -m benchmarks.model: error: ")


def test_small_mode_compiles_only_when_asked():
    config = ["--config-file", os.path.join(REPO, "configs/MDPR/market.yml")]
    assert "compile" not in benchmark.parse_args([*config, "--small"]).modes
    assert benchmark.parse_args([*config, "--small", "--modes", "compile"]).modes == ["compile"]
    assert "compile" in benchmark.parse_args(config).modes  # the full run measures it


@pytest.mark.slow
def test_mdpr_modes_are_compared_with_float32_on_the_real_images(small_run):
    data = small_run["data"]
    by_mode = {r["mode"]: r for r in benchmark.rows(data) if r["arch"] == "MDPR"}
    assert by_mode["fp32"]["feature_rel_error"] == 0 and by_mode["fp32"]["map_change"] == 0
    # channels-last changes only the summation order: float32 rounding, the same ranking
    assert 0 <= by_mode["channels_last"]["feature_rel_error"] < 1e-4
    assert 0 <= by_mode["fp32"]["mAP"] <= 1 and by_mode["fp32"]["feature_dim"] == 9 * 16  # (P+1) E + 2E + 4E
    assert json.loads(json.dumps(data)) == data  # the raw results are plain JSON


def _fake(share_infer, share_train, speedup, map_change, ceiling=100e9):
    """Results whose MDPR float32 rows reach the given shares of ``ceiling`` and one faster mode."""
    batch, step_s, batch_s = 16, 1.0, 1.0
    common = {"arch": "MDPR", "batch": batch, "size": [128, 64], "parameters": 1}
    infer = {"images_per_s": batch / batch_s, "batch_s": batch_s, "memory": 1, "first_s": 1, "mAP": 0.5,
             "rank1": 0.5, "feature_rel_error": 0.0, "feature_dim": 4608}
    results = [
        {**common, "mode": "fp32", "phase": "train", "step_s": step_s, "first_s": 1, "memory": 1,
         "flops": share_train * ceiling * step_s},
        {**common, **infer, "mode": "fp32", "phase": "infer", "flops": share_infer * ceiling * batch_s},
        {**common, **infer, "mode": "onnxruntime", "phase": "infer", "images_per_s": speedup * batch / batch_s,
         "batch_s": batch_s / speedup, "mAP": 0.5 + map_change, "feature_rel_error": 1e-6},
    ]
    return {"results": results, "ceiling": {"ceiling": ceiling}}


@pytest.mark.parametrize("values, met", [
    ((0.80, 0.55, 1.6, 0.001), [True, True, True]),
    ((0.70, 0.45, 1.6, 0.010), [False, False, False]),  # mAP 1 point lower: too lossy
    ((0.75, 0.50, 1.4, 0.000), [True, True, False]),    # not fast enough
])
def test_goals_are_judged_from_the_numbers(values, met):
    share_infer, share_train, speedup, _ = values
    goals = benchmark.goals(_fake(*values))
    assert [g.value for g in goals] == pytest.approx([share_infer, share_train, speedup])
    assert [g.met for g in goals] == met


def test_size_argument_is_checked():
    assert benchmark._size("384x192") == (384, 192)
    for text in ("0x32", "-3x4", "12"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"size must be HxW .*got '{text}'"):
            benchmark._size(text)
    with pytest.raises(SystemExit):  # argparse's usage error
        benchmark.parse_args(["--size", "384"])


@pytest.mark.slow
def test_other_load_counts_a_process_that_is_not_the_benchmarks():
    """A busy process the benchmark did not start (not reaped, so not in its children's CPU time) shows up
    as about one core's worth of the machine; the load average could not tell it from the benchmark's own."""
    started = time.time()
    other_load = OtherLoad(started)
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 2\nwhile time.time() < end: pass"])
    try:
        time.sleep(1.5)
        share = other_load.share(time.time())
    finally:
        busy.wait()
    assert share is not None and share > 0.5 / os.cpu_count()


def test_repeat_timed_warms_up_then_times_until_the_repeats_or_the_budget():
    from benchmarks.harness import repeat_timed

    calls = []
    first, times = repeat_timed(lambda: calls.append(1), warmup=3, repeats=5)
    assert len(calls) == 3 + 5 and len(times) == 5 and first >= 0
    slow = []
    first, times = repeat_timed(lambda: (slow.append(1), time.sleep(0.02)), warmup=3, repeats=50, budget=0.05)
    # the first call takes over a quarter of the budget: no further warm-up; then timed runs until 0.05 s are spent
    assert first >= 0.02 and 2 <= len(times) <= 3 and len(slow) == 1 + len(times)


@pytest.mark.parametrize("content, message", [
    ("{results: none", r"is not JSON \(Expecting property name"),
    ('{"a": 1}', r"does not hold this benchmark's results \(KeyError: 'machine'\); give a file its --json wrote"),
], ids=["not json", "other json"])
def test_from_json_of_another_file_is_one_line(tmp_path, content, message):
    """A file that is not --json's raised JSONDecodeError or KeyError with a traceback."""
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(SystemExit, match=rf"^python -m benchmarks\.model: error: --from-json {tmp_path}/results\.json " + message):
        benchmark.main(["--from-json", str(tmp_path / "results.json"), "--output", str(tmp_path / "b.md")])
    assert not (tmp_path / "b.md").exists()
