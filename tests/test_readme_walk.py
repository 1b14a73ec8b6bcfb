"""The documentation walked as a new user: docs/tools.md's commands run as written and write only under logs/ (the
repository stays clean); messages that point where to get missing weights; no harmless-warning or profiler noise."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import pytest
from helpers import BUNDLED_IMAGES, REPO, code_blocks, load_config, run_script, save_demo_checkpoint

from mdpr_plugin.data import build_transforms, read_image
from mdpr_plugin.engine.checkpointer import check_weights_file
from mdpr_plugin.errors import InputError, MDPRError
from mdpr_plugin.modeling.backbone import pretrain_file


def files_outside_logs(root):
    return {os.path.relpath(os.path.join(folder, name), root)
            for folder, dirs, names in os.walk(root) for name in names
            if not os.path.relpath(folder, root).split(os.sep)[0] in ("logs", "__pycache__", ".git")
            and "__pycache__" not in folder}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The repository's tracked files (what a clone has), with the demo's checkpoint where `make demo` puts it."""
    root = tmp_path_factory.mktemp("clone")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    for name in filter(None, tracked):
        source, target = os.path.join(REPO, name), root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        elif os.path.isfile(source):  # a file deleted in the working tree is not copied
            shutil.copy2(source, target)
    save_demo_checkpoint(root / "logs" / "demo" / "mdpr")
    return root


@pytest.mark.slow
def test_the_tool_commands_of_docs_tools_run_as_written_and_write_only_under_logs(checkout):
    before = files_outside_logs(checkout)
    script = code_blocks("docs/tools.md").replace(".venv/bin/", os.path.dirname(sys.executable) + "/")
    result = subprocess.run(["bash", "-e", "-c", script], cwd=checkout, capture_output=True, text=True,
                            timeout=1800, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert files_outside_logs(checkout) == before  # nothing new in the repository root or anywhere else
    written = {os.path.relpath(p, checkout / "logs" / "tools") for p in glob.glob(
        str(checkout / "logs" / "tools" / "**" / "*"), recursive=True) if os.path.isfile(p)}
    assert {"export/mdpr.onnx", "extract/gallery.npz", "extract/query.npz", "search/gallery.index",
            "search/gallery.index.json", "search/results.csv", "visualize/ranking/summary.csv"} <= written
    # the two attention commands draw into folders of their own
    query_maps = [p for p in written if p.startswith("visualize/attention-query/")]
    test_set_maps = [p for p in written if p.startswith("visualize/attention-test-set/")]
    assert len(query_maps) == len(os.listdir(os.path.join(BUNDLED_IMAGES, "query")))
    assert len(test_set_maps) > len(query_maps)


@pytest.fixture
def storage_warning_every_time():
    """torch warns of TypedStorage once per process: every time here, so that the test can see each call."""
    import torch.storage

    torch.storage._set_always_warn_typed_storage_removal(True)
    yield
    torch.storage._set_always_warn_typed_storage_removal(False)


def test_fastreid_s_storage_warning_is_silenced_in_the_plugin_s_transforms_and_nowhere_else(
        storage_warning_every_time):
    cfg = load_config("configs/MDPR/demo.yml")
    image = read_image(sorted(glob.glob(os.path.join(BUNDLED_IMAGES, "query", "*.jpg")))[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for is_train in (False, True):
            build_transforms(cfg, is_train=is_train)(image)
        warnings.warn("a warning of the user's own")
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "TypedStorage" in m], messages
    assert "a warning of the user's own" in messages
    # fastreid's own pipeline still warns: only the plugin's calls are quiet
    import fastreid.data.build as data_build
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data_build.build_transforms(cfg, is_train=False)(image)
    assert [w for w in caught if "TypedStorage" in str(w.message)]


@pytest.mark.parametrize("overrides, expected", [
    (["MODEL.BACKBONE.DEPTH", "101x", "MODEL.BACKBONE.WITH_IBN", "True"],
     "fastreid downloads this backbone's weights from https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"
     "resnet101_ibn_a-59ea0ac6.pth: fetch them once with `mkdir -p pretrained && curl -L -o "
     "pretrained/resnet101_ibn_a-59ea0ac6.pth https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"
     "resnet101_ibn_a-59ea0ac6.pth` and pass MODEL.BACKBONE.PRETRAIN_PATH pretrained/resnet101_ibn_a-59ea0ac6.pth"),
    (["MODEL.BACKBONE.DEPTH", "50x", "MODEL.BACKBONE.WITH_IBN", "False"],
     "https://download.pytorch.org/models/resnet50-19c8e357.pth"),
])
def test_pretraining_without_a_file_names_where_fastreid_gets_the_weights(overrides, expected):
    cfg = load_config("configs/MDPR/demo.yml", "MODEL.BACKBONE.PRETRAIN", "True", *overrides)
    with pytest.raises(InputError) as refused:
        pretrain_file(cfg)
    assert expected in str(refused.value) and "MODEL.BACKBONE.PRETRAIN False" in str(refused.value)


def test_missing_authors_weights_say_where_they_are_published(tmp_path):
    cfg = load_config("configs/MDPR/duke.yml")  # PRETRAIN_PATH pretrained/lup_moco_r101.pth, not here
    with pytest.raises(MDPRError, match=r"lup_moco_r101.pth\) are published by the LUPerson project "
                                        r"\(https://github.com/DengpanFu/LUPerson\)"):
        pretrain_file(cfg)
    with pytest.raises(MDPRError, match=r"released weights .* GETTING_STARTED.md of "
                                        r"https://github.com/KuilongCui/MDPR .*password mdpr"):
        check_weights_file(str(tmp_path / "DukeMTMC-reID.pth"))
    with pytest.raises(MDPRError) as own:  # a run's own checkpoint: no such pointer
        check_weights_file(str(tmp_path / "logs" / "duke" / "model_final.pth"))
    assert "KuilongCui" not in str(own.value)


@pytest.mark.slow
def test_the_training_step_profile_prints_no_profiler_error_and_its_duration():
    status, output = run_script("-m", "benchmarks.training_step", "profile", "--repeats", "1",
                                "--warmup", "1", timeout=1800)
    assert status == 0, output[-3000:]
    assert not [line for line in output.splitlines() if "ERROR" in line], output[-3000:]
    result = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    assert result["step_ms"] > 0 and result["forward_ms"] > 0
    assert re.search(r"^profile took \d+ s$", output, flags=re.M)
