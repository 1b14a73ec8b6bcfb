"""Reading torch files without running code from them.

``torch.load(weights_only=True)`` everywhere; the only non-tensor types allowed beyond torch's own are
the numpy scalars fastreid stores in its checkpoints (the best-model ``metric``). When a file is refused,
its pickles are read opcode by opcode (nothing is unpickled) to tell a file that imports Python objects,
which could run code, from a damaged one: torch's own message does not say which it is for every format.
"""
import pickle
import pickletools
import re
import warnings
import zipfile

import numpy as np
import torch

from .errors import MDPRError


class CheckpointError(MDPRError, RuntimeError):
    """A checkpoint file that cannot or must not be loaded."""


def _numpy_scalar_globals():
    # what pickling a numpy scalar (np.float64(0.5), np.int64(3), ...) refers to
    dtypes = [np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_]
    reconstruct = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    return [reconstruct, np.dtype] + [type(np.dtype(t)) for t in dtypes]


_SAFE_GLOBALS = _numpy_scalar_globals()
# a legacy (non-zip) file holds its magic number, protocol, system info, the object and the storage keys
_MAX_PICKLES_PER_FILE = 5
_STRING_OPCODES = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                   "BINUNICODE8"}
_MEMO_GETS, _MEMO_PUTS = {"GET", "BINGET", "LONG_BINGET"}, {"PUT", "BINPUT", "LONG_BINPUT"}
UNNAMED = "an object whose class could not be read"
_DOTTED_NAME = re.compile(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*")  # module.name, as a real pickle names a global


def _allowed_global_names():
    """``module.name`` of every global torch's weights-only unpickler accepts here, or None if unknown."""
    from torch import _weights_only_unpickler as unpickler

    try:
        names = set(unpickler._get_allowed_globals()) | set(unpickler._get_user_allowed_globals())
    except AttributeError:  # another torch: judge by module instead (see _is_allowed)
        return None
    for value in _SAFE_GLOBALS:
        names.add(f"{value.__module__}.{value.__name__}")
    return names


def _is_allowed(name, allowed):
    if allowed is not None:
        return name in allowed
    return name.split(".", 1)[0] in ("torch", "collections")


def _globals_in_pickle(stream):
    """``module.name`` of each global one pickle imports, read from its opcodes (STACK_GLOBAL's operands
    are followed through the memo); ``UNNAMED`` for one whose name cannot be told."""
    found, pushed, memo = [], [], {}
    for opcode, argument, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            found.append(argument.replace(" ", "."))
        elif name == "STACK_GLOBAL":
            module, attribute = (pushed[-2:] if len(pushed) >= 2 else [None, None])
            found.append(f"{module}.{attribute}" if isinstance(module, str) and isinstance(attribute, str) else UNNAMED)
            pushed.append(None)
        elif name in _STRING_OPCODES:
            pushed.append(argument.decode("latin-1") if isinstance(argument, bytes) else argument)
        elif name in _MEMO_GETS:
            pushed.append(memo.get(argument))
        elif name in _MEMO_PUTS:
            memo[argument] = pushed[-1] if pushed else None
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif opcode.stack_after:
            pushed.append(None)  # something other than a string on the stack
    return found


def pickled_objects(path):
    """The globals (``module.name``) that torch's weights-only loading refuses in the file at ``path``:
    its ``data.pkl`` for a zip checkpoint, its consecutive pickles otherwise. Read without unpickling;
    a damaged file gives what could be read before the damage."""
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if not is_zip:
            streams = [open(path, "rb")]
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                streams = [archive.open(members[0])] if members else []
        else:  # a damaged archive: its bytes are no pickle
            return []
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []
    allowed = _allowed_global_names()
    found = []
    for stream in streams:
        with stream:
            for _ in range(_MAX_PICKLES_PER_FILE):
                try:
                    names = _globals_in_pickle(stream)
                except Exception:  # damaged, or not a pickle: only complete pickles count
                    break
                found += [n for n in names if not _is_allowed(n, allowed) and n not in found
                          and (n == UNNAMED or _DOTTED_NAME.fullmatch(n))]
                if not stream.peek(1):  # the last pickle of the file
                    break
    return found


def _refusal(path, offenders):
    listed = ", ".join(offenders[:3]) + (f" and {len(offenders) - 3} more" if len(offenders) > 3 else "")
    return CheckpointError(
        f"Refusing to load {path}: it holds a pickled Python object ({listed}), which could run arbitrary "
        "code when unpickled; only tensors, containers and numbers are accepted. If you trust the file, "
        "re-save its tensors alone: torch.save({'model': model.state_dict()}, path).")


def _reason(error):
    """One line saying how torch failed: its type where the message alone says little (``KeyError: 101``)."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def safe_load(path):
    """``torch.load(path)`` on the CPU, refusing pickled objects; errors name the file."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS), warnings.catch_warnings():
            # a plain pickle of protocol 4+: torch warns before refusing it; the refusal says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        # a damaged file fails wherever its bytes lead torch's reader: cut or altered files of the legacy
        # (non-zip) format raise IndexError, KeyError, AssertionError, AttributeError, struct.error, EOFError or
        # UnpicklingError, a text file KeyError; none of them is a bug of the caller
        reason = error
    offenders = pickled_objects(path)
    if offenders:
        raise _refusal(path, offenders) from None
    detail = "" if isinstance(reason, pickle.UnpicklingError) else f" ({_reason(reason)})"
    raise CheckpointError(f"{path} could not be read as a torch checkpoint: it is truncated, corrupt or of another "
                          f"format; re-save or re-download it{detail}.") from None
