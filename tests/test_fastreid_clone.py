"""MDPR dropped into a fast-reid git clone: the clone's own tools/train_net.py (fastreid's DefaultTrainer)
trains and evaluates MDPR with `import mdpr_plugin`, `add_mdpr_config(cfg)` and `patch_fastreid()`, and the
user's own edits to fastreid (to read_image and to the train-set builder) still run."""
import os
import shutil

import fastreid
import pytest
import torch
from helpers import REPO, run_script
from test_mdpr_end_to_end import LOSS_KEYS, SHORT
from test_train_net import metrics_rows

from mdpr_plugin.modeling import to_authors_state_dict

# a user's edits: each leaves a line "<what> <the file it ran from>" in $USER_EDIT_LOG
USER_EDITS = [  # (file, the definition the edit goes into, what it logs)
    ("fastreid/data/data_utils.py", "def read_image(file_name, format=None):\n", "read_image"),
    ("fastreid/data/build.py",
     "def _train_loader_from_config(cfg, *, train_set=None, transforms=None, sampler=None, **kwargs):\n",
     "train_set_builder"),
]


def _edit(clone, relative, definition, what):
    path = os.path.join(clone, relative)
    source = open(path).read()
    assert source.count(definition) == 1, relative
    logged = (f"    with open(__import__('os').environ['USER_EDIT_LOG'], 'a') as log:\n"
              f"        log.write('{what} ' + __file__ + '\\n')\n")
    open(path, "w").write(source.replace(definition, definition + logged))


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """<tmp>/fast-reid: the installed fastreid's source without compiled modules, edited by its user, with
    tools/train_net.py."""
    root = tmp_path_factory.mktemp("clone") / "fast-reid"
    shutil.copytree(os.path.dirname(fastreid.__file__), root / "fastreid",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__", "build"))
    for edit in USER_EDITS:
        _edit(root, *edit)
    # as the README's recipe says (fast-reid's own instructions build it the same way, with `make`)
    returncode, output = run_in_clone(root, os.devnull, "-m", "mdpr_plugin.evaluation.cython_ranking", script=None)
    assert returncode == 0 and str(root / "fastreid") in output, output
    (root / "tools").mkdir()
    shutil.copy(os.path.join(REPO, "tests", "fixtures", "clone_train_net.py"), root / "tools" / "train_net.py")
    return root


def run_in_clone(clone, log, *args, script="tools/train_net.py"):
    """Python in the clone's folder with the clone first on the path (by default its tools/train_net.py on the
    MDPR demo config), as its user runs it."""
    if script:
        args = (script, "--config-file", os.path.join(REPO, "configs/MDPR/demo.yml"), *args)
    return run_script(*args, cwd=str(clone), env={"PYTHONPATH": str(clone), "USER_EDIT_LOG": str(log)})


def test_the_clones_own_script_trains_mdpr_and_runs_the_users_edits(clone, tmp_path):
    log = tmp_path / "edits.log"
    returncode, trained = run_in_clone(clone, log, *SHORT, "OUTPUT_DIR", str(tmp_path / "out"))
    assert returncode == 0, trained[-3000:]
    assert all(key in trained for key in LOSS_KEYS)
    (final_metrics,) = metrics_rows(trained)

    edits = log.read_text().splitlines()
    files = {line.split(" ", 1)[1] for line in edits}
    assert files == {str(clone / "fastreid/data/data_utils.py"), str(clone / "fastreid/data/build.py")}
    reads = sum(line.startswith("read_image ") for line in edits)
    assert reads >= 2 * 2 * 16 + 64  # 2 epochs of 2 batches of 16, then the 64 test images
    assert sum(line.startswith("train_set_builder ") for line in edits) >= 1

    # the same weights, and the same weights in the MDPR authors' key layout, evaluated by the clone's script
    # (NUM_CLASSES given, so that the classifiers match too) give the numbers of the training run's evaluation
    checkpoint = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=True)
    authors = tmp_path / "authors_layout.pth"
    torch.save({"model": to_authors_state_dict(checkpoint["model"])}, authors)
    for weights in (tmp_path / "out" / "model_final.pth", authors):
        returncode, evaluated = run_in_clone(clone, log, "--eval-only", "MODEL.WEIGHTS", str(weights),
                                             "MODEL.HEADS.NUM_CLASSES", "16", "OUTPUT_DIR", str(tmp_path / "eval"))
        assert returncode == 0, evaluated[-3000:]
        assert "not found in the checkpoint" not in evaluated and "not used by the model" not in evaluated
        assert metrics_rows(evaluated) == [final_metrics]
