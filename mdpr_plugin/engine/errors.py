"""Known bad-input errors, reported to the user as their message alone.

Each of these errors already names the file or config key and the fix; a Python traceback under it
only buries the message. ``train_net.py`` calls its ``main`` through :func:`run_reporting_known_errors`:
a known error prints ``ERROR: <message>`` on stderr and exits with status 1; any other exception keeps
its traceback (it is a bug to report, not an input to fix).
"""
import sys

from ..config import ConfigKeyError
from ..data.checks import DataConfigError, DatasetLayoutError, DatasetNotFoundError
from ..data.images import BadImageError
from ..evaluation.evaluator import EmptyEvaluationSetError
from ..serialization import CheckpointError
from .train_loop import NonFiniteLossError, NonFiniteWeightsError

KNOWN_ERRORS = (ConfigKeyError, DatasetNotFoundError, DatasetLayoutError, DataConfigError, BadImageError,
                EmptyEvaluationSetError, CheckpointError, NonFiniteLossError, NonFiniteWeightsError)


def run_reporting_known_errors(function, *args):
    """``function(*args)``; a known error becomes ``ERROR: <message>`` on stderr and exit status 1.

    A module-level function, so that it can be the entry point of spawned processes (``launch``).
    """
    try:
        return function(*args)
    except KNOWN_ERRORS as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
