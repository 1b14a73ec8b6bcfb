"""``mdpr-visualize``: pictures of what a trained model does.

* ``ranking``: each query with its top-k gallery images (``ranking.py``);
* ``attention``: the soft branch's attention maps (``attention.py``).
``cli.py`` parses the command line; ``drawing.py`` holds the Pillow drawing both use.
"""
from .cli import main

__all__ = ["main"]
