"""A write into OUTPUT_DIR that fails because of the folder, said in one line.

A training run's files are written whole or not at all (:func:`mdpr_plugin.output_files.atomic_open`). A write that
fails because OUTPUT_DIR was removed, made read-only, is full, or the file is over the size this process may write
(``ulimit -f``) is an :class:`~mdpr_plugin.output_files.OutputWriteError` naming the folder, the file, what is kept and
the fix (``--resume``); what was written before stays as it was.
"""
import contextlib
import errno
import logging
import os
import resource
import shutil

from ..output_files import OutputWriteError

logger = logging.getLogger(__name__)
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT)


def remake_removed_folder(folder, writing, on_recreated=None):
    """OUTPUT_DIR ``folder``, removed during training, made again before ``writing`` (what is about to be written)
    goes into it: the run goes on, with a warning that the files it held are gone; ``on_recreated`` then restores
    the run's own files (lock, config.yaml, log.txt)."""
    logger.warning("OUTPUT_DIR %s was removed during training: recreating it for %s (the files it held are gone).",
                   folder, writing)
    os.makedirs(folder, exist_ok=True)
    if on_recreated:
        on_recreated()


def last_checkpoint_kept(folder):
    """What a failed write leaves of the run's checkpoints in ``folder``, for its message."""
    try:
        with open(os.path.join(folder, "last_checkpoint")) as f:
            last = f.read().strip()
    except OSError:
        last = ""
    return f"the last checkpoint written, {last}, is intact" if last else "no checkpoint was written before"


def _size_limit():
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def write_failure(folder, name, error, needed_bytes=None):
    """The :class:`OutputWriteError` for ``error``, met writing ``name`` into OUTPUT_DIR ``folder`` (``needed_bytes``:
    about the file's size), or None when it is none of the folder's faults."""
    folder = os.path.abspath(folder)
    code = getattr(error, "errno", None)
    if not os.path.isdir(folder):
        return OutputWriteError(
            f"OUTPUT_DIR {folder} was removed while the run wrote into it (found writing {name}): its checkpoints and "
            "log went with it. Start the run again, or put the folder back and continue with --resume.")
    size = f"about {needed_bytes / 2 ** 20:.0f} MiB" if needed_bytes else ""
    kept = last_checkpoint_kept(folder)
    if code in _READ_ONLY:
        return OutputWriteError(
            f"OUTPUT_DIR {folder} can no longer be written ({os.strerror(code)}, writing {name}): it was made "
            f"read-only after the run started; {kept}. Make it writable again (chmod u+w {folder}; chattr -i "
            "if it was made immutable), then continue with --resume.")
    if code in _FULL:
        return OutputWriteError(
            f"No space left in OUTPUT_DIR {folder} to save {name}: {'it needs ' + size + ' and ' if size else ''}"
            f"{shutil.disk_usage(folder).free / 2 ** 20:.0f} MiB are free; {kept}. Free space there (or move the "
            "folder), then continue with --resume.")
    if code == errno.EFBIG:
        limit = _size_limit()
        allowed = f"{limit / 2 ** 20:.1f} MiB" if limit is not None else "the largest file its file system holds"
        return OutputWriteError(
            f"{name} could not be saved into OUTPUT_DIR {folder}: this process may write files of at most {allowed} "
            f"(ulimit -f){', and it needs ' + size if size else ''}; {kept}. Raise the limit (ulimit -f "
            "unlimited) or free space, then continue with --resume.")
    return None


@contextlib.contextmanager
def writing_into(folder, name, needed_bytes=None):
    """Run a write of ``name`` into OUTPUT_DIR ``folder``: the folder's faults (:func:`write_failure`) become one
    line; a folder removed before it is found so."""
    if not os.path.isdir(folder):
        raise write_failure(folder, name, FileNotFoundError(errno.ENOENT, "removed"))
    try:
        yield
    except OSError as error:  # atomic_open's own OutputWriteError too: it keeps the cause's errno
        failure = write_failure(folder, name, error, needed_bytes)
        if failure is None:
            raise
        raise failure from None
