"""The two names fastreid 1.4.0 imports that today's Python and torch no longer have.

``fastreid/data/build.py:11`` imports ``torch._six`` (removed in torch 2.0), and ``data/build.py:12`` and
``evaluation/testing.py:5`` import ``collections.Mapping`` (removed in Python 3.10): without them
``fastreid.data`` and ``fastreid.engine`` do not import. Both are added here only where they are missing;
nothing that exists is replaced. This module imports neither fastreid nor the rest of the plugin, so it
can run before fastreid is imported.
"""
import collections
import collections.abc
import sys
import types


def install():
    """Add ``torch._six`` and ``collections.Mapping`` where they are missing. Idempotent."""
    if "torch._six" not in sys.modules:
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)
        sys.modules["torch._six"] = six
    if not hasattr(collections, "Mapping"):
        collections.Mapping = collections.abc.Mapping
