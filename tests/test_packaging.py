"""Installing the package respects the environment it lands in, and its configs travel with it."""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from helpers import REPO, run_script

from mdpr_plugin import config_file
from mdpr_plugin.config import PACKAGED_CONFIGS, build_config
from mdpr_plugin.errors import MissingFileError


def _name(requirement):
    return requirement.split(";")[0].split("[")[0].strip().split(">")[0].split("<")[0].split("=")[0].lower()


def test_the_base_requirements_hold_no_faiss_no_torch_no_fastreid_and_no_upper_bounds():
    requirements = importlib.metadata.requires("mdpr-plugin")
    base = [r for r in requirements if "extra ==" not in r]
    assert {"numpy", "yacs", "termcolor", "tabulate"} <= {_name(r) for r in base}
    assert [r for r in base if _name(r).startswith(("faiss", "torch", "fastreid"))] == []
    assert [r for r in base if "<" in r] == []
    extras = {(_name(r), r.split("extra ==")[1].strip().strip('"')) for r in requirements if "extra ==" in r}
    assert {("faiss-cpu", "cpu"), ("faiss-gpu", "gpu")} <= extras


def _fake_distribution(site_packages, name, version):
    """What pip reads to know a distribution is installed: its metadata (the files are not needed to resolve)."""
    folder = os.path.join(site_packages, f"{name.replace('-', '_')}-{version}.dist-info")
    os.makedirs(folder)
    with open(os.path.join(folder, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    open(os.path.join(folder, "RECORD"), "w").close()


@pytest.mark.slow
def test_installing_into_an_environment_with_faiss_gpu_and_newer_termcolor_and_tabulate_changes_none(tmp_path):
    """A fastreid user's environment: faiss-gpu, termcolor 3.3.0, tabulate 0.10.0, torch and the rest (this
    virtualenv's packages, seen through a .pth file, so that nothing is downloaded). pip's own report of what
    installing the package would do lists the package alone."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)  # pip comes via the .pth
    python = str(env / "bin" / "python")
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site_packages, "existing.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    for name, version in (("faiss-gpu", "1.15.1"), ("termcolor", "3.3.0"), ("tabulate", "0.10.0")):
        _fake_distribution(site_packages, name, version)
    report = tmp_path / "report.json"
    result = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--quiet",
                             "--report", str(report), REPO], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    installed = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                 for item in json.loads(report.read_text())["install"]}
    assert installed == {"mdpr-plugin": "0.1.0"}


@pytest.mark.slow
def test_the_trackers_extra_changes_neither_torch_nor_torchvision(tmp_path):
    """BoxMOT (the trackers extra, also in the test extra) requires torch and torchvision: pip's report of installing
    the extra here, over this environment's torch builds, replaces neither."""
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--quiet",
                             "--report", str(report), f"{REPO}[trackers]"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "mdpr-plugin" in installed and not installed & {"torch", "torchvision"}, installed


@pytest.mark.slow
@pytest.mark.parametrize("missing, message", [
    ("torch", "mdpr_plugin needs PyTorch 2.0 or newer, and this environment has 1.13.1"),
    ("faiss", "faiss is not installed; install it with `pip install 'mdpr-plugin[cpu]'` (faiss-cpu) or "
              "`pip install 'mdpr-plugin[gpu]'` (faiss-gpu"),
    ("fastreid", "fastreid is not installed; install it with `pip install --no-deps fastreid==1.4.0`"),
])
def test_an_environment_without_what_the_package_needs_is_refused_on_import(tmp_path, missing, message):
    if missing == "torch":  # an old torch first on the path
        (tmp_path / "torch").mkdir()
        (tmp_path / "torch" / "__init__.py").write_text("__version__ = '1.13.1'")
        code = "import mdpr_plugin"
    else:
        code = f"import sys; sys.modules[{missing!r}] = None; import mdpr_plugin"
    returncode, output = run_script("-c", code, env={"PYTHONPATH": str(tmp_path)})
    assert returncode != 0 and message in output, output[-2000:]


ENTRY_POINTS = [  # (command, the line's prefix, whether it runs from the repository root), named
    *(pytest.param([os.path.join(os.path.dirname(sys.executable), script), "--help"], f"{script}: error:", False,
                   id=script) for script in ("mdpr-export", "mdpr-extract", "mdpr-search", "mdpr-visualize",
                                             "mdpr-dataset")),
    pytest.param([sys.executable, "-m", "mdpr_plugin.tools.extract", "--help"], "ERROR:", False, id="tools.extract"),
    # the repository's benchmarks are not installed: they run from its root
    *(pytest.param([sys.executable, "-m", f"benchmarks.{module}", argument], "ERROR:", True, id=f"benchmarks.{module}")
      for module, argument in (("model", "--help"), ("evaluation", "--help"), ("gpu_timing", "--help"),
                               ("training_step", "profile"))),  # its --help needs no fastreid
    pytest.param([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", "MDPR/demo.yml"], "ERROR:",
                 False, id="train_net.py"),
]


@pytest.mark.slow
@pytest.mark.parametrize("command, prefix, from_the_repository", ENTRY_POINTS)
def test_every_entry_point_says_in_one_line_that_fastreid_is_missing(command, prefix, from_the_repository, tmp_path):
    # fastreid absent: what the first import of it finds says so, as an uninstalled package would
    (tmp_path / "fastreid").mkdir()
    (tmp_path / "fastreid" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastreid'\", name='fastreid')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, cwd=REPO if from_the_repository else tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"{prefix} fastreid is not installed; install it with `pip install --no-deps fastreid==1.4.0` (its metadata "
        "pins torch 1.13.1), or, to use a fast-reid git clone, run from the clone's root with PYTHONPATH=. (the "
        "tools as `python -m mdpr_plugin.tools.<name>`)"]


def test_the_packaged_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_file("MDPR/duke.yml") == config_file("configs/MDPR/duke.yml") == os.path.join(
        PACKAGED_CONFIGS, "MDPR", "duke.yml")
    cfg = build_config("MDPR/duke.yml")  # its _BASE_ (../Base-SBS.yml) resolves beside it
    assert (cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.BACKBONE.DEPTH, tuple(cfg.INPUT.SIZE_TRAIN)) == ("MDPR", "101x",
                                                                                                   (384, 192))
    with pytest.raises(MissingFileError, match=r"MDPR/dukee\.yml not found .* the packaged ones are Base-SBS\.yml, "
                                               r"Base-bagtricks\.yml, Baseline-demo\.yml, MDPR/demo\.yml"):
        config_file("MDPR/dukee.yml")
    # in this repository, configs/ is the packaged folder: one source of truth
    assert os.path.realpath(os.path.join(REPO, "configs")) == os.path.realpath(PACKAGED_CONFIGS)


# what .gitignore keeps out of a clone (.git: a worktree's is a file naming the repository)
NOT_IN_A_CLONE = (".git", ".venv", "__pycache__", "*.pyc", "*.egg-info", "logs", "output", "build", ".pytest_cache",
                  ".whl")


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_the_bundled_images(tmp_path):
    # built from a copy of the checkout as a clone has it (benchmarks/ included, so that packaging it is caught):
    # setuptools never empties a checkout's build/, which keeps the modules of every earlier build
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # a quiet build: none of setuptools' warnings (undeclared data folders, deprecated licence classifiers, ...)
    assert "Warning" not in result.stderr and "warning" not in result.stderr, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("mdpr_plugin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "License: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
    configs = sorted(os.path.relpath(os.path.join(folder, f), os.path.dirname(os.path.dirname(PACKAGED_CONFIGS)))
                     for folder, _, files in os.walk(PACKAGED_CONFIGS) for f in files)
    assert len(configs) == 7 and [c for c in configs if c not in names] == []
    assert sum(n.startswith("mdpr_plugin/data/mini_market1501/") and n.endswith(".jpg") for n in names) == 96
    assert "mdpr_plugin/data/mini_market1501/README.md" in names
    # the benchmarks and the GPU check are the repository's own tools: not installed, no console script
    assert [n for n in names if n.endswith(".py") and ("benchmark" in n or "gpu_" in n)] == []
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "benchmark" not in zipfile.ZipFile(wheel).read(entry_points).decode()
