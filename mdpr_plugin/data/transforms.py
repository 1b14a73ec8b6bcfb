"""fastreid's ``build_transforms`` with what it gets wrong today fixed (for the plugin's loaders).

- ``INPUT.AFFINE`` builds ``RandomAffine(resample=..., fillcolor=...)`` (data/transforms/build.py:81),
  arguments torchvision removed; the same transform is built here with today's arguments.
- ``INPUT.RPT`` uses a fixed patch pool of 50000 (data/transforms/transforms.py:57); the MDPR authors' RandomPatch
  has a pool of 1000, so the pool size comes from ``INPUT.RPT.POOL_CAPACITY``, and where that is 0 (its default),
  from the meta-architecture (:func:`random_patch_pool`).
- fastreid's ``ToTensor`` goes through torch's deprecated ``TypedStorage`` (data/transforms/functional.py:46),
  which warns in every process; the pipelines built here silence that one warning while they run.
"""
import warnings
from collections import deque

import fastreid.data.build as data_build
import torchvision.transforms as T
from fastreid.data.transforms.transforms import RandomPatch, ToTensor


class Compose(T.Compose):
    """torchvision's ``Compose``, without fastreid's harmless ``TypedStorage`` warning (and only that one)."""

    def __call__(self, image):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            return super().__call__(image)


# The pool of INPUT.RPT.POOL_CAPACITY 0 (the default) per meta-architecture: the authors' RandomPatch keeps 1000 patches
# (their build_transforms never passes one, their class default is 1000); fastreid's keeps 50000 for the others.
ARCHITECTURE_PATCH_POOLS = {"MDPR": 1000}
FASTREID_PATCH_POOL = 50000


def random_patch_pool(cfg):
    """The RandomPatch pool size of ``cfg``: INPUT.RPT.POOL_CAPACITY, or where it is 0 or absent (a config without
    the plugin's keys), the meta-architecture's own (:data:`ARCHITECTURE_PATCH_POOLS`, else fastreid's 50000)."""
    return cfg.INPUT.RPT.get("POOL_CAPACITY", 0) or ARCHITECTURE_PATCH_POOLS.get(cfg.MODEL.META_ARCHITECTURE,
                                                                                 FASTREID_PATCH_POOL)


def build_transforms(cfg, is_train=True):
    """fastreid's transforms for ``cfg``, from the ``build_transforms`` its loader builders call (looked up
    when called, so that a user's edits to it run), with INPUT.AFFINE and the RandomPatch pool
    (:func:`random_patch_pool`) applied."""
    if not is_train:
        return Compose(data_build.build_transforms(cfg, is_train=False).transforms)

    with_affine = cfg.INPUT.AFFINE.ENABLED
    if with_affine:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.INPUT.AFFINE.ENABLED = False
    pipeline = data_build.build_transforms(cfg, is_train=True)
    steps = list(pipeline.transforms)

    if with_affine:
        # fastreid inserts it just before AugMix / ToTensor
        position = next(i for i, step in enumerate(steps) if isinstance(step, ToTensor))
        if position > 0 and type(steps[position - 1]).__name__ == "AugMix":
            position -= 1
        affine = T.RandomAffine(degrees=10, translate=None, scale=[0.9, 1.1], shear=0.1,
                                interpolation=T.InterpolationMode.NEAREST, fill=0)
        steps.insert(position, affine)

    for step in steps:
        if isinstance(step, RandomPatch):
            step.patchpool = deque(maxlen=random_patch_pool(cfg))
    return Compose(steps)
