"""A training run's OUTPUT_DIR: one run at a time, no leftovers, no files written through links, and config.yaml
once the run's checks passed.

Two runs started into the same folder used to both run: one config.yaml, metrics.json with every
iteration twice, log.txt interleaved, model_final from whichever saved last. The main process of a
training run now holds ``OUTPUT_DIR/run.lock``: a POSIX record lock (``lockf``), which belongs to that process
alone (DataLoader workers it forks do not hold it) and which the operating system releases when the process
ends, even by ``kill -9``. The file records who holds it, so that a second run can say which process is using
the folder, and a run that finds the record of a process that ended without releasing it says it takes the
folder over.

A shared folder is not trusted: the files a run writes there by name (``run.lock``, ``config.yaml``,
``log.txt``, ``metrics.json``, ``last_checkpoint``) must not be symbolic links, which would make the run write
wherever they point.
"""
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import time
from dataclasses import dataclass

from fastreid.utils import comm

from ..errors import InputError, MDPRError
from ..output_files import PARTIAL_FILE, atomic_open
from .write_faults import writing_into
from .run_log import reopen_log_file, start_log_file

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
WRITTEN_BY_NAME = (LOCK_NAME, "config.yaml", "log.txt", "metrics.json", "last_checkpoint")
_held = {}  # absolute folder -> _Lock (its file is never opened twice: closing any descriptor of the file would
#             release a POSIX lock)


@dataclass
class _Lock:
    fd: int
    previous_record: bytes  # what the file held before this run wrote its own
    created_file: bool
    created_folder: bool


class OutputDirInUseError(MDPRError, RuntimeError):
    """Another training run holds OUTPUT_DIR."""


def check_output_dir(folder):
    """Refuse an empty OUTPUT_DIR and run files in it that are symbolic links."""
    if not folder:
        raise InputError("OUTPUT_DIR is empty: a training run writes its checkpoints, log and config.yaml there. Set "
                         "OUTPUT_DIR to a folder, e.g. OUTPUT_DIR logs/my_run.")
    links = [name for name in WRITTEN_BY_NAME if os.path.islink(os.path.join(folder, name))]
    if links:
        targets = ", ".join(f"{name} -> {os.readlink(os.path.join(folder, name))}" for name in links)
        raise InputError(f"OUTPUT_DIR {os.path.abspath(folder)} holds symbolic links where the run writes its files "
                         f"({targets}): the run would write through them. Remove the links, or use another OUTPUT_DIR.")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _refusal(folder, holder):
    match = re.match(r"pid (\d+) on (\S+),", holder)
    if match and match.group(2) == socket.gethostname() and not _alive(int(match.group(1))):
        return (f"OUTPUT_DIR {folder} is locked, but the run its record names ({holder}) has ended: a process it "
                f"started still holds the lock (see `fuser {os.path.join(folder, LOCK_NAME)}`). Stop that process, "
                "or set OUTPUT_DIR to another folder.")
    return (f"OUTPUT_DIR {folder} is in use by another training run ({holder or 'a process that wrote no record'}). "
            "Wait for it to finish or stop it, or set OUTPUT_DIR to another folder.")


