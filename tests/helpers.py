"""Shared test helpers (tests/ is on sys.path through pytest.ini)."""
import os
import subprocess
import sys

import mdpr_plugin  # noqa: F401  (registers MDPR; fastreid.data / fastreid.engine import only after this)
from fastreid.config import get_cfg
from mdpr_plugin import add_mdpr_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MDPR_DEMO_CONFIG = os.path.join(REPO, "configs", "MDPR", "demo.yml")
BUNDLED_IMAGES = os.path.join(REPO, "mdpr_plugin", "data", "mini_market1501", "Market-1501-v15.09.15")


def load_config(path, *overrides):
    """A config as train_net.py builds it (without the logging / output-dir side effects)."""
    cfg = get_cfg()
    add_mdpr_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.merge_from_list(list(overrides))
    return cfg


def run_script(*args, cwd=REPO, timeout=600, env=None):
    """Run Python in a fresh interpreter (from the repository root, with ``env`` added to the environment);
    return (returncode, output)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout
