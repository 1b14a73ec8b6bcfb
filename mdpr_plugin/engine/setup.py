"""A run's set-up, fastreid's ``default_setup`` made safe for OUTPUT_DIR: the config built and checked, the folder's
lock, logging, the seed."""
import logging

import torch
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng

from ..config import build_config
from ..data.samplers import seed_all
from .distributed import check_batch_sizes, setup_worker_logging
from .output_dir import eval_log_folder, lock_output_dir
from .run_log import log_setup

logger = logging.getLogger(__name__)


def setup_config(args):
    """fastreid defaults + the MDPR keys + the YAML file + ``KEY VALUE`` overrides, then the setup of
    fastreid's ``default_setup`` (logging, the seed) on rank 0; other processes write no files.

    A training run first takes OUTPUT_DIR's lock. Unlike ``default_setup``, nothing is written into OUTPUT_DIR
    here: log.txt, config.yaml and the removal of the files an interrupted run left half written wait until the
    run's checks have passed (:class:`mdpr_plugin.engine.output_dir.TrainingOutputDir`).
    """
    cfg = build_config(args.config_file, args.opts)
    cfg.freeze()
    rank, world_size = comm.get_rank(), comm.get_world_size()
    check_batch_sizes(cfg, world_size)
    if rank == 0:
        if args.eval_only:
            log_setup(cfg, args, eval_log_folder(cfg.OUTPUT_DIR))
        else:
            lock_output_dir(cfg.OUTPUT_DIR)
            log_setup(cfg, args)  # log.txt once the checks have passed
    else:
        setup_worker_logging(cfg, rank)
    if not args.eval_only:
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK  # as default_setup does
    if world_size > 1:
        logger.info("%d processes (%s): SOLVER.IMS_PER_BATCH %d = %d images per process.", world_size,
                    torch.distributed.get_backend(), cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.IMS_PER_BATCH // world_size)
    # a set SEED makes the initialisation reproducible (+ rank, so that processes differ where they should;
    # DDP copies rank 0's initial weights to all); without one, fastreid's random seed, as default_setup
    if cfg.SEED >= 0:
        seed_all(cfg.SEED + rank, cuda=True)
    else:
        seed_all_rng()
    return cfg
