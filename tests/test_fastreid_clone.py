"""MDPR dropped into a fast-reid git clone, as docs/fastreid-deployments.md's recipe says: the clone's own
tools/train_net.py (fastreid's DefaultTrainer) trains and evaluates MDPR with the lines the recipe adds, without the Cython ranking
module; the user's own edits to fastreid (read_image, the train-set builder) still run; a tool runs from the
clone on the clone's fastreid."""
import os
import re
import shutil

import fastreid
import numpy as np
import pytest
import torch
from helpers import BUNDLED_IMAGES, REPO, doc_text, run_script
from test_mdpr_end_to_end import LOSS_KEYS, SHORT
from test_train_net import metrics_rows

from mdpr_plugin.modeling import to_authors_state_dict

RECIPE = "docs/fastreid-deployments.md"  # the page whose lines and commands these tests run
# a user's edits: each leaves a line "<what> <the file it ran from>" in $USER_EDIT_LOG
USER_EDITS = [  # (file, the line the edit goes after, what it logs)
    ("fastreid/__init__.py", "__version__ = \"1.3\"\n", "import"),
    ("fastreid/data/data_utils.py", "def read_image(file_name, format=None):\n", "read_image"),
    ("fastreid/data/build.py",
     "def _train_loader_from_config(cfg, *, train_set=None, transforms=None, sampler=None, **kwargs):\n",
     "train_set_builder"),
]


