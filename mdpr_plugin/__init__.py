"""MDPR for fastreid.

Importing this package does two things and nothing else: it adds the two import names fastreid 1.4.0
needs on Python >= 3.10 / torch 2 (:mod:`mdpr_plugin.shims`; names that did not exist), and it registers
the ``MDPR`` meta-architecture, its ``MDPRHead`` and the bundled ``MiniMarket1501`` dataset in fastreid's
registries. No fastreid function or class is replaced.

The plugin's own ``train_net.py`` and tools run through :class:`mdpr_plugin.engine.Trainer`, a
``DefaultTrainer`` subclass. fastreid's *stock* scripts and ``DefaultTrainer`` need fastreid itself
fixed for torch 2 and CPU-only machines: that is an explicit opt-in,
:func:`mdpr_plugin.compat.patch_fastreid`.
"""
from . import shims

shims.install()

from .config import add_mdpr_config  # noqa: E402
from . import data, modeling  # noqa: E402,F401  (importing registers)

__all__ = ["add_mdpr_config"]
