"""The plugin's user-facing errors, and how train_net.py and the tools report them.

Every error the plugin raises for bad input (a file, a config key or value, the data) derives from
:class:`MDPRError` and already names what is wrong and the fix; a Python traceback under it only buries
the message. train_net.py and the tools catch this one type: the message is printed alone and the
process exits with status 1. Any other exception keeps its traceback: it is a bug to report, not an input
to fix.
"""
import contextlib
import importlib
import os
import sys


class MDPRError(Exception):
    """Bad input, described by the message: what is wrong, where, and the fix."""


class InputError(MDPRError, ValueError):
    """A value given on the command line, in a config or in a file that cannot be used."""


class MissingFileError(MDPRError, FileNotFoundError):
    """A file or folder the user named that does not exist."""


class MissingExtraError(MDPRError, ImportError):
    """An optional dependency is not installed; the message names the extra of this package that installs it."""


def require(module, extra, what=None):
    """Import ``module`` or say which extra of this package provides it (``what``: the choice, if several)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        install = what or f"`pip install 'mdpr-plugin[{extra}]'` (in this repository: `pip install -e '.[{extra}]'`)"
        raise MissingExtraError(f"{module} is not installed; install it with {install}") from None


def _message(error):
    # KeyError's str() quotes its argument
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if "in DataLoader worker process" in text and "Original Traceback" in text:
        # raised in a loader worker, re-raised by torch with the worker's traceback as its message: the plugin's
        # message is the traceback's last line, after the class name
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


@contextlib.contextmanager
def reporting_errors(prog=None):
    """Turn an :class:`MDPRError` into ``SystemExit(message)``: Python prints the message on stderr and exits
    with status 1. ``<prog>: error: <message>`` for a tool (argparse's form), ``ERROR: <message>`` without
    ``prog``."""
    try:
        yield
    except MDPRError as error:
        prefix = f"{prog}: error:" if prog else "ERROR:"
        raise SystemExit(f"{prefix} {_message(error)}") from None


def run_reporting_errors(function, *args):
    """``function(*args)`` under :func:`reporting_errors`; a module-level function, so that it can be the
    entry point of spawned processes (train_net.py's ``launch``)."""
    with reporting_errors():
        return function(*args)


def report_if_uncaught(error):
    """Have Python print ``error`` as one line, without a traceback, if it ends the program uncaught.

    For the checks run while the package is imported (a missing fastreid, faiss or torch): they fail before any
    tool's ``main`` can catch them, whether a console script, ``python -m`` or train_net.py imports the package.
    Only that exception object is reported so; anything else keeps Python's report, and a program that catches
    the error never sees the difference.
    """
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        if value is not error:
            return previous(kind, value, traceback)
        program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        prefix = f"{program}: error:" if program.startswith("mdpr-") else "ERROR:"
        print(f"{prefix} {_message(error)}", file=sys.stderr)

    sys.excepthook = excepthook