def _edit(clone, relative, anchor, what):
    path = os.path.join(clone, relative)
    source = open(path).read()
    assert source.count(anchor) == 1, relative
    indent = " " * 4 if anchor.startswith("def ") else ""
    logged = (f"{indent}with open(__import__('os').environ.get('USER_EDIT_LOG', '/dev/null'), 'a') as log:\n"
              f"{indent}    log.write('{what} ' + __file__ + '\\n')\n")
    open(path, "w").write(source.replace(anchor, anchor + logged))


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """<tmp>/fast-reid: the installed fastreid's source without compiled modules (no Cython ranking), edited by its
    user, with the recipe's lines added to tools/train_net.py."""
    root = tmp_path_factory.mktemp("clone") / "fast-reid"
    shutil.copytree(os.path.dirname(fastreid.__file__), root / "fastreid",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__", "build"))
    for edit in USER_EDITS:
        _edit(root, *edit)
    (root / "tools").mkdir()
    shutil.copy(os.path.join(REPO, "tests", "fixtures", "clone_train_net.py"), root / "tools" / "train_net.py")
    return root


def run_in_clone(clone, log, *args, path_first=True):
    """Python in the clone's folder, as its user runs it: the clone's tools/train_net.py with PYTHONPATH=. (this
    environment also has PyPI's fastreid, which the script's own sys.path.append('.') would leave in front), or
    `python -m ...` (args given), which puts the folder first by itself."""
    env = {"USER_EDIT_LOG": str(log)}
    if path_first:
        env["PYTHONPATH"] = str(clone)
    return run_script(*args, cwd=str(clone), env=env)


def _clone_files_used(log):
    return {line.split(" ", 1)[1] for line in log.read_text().splitlines()}


@pytest.mark.slow
def test_the_clones_own_script_trains_mdpr_and_runs_the_users_edits(clone, tmp_path):
    log, out = tmp_path / "edits.log", tmp_path / "out"
    script = ("tools/train_net.py", "--config-file", "MDPR/demo.yml")  # a packaged config, by name
    returncode, trained = run_in_clone(clone, log, *script, *SHORT, "OUTPUT_DIR", str(out))
    assert returncode == 0, trained[-3000:]
    assert all(key in trained for key in LOSS_KEYS)
    (final_metrics,) = metrics_rows(trained)  # evaluated by fastreid's evaluator, without the Cython module
    assert not list(clone.rglob("*.so"))

    edits = log.read_text().splitlines()
    assert _clone_files_used(log) == {str(clone / "fastreid/__init__.py"), str(clone / "fastreid/data/data_utils.py"),
                                      str(clone / "fastreid/data/build.py")}
    reads = sum(line.startswith("read_image ") for line in edits)
    assert reads >= 2 * 2 * 16 + 64  # 2 epochs of 2 batches of 16, then the 64 test images
    assert sum(line.startswith("train_set_builder ") for line in edits) >= 1
    # the plugin's log lines are in fastreid's log file too
    assert "mdpr_plugin." in (out / "log.txt").read_text()

    # the same weights, and the same weights in the MDPR authors' key layout, evaluated by the clone's script
    # (NUM_CLASSES given, so that the classifiers match too) give the numbers of the training run's evaluation
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    authors = tmp_path / "authors_layout.pth"
    torch.save({"model": to_authors_state_dict(checkpoint["model"])}, authors)
    for weights in (out / "model_final.pth", authors):
        returncode, evaluated = run_in_clone(clone, log, *script, "--eval-only", "MODEL.WEIGHTS", str(weights),
                                             "MODEL.HEADS.NUM_CLASSES", "16", "OUTPUT_DIR", str(tmp_path / "eval"))
        assert returncode == 0, evaluated[-3000:]
        assert "not found in the checkpoint" not in evaluated and "not used by the model" not in evaluated
        assert metrics_rows(evaluated) == [final_metrics]

    # without NUM_CLASSES fastreid's script builds classifiers of no rows: its checkpointer skips exactly those, one
    # warning each (what the drop-in page says to expect), and the evaluation is the same
    returncode, evaluated = run_in_clone(clone, log, *script, "--eval-only", "MODEL.WEIGHTS",
                                         str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval_no_classes"))
    assert returncode == 0, evaluated[-3000:]
    skipped = re.findall(r"Skip loading parameter '([^']+)' to the model due to incompatible shapes: "
                         r"\((\d+), \d+\) in the checkpoint but \(0, \d+\)", evaluated)
    classifiers = {key for key, value in checkpoint["model"].items() if key.endswith(".weight") and value.dim() == 2
                   and value.shape[0] == 16}  # one row per training identity
    assert sorted(key for key, _ in skipped) == sorted(classifiers) and len(classifiers) == 8
    assert metrics_rows(evaluated) == [final_metrics]

    # a tool, run from the clone as the recipe says: the clone's fastreid, not the one installed beside it
    tool_log = tmp_path / "tool.log"
    returncode, output = run_in_clone(clone, tool_log, "-m", "mdpr_plugin.tools.extract", "--config-file",
                                      "MDPR/demo.yml", "--input", os.path.join(BUNDLED_IMAGES, "query"), "--output",
                                      str(tmp_path / "query.npz"), "MODEL.WEIGHTS", str(out / "model_final.pth"),
                                      path_first=False)
    assert returncode == 0, output[-3000:]
    assert _clone_files_used(tool_log) == {str(clone / "fastreid/__init__.py")}
    assert np.load(tmp_path / "query.npz")["features"].shape[0] == 32


@pytest.mark.parametrize("page", ["README.md", RECIPE])
def test_the_drop_in_lines_of_the_documentation_are_what_these_tests_run(page):
    """The drop-in lines the README and the recipe show are the fixture's, word for word."""
    fixture = open(os.path.join(REPO, "tests", "fixtures", "clone_train_net.py")).read().splitlines()
    added = [line.strip() for line in fixture if "# added for MDPR" in line]
    assert len(added) == 5 and [line for line in added if line not in doc_text(page)] == []


def test_the_recipe_s_commands_are_what_these_tests_run():
    """The recipe's commands are this file's, word for word."""
    recipe = doc_text(RECIPE)
    for command in ("PYTHONPATH=. python tools/train_net.py --config-file MDPR/demo.yml\n",
                    "PYTHONPATH=. python tools/train_net.py --config-file MDPR/demo.yml --eval-only MODEL.WEIGHTS",
                    "python -m mdpr_plugin.tools.extract --config-file MDPR/demo.yml --input"):
        assert command in recipe, command
