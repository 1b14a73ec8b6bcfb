"""fastreid's ``build_transforms`` with what it gets wrong today fixed (for the plugin's loaders).

- ``INPUT.AFFINE`` builds ``RandomAffine(resample=..., fillcolor=...)`` (data/transforms/build.py:81),
  arguments torchvision removed; the same transform is built here with today's arguments.
- ``INPUT.RPT`` uses a fixed patch pool of 50000 (data/transforms/transforms.py:57); MDPR trains with
  a pool of 1000, so the pool size comes from ``INPUT.RPT.POOL_CAPACITY``.
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


def build_transforms(cfg, is_train=True):
    """fastreid's transforms for ``cfg``, from the ``build_transforms`` its loader builders call (looked up
    when called, so that a user's edits to it run), with INPUT.AFFINE and INPUT.RPT.POOL_CAPACITY applied."""
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

    pool_capacity = cfg.INPUT.RPT.get("POOL_CAPACITY", None)
    for step in steps:
        if isinstance(step, RandomPatch) and pool_capacity is not None:
            step.patchpool = deque(maxlen=pool_capacity)
    return Compose(steps)
