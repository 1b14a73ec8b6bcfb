"""The model speed benchmark (mdpr_plugin.benchmarks.model) in its small mode, and its report logic."""
import json
import os
import subprocess
import sys
import time

import pytest

from mdpr_plugin.benchmarks import model as benchmark
from mdpr_plugin.benchmarks.report import OtherLoad

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
    data = benchmark.main(["--small", "--no-isolate", "--threads", "1", "--modes", "fp32", "channels_last",
                           "--write-docs", "--output", str(docs), "--feature-dir", str(tmp / "features"),
                           "--json", str(tmp / "results.json")])
    return data, docs.read_text(), tmp


def test_small_run_writes_every_row_and_column_with_positive_numbers(small_run):
    data, text, _ = small_run
    section = text[text.index(benchmark.SECTION_START):text.index(benchmark.SECTION_END)]
    header, rows = _table(section)
    assert header == [c[0] for c in benchmark.COLUMNS]
    assert {(r[0], r[1]) for r in rows} == EXPECTED_ROWS and len(rows) == len(EXPECTED_ROWS)
    for row in rows:
        assert len(row) == len(header)
        cells = dict(zip(header, row))
        for column in POSITIVE:
            assert float(cells[column]) > 0, (row[:2], column)
        assert float(cells["train peak memory added (GiB)"]) >= 0
    assert "Float32 ceiling" in section and "### Targets (issue 7)" in section
    assert len([line for line in section.splitlines() if line.startswith("- ")]) == 3


def test_docs_section_leaves_the_other_sections_alone_and_is_replaced_in_place(small_run):
    data, text, tmp = small_run
    assert "<!-- evaluation-benchmark:start -->\nkept\n<!-- evaluation-benchmark:end -->" in text
    benchmark.main(["--from-json", str(tmp / "results.json"), "--write-docs", "--output", str(tmp / "benchmarks.md")])
    again = (tmp / "benchmarks.md").read_text()
    assert again.count(benchmark.SECTION_START) == 1 and again == text


def test_mdpr_modes_are_compared_with_float32_on_the_real_images(small_run):
    data, _, _ = small_run
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


@pytest.mark.parametrize("values, verdicts", [
    ((0.80, 0.55, 1.6, 0.001), ["met", "met", "met"]),
    ((0.70, 0.45, 1.6, 0.010), ["missed", "missed", "missed"]),  # mAP 1 point lower: too lossy
    ((0.75, 0.50, 1.4, 0.000), ["met", "met", "missed"]),        # not fast enough
])
def test_targets_are_judged_from_the_numbers(values, verdicts):
    lines = benchmark.targets(_fake(*values))
    assert [("**met**" in line and "met") or ("**missed**" in line and "missed") for line in lines] == verdicts
    assert "onnxruntime" in lines[2]


def test_size_argument_is_checked():
    assert benchmark._size("384x192") == (384, 192)
    with pytest.raises(SystemExit):  # argparse's usage error
        benchmark.parse_args(["--size", "384"])


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
