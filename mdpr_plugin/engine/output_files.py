"""Writing a run's files: atomically, beside what a shared folder may hold, and a failure said in one line.

Each file is written to ``<file>.tmp<pid>`` and renamed over the old one once complete. A file of that name is a
leftover of an ended process that had this one's id (live processes do not share one): it is replaced. Anything
else there (a folder, a link) is not the plugin's: it is left alone and another name taken.

A write into OUTPUT_DIR that fails because the folder was removed, made read-only, is full, or the file is over the
size this process may write (``ulimit -f``) is an :class:`OutputWriteError`, one line naming the folder, the file and
the fix; what was written before stays as it was.
"""
import contextlib
import errno
import itertools
import os
import re
import resource
import shutil

from ..errors import MDPRError

PARTIAL_NAME = re.compile(r"\.tmp\d+(-\d+)?$")  # the temporary files of atomic_open
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputWriteError(MDPRError, OSError):
    """A file could not be written into OUTPUT_DIR (removed, read-only, full); what was written before is intact."""


def _new_temporary(path):
    """``(name, descriptor)`` of a new file to write ``path`` through."""
    for attempt in itertools.count():
        name = f"{path}.tmp{os.getpid()}" + (f"-{attempt}" if attempt else "")
        try:
            return name, os.open(name, _NEW_FILE, 0o644)
        except FileExistsError:
            if os.path.isfile(name) and not os.path.islink(name):
                os.remove(name)  # an ended process's, which had this id: no live process writes it
                return name, os.open(name, _NEW_FILE, 0o644)


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a new temporary file next to ``path``; it replaces ``path`` only once fully written."""
    temporary, fd = _new_temporary(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)  # not renamed: a partial file


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
            f"{shutil.disk_usage(folder).free / 2 ** 20:.0f} MiB are free; {kept}. Free space there (or move the folder), then continue with --resume.")
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
    except OSError as error:
        failure = None if isinstance(error, MDPRError) else write_failure(folder, name, error, needed_bytes)
        if failure is None:
            raise
        raise failure from None
