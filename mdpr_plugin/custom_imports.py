"""The config's ``IMPORTS``: the user's own modules, imported before anything is built.

fastreid is extended by registering backbones, heads, meta-architectures and datasets in its registries from a
module of one's own; the registration happens when that module is imported. ``IMPORTS`` names those modules in
the config (as MMEngine's ``custom_imports`` does), so that ``train_net.py``, every tool, the benchmarks and
``FeatureExtractor`` import them, and so does any later run given the ``config.yaml`` a training run wrote.

Only importable module names are taken (``my_project.backbones``), found on ``sys.path`` and in the current
working directory; a file path is refused rather than executed.
"""
import importlib
import logging
import os
import re
import sys
import traceback

from .errors import InputError, MDPRError

logger = logging.getLogger(__name__)

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class UserImportError(MDPRError, ImportError):
    """A module named in IMPORTS could not be imported; the message names it and the error."""


def _checked_names(names):
    if isinstance(names, str):
        names = (names,)
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name) or name.endswith(".py"):
            hint = ""
            if isinstance(name, str) and (name.endswith(".py") or os.sep in name or "/" in name):
                module = os.path.splitext(os.path.basename(name))[0]
                hint = (f" Give the module's name ({module!r}), with its folder on PYTHONPATH or as the working "
                        "directory: files are not executed.")
            raise InputError(f"IMPORTS holds {name!r}, which is not a module name like 'my_backbones' or "
                             f"'my_project.datasets'.{hint}")
    return list(names)


def import_modules(names):
    """Import each of ``names`` (dotted module names) once, the current working directory searched after
    ``sys.path``; the first that fails stops everything with one :class:`UserImportError` naming it."""
    names = _checked_names(names)
    if not names:
        return []
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # the user's code: any error it raises while importing
            where = _where(error, name)
            raise UserImportError(
                f"IMPORTS: module {name} could not be imported: {type(error).__name__}: {error}{where}. "
                f"Check that {name} is importable from {os.getcwd()} (its folder on PYTHONPATH, or run from its "
                "folder), or remove it from IMPORTS.") from None
    logger.info("Imported IMPORTS modules: %s", ", ".join(names))
    return names


def _where(error, name):
    """`` (at file:line)`` of the innermost frame of the user's module the error came from, if any."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if "importlib" not in f.filename and f.filename != __file__]
    return f" (at {own[-1].filename}:{own[-1].lineno})" if own else ""
