"""A training run's OUTPUT_DIR: one run at a time, no leftovers, and config.yaml once the run's checks passed.

Two runs started into the same folder used to both run: one config.yaml, metrics.json with every
iteration twice, log.txt interleaved, model_final from whichever saved last. The main process of a
training run now holds ``OUTPUT_DIR/run.lock`` (an ``flock``, which the operating system releases when the
process ends, even by ``kill -9``); the file records who holds it, so that a second run can say which
process is using the folder, and a run that finds the record of a process that ended without releasing it
says it takes the folder over. (``flock`` works between processes of one machine; on a network file
system shared by several machines it may not.)
"""
import fcntl
import glob
import logging
import os
import re
import socket
import time

from ..errors import InputError, MDPRError

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
_held = {}  # absolute folder -> open file descriptor of its lock


class OutputDirInUseError(MDPRError, RuntimeError):
    """Another training run holds OUTPUT_DIR."""


def lock_output_dir(folder):
    """Create ``folder`` and hold its lock for this process's lifetime (or until :func:`release_output_dir`)."""
    folder = os.path.abspath(folder)
    if folder in _held:
        return
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise InputError(f"OUTPUT_DIR {folder} cannot be written ({error.strerror}); set OUTPUT_DIR to a folder "
                         "this user can write to.") from None
    holder = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputDirInUseError(
            f"OUTPUT_DIR {folder} is in use by another training run ({holder or 'a process that wrote no record'}). "
            "Wait for it to finish or stop it, or set OUTPUT_DIR to another folder.") from None
    if holder:
        logger.warning("OUTPUT_DIR %s: taking over from a run that ended without releasing it (%s).", folder, holder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    _held[folder] = fd


def release_output_dir(folder):
    """Release the lock of ``folder`` and clear its record (a run that ends normally leaves no record)."""
    fd = _held.pop(os.path.abspath(folder), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)


_PARTIAL = re.compile(r"\.tmp\d+$")  # what the checkpointer writes before renaming (atomic_open)


def remove_partial_checkpoints(folder):
    """Remove the temporary files of checkpoints whose writing was interrupted (a kill during a save leaves
    one, hundreds of MB); call it while holding the folder's lock. Returns the paths removed."""
    removed = [path for path in glob.glob(os.path.join(glob.escape(folder), "*.tmp*")) if _PARTIAL.search(path)]
    for path in removed:
        os.remove(path)
    if removed:
        logger.info("Removed %d partly written checkpoint file(s) of an interrupted run: %s", len(removed),
                    ", ".join(os.path.basename(path) for path in removed))
    return removed


def write_config(cfg):
    """``OUTPUT_DIR/config.yaml``, as fastreid's default_setup writes it, once the run's checks have passed."""
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())
    logging.getLogger("fastreid.engine.defaults").info("Full config saved to %s", os.path.abspath(path))
