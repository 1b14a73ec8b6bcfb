"""The evaluation benchmark's --small mode runs and writes its table into its own section; its goals are
judged from the numbers."""
import contextlib
import io
import json

import pytest

from benchmarks import evaluation as benchmark
from benchmarks.harness import GIB


@pytest.mark.slow
def test_small_benchmark_writes_its_section(tmp_path):
    output, saved = tmp_path / "benchmarks.md", tmp_path / "results.json"
    output.write_text("# Benchmarks\n\n## Model speed\n\nkept as is\n")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = benchmark.main(["--small", "--output", str(output), "--repeats", "1", "--json", str(saved)])
    text = output.read_text()
    assert status == 0 and stdout.getvalue().strip() in text  # printed and written
    assert "## Model speed\n\nkept as is" in text  # someone else's section is left alone
    assert "## Evaluation benchmark" in text and "| small | 64 | plugin | yes |" in text
    results = json.loads(saved.read_text())["results"]
    assert all("runs" in r for r in results) and len(results) == 4
    # without re-ranking the plugin's distance and metrics are fastreid's, bit for bit
    assert "| small | 64 | no | " in text and "| yes | yes | 0.0000 |" in text
    assert [(g.value, g.met) for g in benchmark.goals(results)] == [(True, True)]
    with contextlib.redirect_stdout(io.StringIO()):
        benchmark.main(["--output", str(output), "--from-json", str(saved)])  # re-rendered from saved results
    assert output.read_text().count("## Evaluation benchmark") == 1  # replaced, not appended
    output.write_text("# Benchmarks\n")
    with contextlib.redirect_stdout(io.StringIO()):
        benchmark.main(["--output", str(output), "--from-json", str(saved)])
    assert "| small | 64 | plugin | yes |" in output.read_text()


def test_fastreid_dense_rerank_need_is_computed(monkeypatch):
    # two (N x N) float32 matrices at MSMT17 size (N = 11,659 + 82,161)
    assert benchmark.dense_rerank_bytes(93820) == 2 * 93820 ** 2 * 4
    monkeypatch.setattr(benchmark, "memory_total", lambda: 24 * GIB)
    planned = benchmark.plan(benchmark.parse_args([]))
    assert not any("not_run" in c for c in planned if c["dataset"] == "duke")  # 3.2 GB: it runs
    msmt_fastreid_rerank = [c for c in planned
                            if c["dataset"] == "msmt17" and c["impl"] == "fastreid" and c["rerank"]]
    assert msmt_fastreid_rerank and all(c["not_run"] == 2 * 93820 ** 2 * 4 for c in msmt_fastreid_rerank)


def fake_result(dataset, shape, dim, impl, rerank, seconds, digest="a"):
    return {"dataset": dataset, "shape": shape, "dim": dim, "impl": impl, "rerank": rerank,
            "num_total": 19889,
            "runs": [{}], "median_first_s": seconds, "median_rank_s": 1.0, "first_mem": 2 * 1024 ** 3,
            "rank_mem": 0.0, "process_peak": 9 * 1024 ** 3, "mAP": 0.5, "cmc": [0.9] * 10,
            "digest": {"distance": digest, "metrics": digest}}


def test_goals_are_judged_from_the_numbers(monkeypatch):
    monkeypatch.setattr(benchmark, "memory_total", lambda: 24 * GIB)
    results = [
        fake_result("duke", "DukeMTMC-reID", 4608, "plugin", False, 8.0),
        fake_result("duke", "DukeMTMC-reID", 4608, "fastreid", False, 9.0),
        fake_result("duke", "DukeMTMC-reID", 4608, "plugin", True, 39.0, digest="b"),
        fake_result("duke", "DukeMTMC-reID", 4608, "fastreid", True, 159.0, digest="c"),
        fake_result("msmt17", "MSMT17", 4608, "plugin", True, 900.0),
        {"dataset": "msmt17", "shape": "MSMT17", "dim": 4608, "impl": "fastreid", "rerank": True,
         "num_total": 93820, "not_run": benchmark.dense_rerank_bytes(93820)},
        {"dataset": "msmt17", "shape": "MSMT17", "dim": 2048, "impl": "plugin", "rerank": True,
         "num_total": 93820, "failed": "killed (out of memory?)"},
    ]
    goals = benchmark.goals(results)
    # re-ranking + ranking: 39 + 1 s against fastreid's 159 + 1 s; MSMT17: the process peak, then a failure;
    # without re-ranking: the same digests as fastreid's
    assert [g.value for g in goals] == [40.0, pytest.approx(160.0 / 40.0), 9 * GIB, None, True]
    assert [g.met for g in goals] == [True, True, True, False, True]
    run = {"started": 0.0, "finished": 60.0, "load": [1.0, 1.0], "threads": 2, "small": False,
           "command": benchmark.PROG, "other_cpu_share": 0.0}
    text = benchmark.render({"results": results, "machine": benchmark.machine("faiss", "numpy"), "run": run})
    assert "not run: needs 65.6 GiB" in text and "| MSMT17 | 4608 | yes | 901.00 | not run |" in text
