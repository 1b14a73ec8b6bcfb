"""The plugin's trainer: fastreid's ``DefaultTrainer`` through its own extension points."""
from fastreid.config import get_cfg
from fastreid.engine import DefaultTrainer, default_setup

from ..compat import resolve_device
from ..config import add_mdpr_config


def setup_config(args):
    """fastreid defaults + the MDPR keys + the YAML file + ``KEY VALUE`` overrides, then fastreid's setup."""
    cfg = get_cfg()
    add_mdpr_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` whose loaders deliver batches on ``MODEL.DEVICE`` (or the CPU fallback)."""

    @classmethod
    def build_train_loader(cls, cfg):
        loader = super().build_train_loader(cfg)
        loader.device = resolve_device(cfg.MODEL.DEVICE)
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader, num_query = super().build_test_loader(cfg, dataset_name)
        loader.device = resolve_device(cfg.MODEL.DEVICE)
        # fastreid hard-codes 4 workers for test loaders (data/build.py:130); honour the config
        loader.num_workers = cfg.DATALOADER.NUM_WORKERS
        return loader, num_query
