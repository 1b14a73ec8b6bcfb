"""Shared test helpers (tests/ is on sys.path through pytest.ini)."""
import contextlib
import logging
import os
import subprocess
import sys

from mdpr_plugin.config import build_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MDPR_DEMO_CONFIG = os.path.join(REPO, "configs", "MDPR", "demo.yml")
BUNDLED_IMAGES = os.path.join(REPO, "mdpr_plugin", "data", "mini_market1501", "Market-1501-v15.09.15")


def load_config(path, *overrides):
    """A config as train_net.py builds it (without the logging / output-dir side effects)."""
    return build_config(os.path.join(REPO, path), overrides)


def run_script(*args, cwd=REPO, timeout=600, env=None):
    """Run Python in a fresh interpreter (from the repository root, with ``env`` added to the environment);
    return (returncode, output)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


@contextlib.contextmanager
def logged(logger_name="mdpr_plugin", level=logging.WARNING):
    """The messages of ``level`` and above logged on ``logger_name`` and its children, caught on the logger
    itself (pytest's caplog listens on the root logger, which fastreid's setup_logger stops them reaching)."""
    messages = []
    handler = logging.Handler(level)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
