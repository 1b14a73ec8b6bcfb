"""fastreid's compiled (Cython) ranking module: whether it is there, and building it with this interpreter.

The plugin does not need it: its ranking (``rank.eval_market1501_numpy``) gives the module's numbers bit for
bit without it. fastreid compiles it inside ``ReidEvaluator.__init__`` by running ``make`` (that is, whatever
``python3`` is first on PATH) and calls ``sys.exit(1)`` when that fails (evaluation/rank_cylib/__init__.py:19);
the plugin's evaluator, and fastreid's under ``patch_fastreid()``, compile nothing at evaluation time.
``make setup`` builds it (``python -m mdpr_plugin.evaluation.cython_ranking``): the tests compare against it.
"""
import importlib
import os
import shutil
import subprocess
import sys


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


if __name__ == "__main__":  # python -m mdpr_plugin.evaluation.cython_ranking
    print("fastreid's Cython ranking module built in", build_fast_ranking())
