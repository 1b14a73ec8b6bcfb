"""Datasets: the bundled images (registered in fastreid's DATASET_REGISTRY) and the image set the plugin's
loaders read from."""
import os

from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.market1501 import Market1501

from .images import read_image

BUNDLED_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mini_market1501")


@DATASET_REGISTRY.register()
class MiniMarket1501(Market1501):
    """96 real Market-1501 crops shipped inside the package.

    train: 32 images of 16 identities; query and gallery: 32 images each of 16 other identities.
    The images live inside the package, so the dataset works from any working directory and
    ignores ``FASTREID_DATASETS``.
    """

    dataset_name = "minimarket"

    def __init__(self, root=None, **kwargs):
        super().__init__(root=BUNDLED_ROOT, **kwargs)


class RGBCommDataset(CommDataset):
    """fastreid's ``CommDataset`` reading images with :func:`mdpr_plugin.data.images.read_image` (every
    mode converted to RGB, unreadable files named) instead of fastreid's ``read_image``."""

    def __getitem__(self, index):
        path, pid, camid = self.img_items[index][:3]
        image = read_image(path)
        if self.transform is not None:
            image = self.transform(image)
        if self.relabel:
            pid, camid = self.pid_dict[pid], self.cam_dict[camid]
        return {"images": image, "targets": pid, "camids": camid, "img_paths": path}
