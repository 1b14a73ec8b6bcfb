"""The plugin's train and test loaders, built from fastreid's own builders.

fastreid's ``_train_loader_from_config`` / ``_test_loader_from_config`` (data/build.py:30,98) build the
data sets; they are looked up on ``fastreid.data.build`` at call time, so a user's edits to them (or
wrappers installed around them) run. What they return is then checked (:mod:`mdpr_plugin.data.checks`):
fastreid builds whatever the folders hold, and an empty set or too few identities make its identity
samplers wait forever, an unreadable image stops the run when first drawn. The loader itself is a
:class:`~mdpr_plugin.data.loader.DeviceDataLoader` (fastreid's ``DataLoaderX`` needs CUDA) with fastreid's
batch sampling and collation.

fastreid's own ``CommDataset`` is re-created as a :class:`~mdpr_plugin.data.datasets.RGBCommDataset`
over the images that passed the check; a data set of another class (a user's own) is used as it is. The data sets
are built with the config at hand (:func:`mdpr_plugin.data.folder.folder_config`), where ReidFolder reads its keys.
"""
import torch
import fastreid.data.build as data_build
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.samplers import InferenceSampler
from fastreid.utils import comm

from .checks import (check_folder_not_read_as_ids, check_identity_sampling, check_images, check_not_empty,
                     explained_dataset_errors, triplet_loss_used, warn_images_not_read)
from .datasets import RGBCommDataset
from .folder import folder_config
from .loader import DeviceDataLoader
from .transforms import build_transforms


_BUILT_LATER = object()  # a sampler placeholder: see train_loader_parts


def _bad_image_policy(cfg):
    # configs built without add_mdpr_config lack the key
    return cfg.DATALOADER.get("BAD_IMAGES", "error")


def _checked_items(cfg, items, description, is_train):
    size = cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST
    kept, _ = check_images(items, description, _bad_image_policy(cfg), size)
    warn_images_not_read(items, description)
    return kept


def _load_dataset(cfg, name, **kwargs):
    with explained_dataset_errors(), folder_config(cfg):
        return DATASET_REGISTRY.get(name)(root=data_build._root, **kwargs)


def train_loader_parts(cfg, **kwargs):
    """fastreid's ``_train_loader_from_config(cfg, **kwargs)`` with the plugin's transforms and the training
    set checked (ids not read from its folder, not empty, every image readable, enough identities for the sampler, batches
    of two or more identities, two images of each under a triplet loss).

    fastreid's function is called twice: first for the training set alone (a sampler is passed so that
    it builds none: fastreid's samplers assert on an empty set), then, with the checked set, for the
    sampler, which then indexes exactly the images that will be read.
    """
    transforms = build_transforms(cfg, is_train=True)
    for name in cfg.DATASETS.NAMES:
        check_folder_not_read_as_ids(name, data_build._root)
    with explained_dataset_errors(), folder_config(cfg):
        train_set = data_build._train_loader_from_config(cfg, transforms=transforms, sampler=_BUILT_LATER,
                                                         **kwargs)["train_set"]
    if type(train_set) is CommDataset:
        names = "+".join(cfg.DATASETS.NAMES)
        if not train_set.img_items:  # read the first data set again to name its folder
            check_not_empty(names, _load_dataset(cfg, cfg.DATASETS.NAMES[0], **kwargs), "train", [])
        items = _checked_items(cfg, train_set.img_items, f"{names}'s training set", is_train=True)
        train_set = RGBCommDataset(items, train_set.transform, relabel=train_set.relabel)
    if hasattr(train_set, "img_items"):  # what fastreid's samplers read
        check_identity_sampling(train_set.img_items, cfg.DATALOADER.SAMPLER_TRAIN, cfg.SOLVER.IMS_PER_BATCH,
                                cfg.DATALOADER.NUM_INSTANCE, comm.get_world_size(), triplet=triplet_loss_used(cfg))
    return data_build._train_loader_from_config(cfg, train_set=train_set, transforms=transforms, **kwargs)


def test_loader_parts(cfg, dataset_name, **kwargs):
    """fastreid's ``_test_loader_from_config`` with the plugin's transforms, the query and gallery sets
    checked (ids not read from their folder, neither empty, every image readable)."""
    check_folder_not_read_as_ids(dataset_name, data_build._root)
    with explained_dataset_errors(), folder_config(cfg):
        parts = data_build._test_loader_from_config(cfg, dataset_name=dataset_name,
                                                    transforms=build_transforms(cfg, is_train=False), **kwargs)
    test_set, num_query = parts["test_set"], parts["num_query"]
    if type(test_set) is CommDataset:
        roles = {"query": test_set.img_items[:num_query], "gallery": test_set.img_items[num_query:]}
        for role, items in roles.items():
            if not items:  # read the data set again to name the folder
                check_not_empty(dataset_name, _load_dataset(cfg, dataset_name, **kwargs), role, items)
            roles[role] = _checked_items(cfg, items, f"{dataset_name}'s {role} set", is_train=False)
        parts["test_set"] = RGBCommDataset(roles["query"] + roles["gallery"], test_set.transform, relabel=False)
        parts["num_query"] = len(roles["query"])
    return parts


def _loader(dataset, batch_sampler, num_workers, device):
    # as fastreid's build_reid_*_loader build theirs, with a loader that also runs without CUDA
    return DeviceDataLoader(comm.get_local_rank(), device=device, dataset=dataset, batch_sampler=batch_sampler,
                            num_workers=num_workers, collate_fn=data_build.fast_batch_collator, pin_memory=True)


def train_loader(train_set, sampler, total_batch_size, num_workers=0, device=None):
    """fastreid's ``build_reid_train_loader`` (a batch of ``total_batch_size / processes`` per process)."""
    batch_sampler = torch.utils.data.BatchSampler(sampler, total_batch_size // comm.get_world_size(), True)
    return _loader(train_set, batch_sampler, num_workers, device)


def test_loader(test_set, test_batch_size, num_query, num_workers=0, device=None):
    """fastreid's ``build_reid_test_loader``: ``(loader, num_query)``, every image once over all processes."""
    batch_sampler = torch.utils.data.BatchSampler(InferenceSampler(len(test_set)),
                                                  test_batch_size // comm.get_world_size(), False)
    return _loader(test_set, batch_sampler, num_workers, device), num_query
