"""fastreid's compiled (Cython) ranking module: whether it is there, and building it with this interpreter.

fastreid compiles it inside ``ReidEvaluator.__init__`` by running ``make`` (that is, whatever ``python3`` is
first on PATH) and calls ``sys.exit(1)`` when that fails (evaluation/rank_cylib/__init__.py:19): an
evaluation at the end of a long training run can end the process. ``make setup`` builds it once; the
plugin's evaluator builds it with the running interpreter if it is missing, and otherwise falls back to
fastreid's pure-Python ranking with a warning.
"""
import importlib
import logging
import os
import shutil
import subprocess
import sys

logger = logging.getLogger(__name__)


def fast_ranking_available():
    try:
        from fastreid.evaluation.rank_cylib.rank_cy import evaluate_cy  # noqa: F401
        return True
    except ImportError:
        return False


def build_fast_ranking():
    """Compile fastreid's Cython ranking module in place, with this interpreter; returns its folder."""
    import fastreid.evaluation.rank_cylib as rank_cylib

    folder = os.path.dirname(rank_cylib.__file__)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shutil.rmtree(os.path.join(folder, "build"), ignore_errors=True)
    importlib.invalidate_caches()
    if not fast_ranking_available():
        raise RuntimeError(f"built fastreid's ranking module in {folder} but it does not import")
    return folder


def ensure_fast_ranking():
    """Build the module if it is missing; if that fails, warn (the pure-Python ranking gives the same numbers
    more slowly). Never exits."""
    if fast_ranking_available():
        return True
    try:
        folder = build_fast_ranking()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as error:
        stderr = getattr(error, "stderr", None) or b""
        reason = (stderr.decode(errors="replace").strip().splitlines() or [str(error)])[-1]
        logger.warning(
            "fastreid's fast (Cython) ranking module is not built and could not be built here (%s); using the "
            "pure-Python ranking, which gives the same numbers more slowly. Build it with "
            "`python -m mdpr_plugin.evaluation.cython_ranking` (needs Cython and a C compiler).", reason)
        return False
    logger.info("Built fastreid's Cython ranking module in %s.", folder)
    return True


if __name__ == "__main__":  # python -m mdpr_plugin.evaluation.cython_ranking
    print("fastreid's Cython ranking module built in", build_fast_ranking())
