"""Output files written whole or not at all, for the tools and the training runs alike.

Each file goes to a temporary file beside it (``<path>.tmp<pid>``, in the same folder: the same file system), is
flushed to the disk, and only then renamed over the old one. A write that fails (a full disk, a quota, a file-size
limit, a disk error) removes the temporary file and leaves the previous file byte for byte, and the error names the
file and the fix in one line (:class:`OutputWriteError`), instead of a traceback over a cut file.

Files that belong together (an index and its .json, a folder of pictures and their summary) are staged in one
:func:`staged_outputs` and renamed into place together once all of them are written: a failure in any leaves every
old one.

The temporary file is created exclusively, so a file or link planted under its name is never written through; the
rename replaces the entry at ``path`` itself, so a link there is replaced, not written through either.
"""
import contextlib
import errno
import io
import os
import re
import shutil
import stat
import tempfile

from .errors import MDPRError
from .text_escapes import ESCAPED

PARTIAL_FILE = re.compile(r"\.tmp\d+$")  # the temporary files of :func:`atomic_open`, which a killed process leaves

# what to do about a failed write, by its cause; {elsewhere} names where else to write
_FIXES = {
    errno.ENOSPC: "free space there, or {elsewhere} on another disk",
    errno.EDQUOT: "free space within your disk quota, or {elsewhere} on another disk",
    errno.EFBIG: "the file system or a file-size limit (ulimit -f) does not allow a file this large: raise the limit, "
                 "or {elsewhere} on another file system",
    errno.EIO: "the disk reported an input/output error: check it (dmesg), or {elsewhere} on another disk",
}
_OTHER_FIX = "check that folder, or {elsewhere} elsewhere"


class OutputWriteError(MDPRError, OSError):
    """An output file could not be written; the files that were there before are unchanged. ``errno`` is the
    cause's."""


def _write_error(error, path, option, kept):
    cause = error.strerror or str(error) or type(error).__name__
    elsewhere = f"give {option}" if option else "write"
    fix = _FIXES.get(error.errno, _OTHER_FIX).format(elsewhere=elsewhere)
    written = OutputWriteError(f"could not write {path}: {cause} ({kept}); {fix}")
    written.errno = error.errno
    return written


def _create_exclusively(path):
    """Create an empty file at ``<path>.tmp<pid>`` (or a free ``<path>.tmp<pid><n>``); returns (name, descriptor)."""
    base = f"{path}.tmp{os.getpid()}"
    for n in range(100):
        name = base + (str(n) if n else "")
        try:
            return name, os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "too many temporary files left beside it", base)


class _WrittenThroughPython(io.BufferedWriter):
    """A file that does not hand out its descriptor. Given one, a library writes with its own write() calls, and some
    (Pillow's image encoders) take a short write, which is what a full disk or a file-size limit gives first, for a
    complete one: the file would be cut without an error. Through Python's file object a short write is retried,
    and the error it ends with raised."""

    def fileno(self):
        raise io.UnsupportedOperation("an output file is written through its Python file object only")


def _fsync_folder(folder):
    """Make a rename in ``folder`` durable (file systems that cannot sync a folder are left as they are)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class StagedOutputs:
    """The files of one :func:`staged_outputs`: written to temporary files, renamed into place by :meth:`commit`."""

    def __init__(self, option=None):
        self.option = option      # the command-line option the paths come from, for the fix ("--output")
        self._staged = {}         # final path -> temporary path, in the order written
        self._folders = []        # temporary folders to remove at the end
        self._existed = {}        # final path -> whether a file was there before

    @contextlib.contextmanager
    def open(self, path, mode="wb", encoding=None, newline=None):
        """A file object writing ``path``'s temporary file (text modes: UTF-8 unless ``encoding``, what it cannot
        encode escaped, see :mod:`.text_escapes`); flushed and synced to the disk when the block ends."""
        path = os.fspath(path)
        with self._failing_as(path):
            temporary, fd = _create_exclusively(path)
            self._stage(path, temporary)
            f = _WrittenThroughPython(io.FileIO(fd, "w"))
            if "b" not in mode:
                f = io.TextIOWrapper(f, encoding=encoding or "utf-8", errors=ESCAPED, newline=newline)
            with f:
                yield f
                f.flush()
                os.fsync(fd)

    @contextlib.contextmanager
    def writing_in_folder(self, path, companions=()):
        """A path of ``path``'s name in a temporary folder beside it, for a library that writes ``path`` by name
        and files that it names after it (``companions``: their suffixes, e.g. ``.data``); each file written is
        synced when the block ends and moved into place at the commit."""
        path = os.fspath(path)
        with self._failing_as(path):
            folder = tempfile.mkdtemp(prefix=f"{os.path.basename(path)}.", suffix=".tmp",
                                      dir=os.path.dirname(os.path.abspath(path)))
            self._folders.append(folder)
            written = os.path.join(folder, os.path.basename(path))
            yield written
            for suffix in companions:  # first, so that the file naming them is replaced last
                if os.path.exists(written + suffix):
                    self._stage(path + suffix, written + suffix)
                    self._sync(written + suffix)
            self._stage(path, written)
            self._sync(written)

    def commit(self):
        """Rename every staged file into place (each keeping the mode of the file it replaces)."""
        for replaced, (path, temporary) in enumerate(list(self._staged.items())):
            with self._failing_as(path, replaced):
                with contextlib.suppress(OSError):
                    previous = os.lstat(path)
                    if stat.S_ISREG(previous.st_mode):
                        os.chmod(temporary, stat.S_IMODE(previous.st_mode))
                os.replace(temporary, path)
            del self._staged[path]
            _fsync_folder(os.path.dirname(os.path.abspath(path)))
        self.discard()

    def discard(self):
        """Remove the temporary files and folders not renamed into place."""
        for temporary in self._staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        self._staged.clear()
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)
        self._folders.clear()

    def _stage(self, path, temporary):
        if path in self._staged:
            os.remove(self._staged[path])  # written twice: the last one counts
        self._staged[path] = temporary
        self._existed.setdefault(path, os.path.lexists(path))

    @staticmethod
    def _sync(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _kept(self, path, replaced):
        """What a failure while writing ``path`` leaves, ``replaced`` files having been renamed into place."""
        if replaced:
            return f"{replaced} of the {replaced + len(self._staged)} files were replaced before it"
        if len(self._staged) > 1:
            return "no file was replaced: the previous ones are unchanged"
        if self._existed.get(path, os.path.lexists(path)):
            return "the previous file is unchanged"
        return "no file was left there"

    @contextlib.contextmanager
    def _failing_as(self, path, replaced=0):
        try:
            yield
        except OutputWriteError:
            raise
        except OSError as error:
            raise _write_error(error, path, self.option, self._kept(path, replaced)) from None


@contextlib.contextmanager
def staged_outputs(option=None):
    """Stage files (``outputs.open(path)``, ``outputs.writing_in_folder(path)``) and rename them all into place when the
    block ends without an error; on any error every temporary file is removed and the old files stay. ``option``:
    the command-line option the paths come from, named in the fix of a failed write."""
    outputs = StagedOutputs(option)
    try:
        yield outputs
        outputs.commit()
    finally:
        outputs.discard()


@contextlib.contextmanager
def atomic_open(path, mode="wb", option=None, encoding=None, newline=None):
    """A file object for ``path`` that replaces it only once fully written (one file of :func:`staged_outputs`)."""
    with staged_outputs(option) as outputs, outputs.open(path, mode, encoding, newline) as f:
        yield f
