"""Datasets: the bundled images (registered in fastreid's DATASET_REGISTRY) and the image set the plugin's
loaders read from."""
import glob
import os
import re

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

    def process_dir(self, dir_path, is_train=True):
        """Market1501's, reading the person id and camera from the file name alone: fastreid's searches the
        whole path, so an installation under a folder such as ``0001_c1`` would make every image one person."""
        data = []
        for img_path in glob.glob(os.path.join(dir_path, "*.jpg")):
            pid, camid = map(int, re.search(r"([-\d]+)_c(\d)", os.path.basename(img_path)).groups())
            if pid == -1:
                continue  # junk images
            assert 0 <= pid <= 1501 and 1 <= camid <= 6
            camid -= 1  # from 0
            if is_train:
                pid, camid = f"{self.dataset_name}_{pid}", f"{self.dataset_name}_{camid}"
            data.append((img_path, pid, camid))
        return data


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
