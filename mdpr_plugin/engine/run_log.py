"""A run's log: what fastreid's ``default_setup`` logs, a training run's ``OUTPUT_DIR/log.txt`` begun only once the
run's checks have passed, and plugin errors kept out of fastreid's tracebacks.

A training run refused before it trains (a bad data set, weights that do not fit, ...) must leave OUTPUT_DIR as it
was, log.txt included: the set-up's records are held in memory until :func:`start_log_file`.
"""
import contextlib
import logging
import os
import sys

from fastreid.utils import comm
from fastreid.utils.collect_env import collect_env_info
from fastreid.utils.logger import setup_logger

from ..authors_keys import warn_authors_keys
from ..config import config_file
from ..errors import MDPRError
from .write_faults import writing_into


class _HeldRecords(logging.Handler):
    """The records of a training run's set-up, kept for log.txt until the run's checks have passed."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def log_setup(cfg, args, folder=None):
    """What fastreid's ``default_setup`` logs, on the console and into ``folder/log.txt`` (none without a
    ``folder``); a training run's records are also held for :func:`start_log_file`. The plugin's lines go there
    too (mdpr_plugin/logs.py)."""
    fastreid_logger = setup_logger(folder, distributed_rank=0)
    if not args.eval_only:
        fastreid_logger.addHandler(_HeldRecords())
    fastreid_logger.info("Rank of current process: 0. World size: %d", comm.get_world_size())
    fastreid_logger.info("Environment info:\n%s", collect_env_info())
    fastreid_logger.info("Command line arguments: %s", args)
    path = config_file(args.config_file)
    with open(path) as f:
        fastreid_logger.info("Contents of args.config_file=%s (%s):\n%s", args.config_file, path, f.read())
    fastreid_logger.info("Running with full config:\n%s", cfg)
    warn_authors_keys(cfg)
    if cfg.IMPORTS:
        fastreid_logger.info("Imported the modules IMPORTS names: %s", ", ".join(cfg.IMPORTS))


class _LogFile(logging.StreamHandler):
    """OUTPUT_DIR/log.txt, reopened if the folder is made again during training. A line it cannot write (the disk
    full, a file-size limit) ends it with a warning on the console, not a traceback per line; the write that stops
    the run (a checkpoint) says why in one line."""

    def reopen(self, path):
        old = self.setStream(open(path, "a"))
        if old is not None:
            old.close()

    def handleError(self, record):
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            return super().handleError(record)
        logging.getLogger("fastreid").removeHandler(self)
        logging.getLogger(__name__).warning("log.txt cannot be written any more (%s): the rest of the log goes to the "
                                            "console only.", error.strerror or error)


def start_log_file(folder):
    """``folder/log.txt`` of a training run whose checks passed, as fastreid's ``setup_logger`` writes it: the
    lines logged so far, then the rest of the run's."""
    fastreid_logger = logging.getLogger("fastreid")
    with writing_into(folder, "log.txt"):
        handler = _LogFile(open(os.path.join(folder, "log.txt"), "a"))
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                                           datefmt="%m/%d %H:%M:%S"))
    for held in [h for h in fastreid_logger.handlers if isinstance(h, _HeldRecords)]:
        fastreid_logger.removeHandler(held)
        for record in held.records:
            handler.handle(record)
    fastreid_logger.addHandler(handler)


def reopen_log_file(folder):
    """Go on writing the run's log.txt in ``folder``, made again (the file open was in the removed folder)."""
    for handler in logging.getLogger("fastreid").handlers:
        if isinstance(handler, _LogFile):
            handler.reopen(os.path.join(folder, "log.txt"))


class _PluginErrorRecords(logging.Filter):
    """Drops the records that log a plugin error with its traceback."""

    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], MDPRError))


@contextlib.contextmanager
def plugin_errors_not_logged_by_fastreid():
    """fastreid logs whatever ends training with its traceback (engine/train_loop.py:149); a plugin error (a NaN loss,
    a run that does not learn) already says what happened and the fix, and is reported in one line by whoever
    catches it (train_net.py: ``ERROR: ...``)."""
    fastreid_loop = logging.getLogger("fastreid.engine.train_loop")
    records = _PluginErrorRecords()
    fastreid_loop.addFilter(records)
    try:
        yield
    finally:
        fastreid_loop.removeFilter(records)
