"""SynergyReID, in the folder layout the MDPR authors' code reads (their configs/MDPR/SynergyReID.yml trains on it).

Registered in fastreid's DATASET_REGISTRY when the plugin is imported. The layout, the split and the labels are the
authors' class's, with one defect fixed: their class reads the person id from the first ``<number>_<digit>`` of the
whole image path, so a folder such as ``/data/2023_1/`` gave every image one id; here it is read from the file name.
"""
import glob
import os
import re
from functools import partial

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset

# the authors' pattern: the person id, then "_" and one digit (a sequence number), found anywhere in the name
_FILE_NAME_ID = re.compile(r"(-?\d+)_\d")


@DATASET_REGISTRY.register()
class SynergyReID(ImageDataset):
    """SynergyReID's labelled split: ``FASTREID_DATASETS/synergyreid_data/`` (or, as the authors' class also takes,
    ``FASTREID_DATASETS`` itself) holding ``reid_training/``, ``reid_test/query/`` and ``reid_test/gallery/``, each
    with ``.jpeg`` files whose name starts with ``<person id>_<digit>``, e.g. ``12_3_001.jpeg``.

    Every split's ids come from the file names, as the authors' class reads them by default; the camera is 0 for
    training and query images and 1 for gallery ones (so a query's own-id gallery images all count). The unlabelled
    challenge split (``reid_challenge/``) is not read: with no identities it cannot be evaluated, and the authors'
    trainer never read it either.
    """

    dataset_dir = "synergyreid_data"
    dataset_name = "synergyreid"

    def __init__(self, root="datasets", **kwargs):
        self.root = root
        self.data_dir = os.path.join(root, self.dataset_dir)
        if not os.path.isdir(self.data_dir) and os.path.isdir(os.path.join(root, "reid_training")):
            self.data_dir = root  # the authors' alternative: the splits directly under the datasets folder
        self.train_dir = os.path.join(self.data_dir, "reid_training")
        self.query_dir = os.path.join(self.data_dir, "reid_test", "query")
        self.gallery_dir = os.path.join(self.data_dir, "reid_test", "gallery")
        self.check_before_run([self.data_dir, self.train_dir, self.query_dir, self.gallery_dir])

        # each split is read when first used, as fastreid's classes read theirs
        super().__init__(partial(self.process_dir, self.train_dir, "train"),
                         partial(self.process_dir, self.query_dir, "query"),
                         partial(self.process_dir, self.gallery_dir, "gallery"), **kwargs)

    def process_dir(self, dir_path, role):
        """``(path, person id, camera)`` of every ``.jpeg`` file in ``dir_path``, the ``role`` split ("train",
        "query" or "gallery"); training ids and cameras carry the data set's name, as fastreid's classes do, so
        that it combines with others in DATASETS.NAMES."""
        camid = 1 if role == "gallery" else 0
        data = []
        for img_path in sorted(glob.glob(os.path.join(dir_path, "*.jpeg"))):
            pid = int(_FILE_NAME_ID.search(os.path.basename(img_path)).group(1))
            if role == "train":
                data.append((img_path, f"{self.dataset_name}_{pid}", f"{self.dataset_name}_{camid}"))
            else:
                data.append((img_path, pid, camid))
        return data
