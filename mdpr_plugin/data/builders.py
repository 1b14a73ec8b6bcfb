"""fastreid's train / test loader builders, with the data checked first.

fastreid's ``_train_loader_from_config`` / ``_test_loader_from_config`` (data/build.py:30,98) build the
data sets from the folders, unchecked. The versions here build them the same way, check them with
:mod:`mdpr_plugin.data.checks`, and hand them to fastreid's as ``train_set`` / ``test_set``: fastreid
still builds the transforms, the sampler and the loader. A caller's own ``train_set`` / ``test_set``
is passed on unchanged (the identity sampler's needs are still checked when fastreid builds it).
"""
import fastreid.data.build as data_build
from fastreid.config import CfgNode
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.utils import comm

from ..compat import DatasetNotFoundError
from .checks import check_identity_sampling, check_images, check_not_empty, hint_for_images_in_root, layout_error

_fastreid_train_loader = data_build.build_reid_train_loader
_fastreid_test_loader = data_build.build_reid_test_loader
_fastreid_train_from_config = data_build._train_loader_from_config
_fastreid_test_from_config = data_build._test_loader_from_config


def _frame_of(error, cls):
    """The locals of the innermost frame of ``error``'s traceback that ran a method of a ``cls`` object."""
    found, tb = None, error.__traceback__
    while tb is not None:
        if isinstance(tb.tb_frame.f_locals.get("self"), cls):
            found = tb.tb_frame.f_locals
        tb = tb.tb_next
    return found or {}


def load_dataset(name, **kwargs):
    """``DATASET_REGISTRY.get(name)(root=FASTREID_DATASETS, **kwargs)`` with layout errors made clear."""
    cls = DATASET_REGISTRY.get(name)
    try:
        return cls(root=data_build._root, **kwargs)
    except DatasetNotFoundError as error:
        dataset = _frame_of(error, cls).get("self")
        raise hint_for_images_in_root(error, getattr(dataset, "data_dir", None)) from None
    except (AttributeError, AssertionError) as error:
        # fastreid's process_dir (e.g. datasets/market1501.py:74) calls .groups() on a failed regex match
        # and asserts id ranges; its frame still holds the dataset, the folder and the file
        frame = _frame_of(error, cls)
        if "img_path" not in frame:
            raise
        raise layout_error(name, frame["self"], frame["img_path"], frame.get("dir_path")) from error


def _input_size(cfg, is_train):
    return cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST


def build_train_set(cfg, transforms, **kwargs):
    """fastreid's training ``CommDataset`` for ``DATASETS.NAMES``, every set and image checked."""
    items = []
    for name in cfg.DATASETS.NAMES:
        dataset = load_dataset(name, **kwargs)
        if comm.is_main_process():
            dataset.show_train()
        check_not_empty(name, dataset, "train", dataset.train)
        kept, _ = check_images(dataset.train, f"{name}'s training set", _bad_image_policy(cfg), _input_size(cfg, True))
        items.extend(kept)
    return CommDataset(items, transforms, relabel=True)


def build_test_set(cfg, dataset_name, transforms, **kwargs):
    """fastreid's test ``CommDataset`` (query then gallery) and the query count, checked."""
    dataset = load_dataset(dataset_name, **kwargs)
    if comm.is_main_process():
        dataset.show_test()
    sets = []
    for role, items in (("query", dataset.query), ("gallery", dataset.gallery)):
        check_not_empty(dataset_name, dataset, role, items)
        kept, _ = check_images(items, f"{dataset_name}'s {role} set", _bad_image_policy(cfg), _input_size(cfg, False))
        sets.append(kept)
    return CommDataset(sets[0] + sets[1], transforms, relabel=False), len(sets[0])


def _bad_image_policy(cfg):
    # configs built without add_mdpr_config (fastreid's stock scripts) lack the key
    return cfg.DATALOADER.get("BAD_IMAGES", "error")


def train_loader_from_config(cfg, *, train_set=None, transforms=None, sampler=None, **kwargs):
    """fastreid's ``_train_loader_from_config`` with the training set built by :func:`build_train_set` and
    the identity sampler's needs checked."""
    if train_set is None:
        transforms = transforms if transforms is not None else data_build.build_transforms(cfg, is_train=True)
        train_set = build_train_set(cfg, transforms, **kwargs)
    if sampler is None and hasattr(train_set, "img_items"):  # what fastreid's samplers read
        check_identity_sampling(train_set.img_items, cfg.DATALOADER.SAMPLER_TRAIN, cfg.SOLVER.IMS_PER_BATCH,
                                cfg.DATALOADER.NUM_INSTANCE, comm.get_world_size())
    return _fastreid_train_from_config(cfg, train_set=train_set, transforms=transforms, sampler=sampler, **kwargs)


def test_loader_from_config(cfg, *, dataset_name=None, test_set=None, num_query=0, transforms=None, **kwargs):
    """fastreid's ``_test_loader_from_config`` with the query and gallery sets built by :func:`build_test_set`."""
    if test_set is None and dataset_name is not None:
        transforms = transforms if transforms is not None else data_build.build_transforms(cfg, is_train=False)
        test_set, num_query = build_test_set(cfg, dataset_name, transforms, **kwargs)
    return _fastreid_test_from_config(cfg, dataset_name=dataset_name, test_set=test_set, num_query=num_query,
                                      transforms=transforms, **kwargs)


# fastreid's @configurable keeps its own reference to the *_from_config functions: a call with a config
# goes through the checked ones here (looked up on fastreid's module, so that later wrappers apply too)
def build_reid_train_loader(*args, **kwargs):
    """Drop-in for fastreid's ``build_reid_train_loader``."""
    if args and isinstance(args[0], CfgNode):
        return _fastreid_train_loader(**data_build._train_loader_from_config(*args, **kwargs))
    return _fastreid_train_loader(*args, **kwargs)


def build_reid_test_loader(*args, **kwargs):
    """Drop-in for fastreid's ``build_reid_test_loader``."""
    if args and isinstance(args[0], CfgNode):
        return _fastreid_test_loader(**data_build._test_loader_from_config(*args, **kwargs))
    return _fastreid_test_loader(*args, **kwargs)
