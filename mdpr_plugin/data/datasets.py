"""Datasets the plugin registers in fastreid's DATASET_REGISTRY."""
import os

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.market1501 import Market1501

BUNDLED_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mini_market1501")


@DATASET_REGISTRY.register()
class MiniMarket1501(Market1501):
    """96 real Market-1501 crops shipped inside the package (see its README in ../shared/data).

    train: 32 images of 16 identities; query and gallery: 32 images each of 16 other identities.
    The images live inside the package, so the dataset works from any working directory and
    ignores ``FASTREID_DATASETS``.
    """

    dataset_name = "minimarket"

    def __init__(self, root=None, **kwargs):
        super().__init__(root=BUNDLED_ROOT, **kwargs)
