"""The repository's own benchmarks and GPU check; not installed with the package (they need the checkout:
train_net.py, configs/, docs/). Run each from the repository root as a module, e.g.
``python -m benchmarks.model --small`` or ``python -m benchmarks.evaluation``; see their docstrings.
``harness`` holds what the benchmarks share. They import the library; the library never imports them."""