def lock_output_dir(folder):
    """Create ``folder`` and hold its lock for this process's lifetime (or until :func:`release_output_dir`)."""
    check_output_dir(folder)
    folder = os.path.abspath(folder)
    if folder in _held:
        return
    created_folder = not os.path.isdir(folder)
    created_file = not os.path.lexists(os.path.join(folder, LOCK_NAME))
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise InputError(f"OUTPUT_DIR {folder} cannot be written ({error.strerror}); set OUTPUT_DIR to a folder "
                         "this user can write to.") from None
    previous = os.read(fd, 4096)
    holder = previous.decode(errors="replace").strip()
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        os.close(fd)
        raise OutputDirInUseError(_refusal(folder, holder)) from None
    if holder:
        logger.warning("OUTPUT_DIR %s: taking over from a run that ended without releasing it (%s).", folder, holder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    _held[folder] = _Lock(fd, previous, created_file, created_folder)


def release_output_dir(folder):
    """Release the lock of ``folder`` and clear its record (a run that ends normally leaves no record)."""
    lock = _held.pop(os.path.abspath(folder), None)
    if lock is not None:
        os.ftruncate(lock.fd, 0)
        os.close(lock.fd)


def eval_log_folder(folder):
    """Where an evaluation's log.txt goes: OUTPUT_DIR ``folder``, or None (the console only) when it cannot be
    written (an evaluation writes nothing else there) or holds a link named log.txt."""
    if not folder:
        return folder  # fastreid's setup_logger: log.txt in the working folder
    try:
        os.makedirs(folder, exist_ok=True)
        check_output_dir(folder)
        writable = os.access(folder, os.W_OK)
    except (OSError, MDPRError) as error:
        writable, reason = False, str(error)
    else:
        reason = "it cannot be written"
    if writable:
        return folder
    logger.warning("Not writing log.txt into OUTPUT_DIR %s (%s): logging to the console only.", folder, reason)
    return None


def relock_output_dir(folder):
    """Take the lock again after ``folder`` was removed during training (the lock held was on the removed file)."""
    old = _held.pop(os.path.abspath(folder), None)
    lock_output_dir(folder)
    if old is not None:
        os.close(old.fd)  # a descriptor of the removed file: closing it releases nothing of the new one


def abandon_output_dir(folder):
    """Release the lock of a run refused before training and leave ``folder`` as it found it: the lock file's
    record put back (or the file, or the folder, removed if the run created them)."""
    folder = os.path.abspath(folder)
    lock = _held.pop(folder, None)
    if lock is None:
        return
    if lock.created_file:
        with contextlib.suppress(OSError):  # (not if the folder was made read-only or removed since)
            os.unlink(os.path.join(folder, LOCK_NAME))  # still holding the lock: no other run took the file meanwhile
    else:
        os.ftruncate(lock.fd, 0)
        os.pwrite(lock.fd, lock.previous_record, 0)
    os.close(lock.fd)
    if lock.created_folder:
        with contextlib.suppress(OSError):  # only if empty
            os.rmdir(folder)


def _partial_files(folder):
    """The temporary files in ``folder`` of the run's own files (atomic_open) whose writing was interrupted: regular
    files only (a folder or link named so is not the run's), of the names the run writes."""
    own = set(WRITTEN_BY_NAME) | {name for held_in, name in _after_checks if held_in == os.path.abspath(folder)}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        match = PARTIAL_FILE.search(name)
        target = name[:match.start()] if match else ""
        if (target in own or target.endswith(".pth")) and os.path.isfile(path) and not os.path.islink(path):
            yield path


def remove_partial_checkpoints(folder):
    """Remove the temporary files of checkpoints (and the run's other files) whose writing was interrupted (a kill
    during a save leaves one, hundreds of MB); call it while holding the folder's lock. Returns the paths removed."""
    removed = list(_partial_files(folder))
    for path in removed:
        os.remove(path)
    if removed:
        logger.info("Removed %d partly written checkpoint file(s) of an interrupted run: %s", len(removed),
                    ", ".join(os.path.basename(path) for path in removed))
    return removed


def write_after_checks(folder, name, text):
    """Have :func:`write_config` write ``text`` into ``folder/name`` beside config.yaml, when (and each time) it writes
    config.yaml into ``folder``: a file a data set makes for OUTPUT_DIR (ReidFolder's split) is built with the data,
    before the run's checks have passed, and must not be written before them."""
    _after_checks[os.path.abspath(folder), name] = text


_after_checks = {}  # (absolute folder, file name) -> text


def _replace_file(folder, name, text):
    """``folder/name`` holding ``text``, through a temporary file renamed over it: neither a kill nor a link planted
    under that name can make it write anything else."""
    with writing_into(folder, name), atomic_open(os.path.join(folder, name), "w") as f:
        f.write(text)


def write_config(cfg):
    """``OUTPUT_DIR/config.yaml``, as fastreid's default_setup writes it, once the run's checks have passed, and the
    files held for OUTPUT_DIR by :func:`write_after_checks`."""
    folder = os.path.abspath(cfg.OUTPUT_DIR)
    _replace_file(folder, "config.yaml", cfg.dump())
    logging.getLogger("fastreid.engine.defaults").info("Full config saved to %s", os.path.join(folder, "config.yaml"))
    for (held_in, name), text in sorted(_after_checks.items()):
        if held_in == folder:
            _replace_file(folder, name, text)
            logger.info("Saved %s", os.path.join(folder, name))


def recreate_output_dir(cfg):
    """After OUTPUT_DIR was removed during training and made again for a checkpoint: its lock, config.yaml and
    log.txt (from then on) made again too."""
    relock_output_dir(cfg.OUTPUT_DIR)
    write_config(cfg)
    reopen_log_file(cfg.OUTPUT_DIR)


def check_still_writable(folder):
    """Refuse, before anything is written, an OUTPUT_DIR removed or made read-only since the run took its lock."""
    with writing_into(folder, "log.txt"):
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), folder)


class TrainingOutputDir:
    """The OUTPUT_DIR of a training run, locked by ``setup_config``, around the run's checks and training::

        with TrainingOutputDir(cfg) as output_dir:
            trainer = Trainer(cfg)                      # the checks: data sets, weights, ...
            trainer.resume_or_load(resume=args.resume)
            output_dir.start(trainer.cfg)               # every check passed
            return trainer.train()

    Nothing is written into the folder before :meth:`start`; a run that leaves the block before it (refused, or
    interrupted) leaves OUTPUT_DIR as it found it. A run that ends normally releases the folder; one that fails
    in training keeps its record in the lock file, so that the next run says it takes the folder over. Only the
    main process writes.
    """

    def __init__(self, cfg):
        self.folder = cfg.OUTPUT_DIR
        self.started = False

    def __enter__(self):
        return self

    def start(self, cfg):
        """The run's checks passed: log.txt (the lines logged so far, then the rest), config.yaml (``cfg``, the
        trainer's: MODEL.HEADS.NUM_CLASSES from the training set, as fastreid saves it), and the partly written
        checkpoints of an interrupted run removed."""
        if comm.is_main_process():
            check_still_writable(self.folder)  # refused: the folder left as it was found, as by any check
        self.started = True
        if comm.is_main_process():
            start_log_file(self.folder)
            remove_partial_checkpoints(self.folder)
            write_config(cfg)

    def __exit__(self, kind, error, traceback):
        if not self.started:
            abandon_output_dir(self.folder)
        elif kind is None:
            release_output_dir(self.folder)
        return False
