"""The machine's resources a run needs, memory and open files, and what it says when they run out.

What a config implies is checked before anything is built: the memory of one batch of images at its input sizes
(:func:`check_batch_memory`) and of the model's weights (:func:`check_model_memory`). What still runs out during
training or evaluation (torch's MemoryError, "DefaultCPUAllocator: can't allocate memory", oneDNN's "could not
create a primitive", CUDA's out of memory, a loader worker out of open files or killed) is reported by
:func:`resource_failures_explained` in one line saying what to lower, instead of a traceback.
"""
import contextlib
import errno
import re
import resource

from .errors import MDPRError

GIB = 2 ** 30
# the texts torch, oneDNN and the allocators fail with when an allocation is refused
_ALLOCATION_FAILURES = ("can't allocate memory", "could not create a primitive", "out of memory",
                        "Cannot allocate memory", "std::bad_alloc")


class ResourceError(MDPRError, RuntimeError):
    """Memory or open files ran out, or would: the message says how much, and what to lower."""


# ------------------------------------------------------------------------------------------ memory
def _meminfo_available():
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _address_space_left():
    """What RLIMIT_AS (ulimit -v) leaves this process, or None without a limit."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return max(limit - used, 0)


def _cgroup_left():
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_memory(device="cpu"):
    """Bytes this process can still allocate on ``device``: the host's available memory, less where a memory limit
    (ulimit -v, a cgroup) leaves less; a GPU's free memory. None when unknown."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    known = [left for left in (_meminfo_available(), _address_space_left(), _cgroup_left()) if left is not None]
    return min(known) if known else None


def gib(size):
    return f"{size / GIB:.1f} GiB"


def check_batch_memory(key, batch_key, images, size):
    """Refuse input sizes whose batch of ``images`` cannot be held in the host's memory. A lower bound: the decoded
    image (uint8), its float32 tensor and the batch the loader collates from those (the model's activations, many
    times more, come on top)."""
    height, width = size
    needed = images * height * width * 3 * (1 + 4 + 4)
    available = available_memory()
    if available is not None and needed > available:
        raise ResourceError(
            f"{key} {list(size)} cannot be loaded: a batch of {images} images ({batch_key}) that size needs at least "
            f"{gib(needed)} of memory before the model runs, and {gib(available)} are available. Lower {key} (person "
            f"crops are a few hundred pixels high) or {batch_key}.")


def _weight_bytes(cfg):
    """Bytes of the weights (parameters and buffers) of the model ``cfg`` builds, counted on torch's meta device,
    where nothing is allocated; None when the model cannot be built there (a user's code may need real tensors)."""
    import logging

    import torch
    from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

    counted = cfg.clone()
    counted.defrost()
    counted.MODEL.BACKBONE.PRETRAIN = False  # no weights read or downloaded
    logging.disable(logging.WARNING)  # what building logs is logged once, by the real build
    try:
        with torch.device("meta"):
            model = META_ARCH_REGISTRY.get(counted.MODEL.META_ARCHITECTURE)(counted)
    except Exception:  # noqa: BLE001  the real build reports its own errors
        return None
    finally:
        logging.disable(logging.NOTSET)
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def check_model_memory(cfg):
    """Refuse a model whose weights alone do not fit in the memory left on ``cfg.MODEL.DEVICE``, before it is built
    (training needs about four times as much: gradients and the optimizer's state)."""
    needed = _weight_bytes(cfg)
    available = available_memory(cfg.MODEL.DEVICE) if needed else None
    if available is None or needed <= available:
        return
    if cfg.MODEL.META_ARCHITECTURE == "MDPR":
        sizes = {"MODEL.BACKBONE.EMBEDDING_DIM": cfg.MODEL.BACKBONE.EMBEDDING_DIM, "ATTN_NUM": cfg.ATTN_NUM,
                 "PART_NUM": cfg.PART_NUM}
    else:
        sizes = {"MODEL.BACKBONE.FEAT_DIM": cfg.MODEL.BACKBONE.FEAT_DIM,
                 "MODEL.HEADS.EMBEDDING_DIM": cfg.MODEL.HEADS.EMBEDDING_DIM}
    values = ", ".join(f"{key} {value}" for key, value in sizes.items())
    raise ResourceError(
        f"The model of this config ({values}, MODEL.BACKBONE.DEPTH {cfg.MODEL.BACKBONE.DEPTH}) has {gib(needed)} of "
        f"weights, and {gib(available)} are available on {cfg.MODEL.DEVICE} (training needs about four times the "
        f"weights). Lower {' or '.join(sizes)}, or choose a smaller backbone.")


