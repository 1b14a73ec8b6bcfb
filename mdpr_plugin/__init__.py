"""MDPR for fastreid.

Importing this package does two things and nothing else: it adds the two import names fastreid 1.4.0
needs on Python >= 3.10 / torch 2 (:mod:`mdpr_plugin.shims`; names that did not exist), and it registers
the ``MDPR`` meta-architecture, its ``MDPRHead``, the bundled ``MiniMarket1501`` dataset, ``ReidFolder`` (a
dataset read from a folder named in the config) and ``SynergyReID`` (in the MDPR authors' layout) in fastreid's
registries. No fastreid function or class is replaced. (Before that it checks the environment: Python 3.10+,
PyTorch 2+ and faiss, which pip is never asked to install or replace behind the user's back.)

The plugin's own ``train_net.py`` and tools run through :class:`mdpr_plugin.engine.Trainer`, a
``DefaultTrainer`` subclass. fastreid's *stock* scripts and ``DefaultTrainer`` need fastreid itself
fixed for torch 2 and CPU-only machines: that is an explicit opt-in,
:func:`mdpr_plugin.compat.patch_fastreid`.
"""
import sys

from .errors import MissingExtraError, report_if_uncaught, require

try:
    if sys.version_info < (3, 10):
        raise MissingExtraError(f"mdpr_plugin needs Python 3.10 or newer; this is {sys.version.split()[0]}.")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or int(torch.__version__.split(".")[0]) < 2:
        # pip is never asked to install or upgrade torch: that would replace a CUDA build behind the user's back
        found = f"this environment has {torch.__version__}" if torch else "it is not installed"
        raise MissingExtraError(
            f"mdpr_plugin needs PyTorch 2.0 or newer, and {found}. Install or upgrade torch and torchvision "
            "yourself, in the build for your machine (https://pytorch.org), then import again.")
    # fastreid's evaluation imports faiss, which this package does not install by default: it must not replace
    # a faiss-gpu the environment has
    require("faiss", "cpu", what="`pip install 'mdpr-plugin[cpu]'` (faiss-cpu) or `pip install 'mdpr-plugin[gpu]'` "
            "(faiss-gpu, for CUDA machines); in this repository `pip install -e '.[cpu]'` or `'.[gpu]'`")
    require("fastreid", None, what="`pip install --no-deps fastreid==1.4.0` (its metadata pins torch 1.13.1), or, "
            "to use a fast-reid git clone, run from the clone's root with PYTHONPATH=. (the tools as `python -m "
            "mdpr_plugin.tools.<name>`)")
except MissingExtraError as error:
    report_if_uncaught(error)  # one line, not a traceback, when a tool or train_net.py is what imported us
    raise

from . import logs, shims  # noqa: E402

shims.install()
logs.route_to_fastreid()

from .config import add_mdpr_config, config_file  # noqa: E402
from . import data, modeling  # noqa: E402,F401  (importing registers)
from .inference import FeatureExtractor  # noqa: E402

__all__ = ["FeatureExtractor", "add_mdpr_config", "config_file"]
