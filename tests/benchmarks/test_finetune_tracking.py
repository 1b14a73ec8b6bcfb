"""The fine-tuning benchmark's section of docs/benchmarks.md is what its saved results render to (no number edited by
hand), and its numbers are the saved runs'."""
import json
import os

import pytest
from helpers import REPO

from benchmarks import finetune_tracking as script

SAVED = os.path.join(REPO, "docs", "finetune-tracking", "2026-12-07-cpu.json")


def test_the_docs_section_is_the_saved_results_rendered():
    data = json.load(open(SAVED))
    section = script.render(data)
    docs = open(os.path.join(REPO, "docs", "benchmarks.md")).read()
    assert section in docs
    # a number of the table is the saved run's: StrongSort at its default, the same-people model, over the scenes
    idf1, switches = script.over_scenes(data, "fine-tuned on the same people", "StrongSort", 0.2)
    assert idf1 == pytest.approx(100 * sum(next(r["idf1"] for r in s["runs"]["fine-tuned on the same people"]
                                  if r["tracker"] == "StrongSort" and r["threshold"] == 0.2)
                             for s in data["scenes"]) / len(data["scenes"]))
    assert f"| {idf1:.1f} / {switches} (default) |" in section