# ------------------------------------------------------------------------------------------ failures
def is_allocation_failure(error):
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and
                                              any(text in str(error) for text in _ALLOCATION_FAILURES))


def _first_line(error):
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", text)  # c10's location prefix
    return text[:200]


def out_of_open_files(num_workers):
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return ResourceError(
        f"A data loader ran out of open files: this process may open {limit} (ulimit -n), and each of the "
        f"DATALOADER.NUM_WORKERS {num_workers} loader processes hands its batches over through open files. Raise "
        "the limit (e.g. ulimit -n 4096) or lower DATALOADER.NUM_WORKERS (0 loads in the main process).")


def loader_worker_failure(error, exit_codes, num_workers):
    """The one-line error for a loader whose worker process failed (``exit_codes``: those of its workers that
    ended), or None when ``error`` is not one."""
    text = str(error)
    if (getattr(error, "errno", None) == errno.EMFILE or "Too many open files" in text or errno.EMFILE in exit_codes
            or f"exit code {errno.EMFILE}." in text):
        return out_of_open_files(num_workers)
    ended = [code for code in exit_codes if code]
    if not ended and "DataLoader worker" not in text:
        return None
    how = _first_line(error) if "DataLoader worker" in text else f"exit status {ended[0]}"
    memory = ", or it ran out of memory" if errno.ENOMEM in ended or any(code < 0 for code in ended) else ""
    return ResourceError(
        f"A data loader worker process ended unexpectedly ({how}){memory}. Lower DATALOADER.NUM_WORKERS (now "
        f"{num_workers}) or the batch size; with DATALOADER.NUM_WORKERS 0 the images load in the main process, which "
        "reports what fails.")


def _memory_limits(device):
    """What bounds this process's memory on ``device``, in words: a GPU's size; the host's memory and ulimit -v."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{gib(torch.cuda.get_device_properties(device).total_memory)} on {device}"
    limits = []
    address_space = resource.getrlimit(resource.RLIMIT_AS)[0]
    if address_space != resource.RLIM_INFINITY:
        limits.append(f"ulimit -v allows this process {gib(address_space)}")
    available = _meminfo_available()
    if available is not None:
        limits.append(f"the machine has {gib(available)} available")
    return "; ".join(limits)


def explain_resource_failure(error, stage, lower, device="cpu", num_workers=0, after=""):
    """The one-line error for ``error`` when it is a resource running out during ``stage``, or None."""
    if num_workers and not isinstance(error, MemoryError):
        explained = loader_worker_failure(error, [], num_workers)
        if explained is not None:
            return explained
    if not is_allocation_failure(error):
        return None
    try:
        limits = _memory_limits(device)
    except Exception:  # noqa: BLE001  the limits are extra information, not needed for the message
        limits = ""
    return ResourceError(f"Out of memory during {stage} ({_first_line(error)}{'; ' + limits if limits else ''}). "
                         f"Lower {lower}, or free memory (other processes on this machine){after}.")


@contextlib.contextmanager
def resource_failures_explained(stage, lower, device="cpu", num_workers=0, after=""):
    """Re-raise memory or open files running out inside the block as one :class:`ResourceError` naming ``stage``, the
    keys to ``lower`` and ``after`` that (", ..."); anything else as it is."""
    try:
        yield
    except MDPRError:
        raise
    except (MemoryError, RuntimeError, OSError) as error:
        explained = explain_resource_failure(error, stage, lower, device, num_workers, after)
        if explained is None:
            raise
        raise explained from None


# ------------------------------------------------------------------------------------------ sizes, before the work
def check_fits(needed, what, fix):
    """Refuse ``needed`` bytes for ``what`` (e.g. "x.npz: its arrays ('features' 3000000 x 1152 float32)") when this
    process cannot get them, before they are allocated; ``fix`` says what to lower or give instead."""
    available = available_memory()
    if available is not None and needed > available:
        raise ResourceError(f"{what} would need {gib(needed)} of memory and {gib(available)} are available; {fix}")
