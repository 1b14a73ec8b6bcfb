"""The plugin's trainer: fastreid's ``DefaultTrainer`` through its own extension points."""
import logging
from collections import OrderedDict

from fastreid.config import get_cfg
from fastreid.engine import DefaultTrainer, default_setup
from fastreid.evaluation import print_csv_format
from fastreid.utils import comm
from fastreid.utils.logger import setup_logger

from ..compat import resolve_device
from ..config import add_mdpr_config, merge_config
from ..evaluation import ReidEvaluator, inference_on_dataset

logger = logging.getLogger(__name__)


def setup_config(args):
    """fastreid defaults + the MDPR keys + the YAML file + ``KEY VALUE`` overrides, then fastreid's setup."""
    cfg = get_cfg()
    add_mdpr_config(cfg)
    merge_config(cfg, args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup configures fastreid's logger only; the plugin's progress lines need their own
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mdpr_plugin")
    return cfg


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` whose loaders deliver batches on ``MODEL.DEVICE`` (or the CPU fallback) and
    whose evaluation is the plugin's (bounded memory, CPU re-ranking, a flip test that normalises once)."""

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

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        return data_loader, ReidEvaluator(cfg, num_query, output_dir)

    @classmethod
    def test(cls, cfg, model):
        """Evaluate on every ``DATASETS.TESTS`` set; same results layout and printout as fastreid's."""
        results = OrderedDict()
        for dataset_name in cfg.DATASETS.TESTS:
            logger.info("Prepare testing set")
            data_loader, evaluator = cls.build_evaluator(cfg, dataset_name)
            results[dataset_name] = inference_on_dataset(model, data_loader, evaluator,
                                                         flip_test=cfg.TEST.FLIP.ENABLED)
            if comm.is_main_process():
                logger.info("Evaluation results for {} in csv format:".format(dataset_name))
                results[dataset_name]["dataset"] = dataset_name
                print_csv_format(results[dataset_name])
        return next(iter(results.values())) if len(results) == 1 else results
