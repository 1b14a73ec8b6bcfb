"""MDPR for fastreid.

Importing this package is all a user does: it first makes fastreid 1.4.0 work on today's
Python / torch / numpy and on CPU-only machines (:mod:`mdpr_plugin.compat`), then registers the
MDPR meta-architecture, its head and the bundled dataset in fastreid's registries.
"""
from . import compat

compat.apply()

from .config import add_mdpr_config  # noqa: E402
from . import data, modeling  # noqa: E402,F401  (importing registers)

__all__ = ["add_mdpr_config"]
