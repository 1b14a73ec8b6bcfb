"""A device-aware replacement for fastreid's ``DataLoaderX``.

fastreid's ``DataLoaderX`` (data/data_utils.py:127,151) creates a CUDA stream and moves every batch
to ``cuda:<local_rank>``, so no loader works without CUDA. This one keeps its behaviour on CUDA
(a background thread runs the loader one batch ahead and copies it to the GPU on a side stream) and
is a plain DataLoader on the CPU.

A worker process that cannot hand a batch over (out of open files: each batch travels as file descriptors)
used to print tracebacks without end while the main process waited forever for that batch. Here such a worker
ends itself, with the errno as its exit status, and the main process reports it in one line
(:func:`mdpr_plugin.resources.loader_worker_failure`): raise ``ulimit -n`` or lower ``DATALOADER.NUM_WORKERS``.
"""
import errno
import multiprocessing.queues
import os
import queue
import sys
import threading

import torch
from torch.utils.data import DataLoader

from ..errors import MDPRError
from ..resources import is_allocation_failure, loader_worker_failure


def _end_worker(error):
    """End this worker process at once; its exit status says why (EMFILE, ENOMEM, else 1)."""
    if getattr(error, "errno", None) == errno.EMFILE or "Too many open files" in str(error):
        os._exit(errno.EMFILE)
    os._exit(errno.ENOMEM if is_allocation_failure(error) else 1)


class _EndWorkerOnHandOverFailure:
    """A loader's ``worker_init_fn``: in the worker, a batch its queue cannot send (fastreid's and torch's queue
    print it and drop the batch: the main process then waits for it forever) or a failure of the thread that hands
    file descriptors over (which prints it, again and again) ends the worker; then the user's ``worker_init_fn``."""

    def __init__(self, worker_init_fn=None):
        self.worker_init_fn = worker_init_fn

    def __call__(self, worker_id):
        multiprocessing.queues.Queue._on_queue_feeder_error = staticmethod(lambda error, obj: _end_worker(error))
        sys.excepthook = lambda kind, error, traceback: _end_worker(error)  # what multiprocessing's resource sharer calls
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


def _explained_worker_failures(batches, num_workers):
    """``batches`` (a DataLoader iterator), a worker's failure re-raised as one line naming the fix."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except MDPRError:
            raise
        except Exception as error:
            workers = getattr(batches, "_workers", [])
            for worker in workers:
                worker.join(timeout=0.5)  # one that ended has its exit status once reaped
            explained = loader_worker_failure(error, [w.exitcode for w in workers if w.exitcode is not None],
                                              num_workers)
            if explained is None:
                raise
            raise explained from None
        yield batch


def _stop_half_started(error):
    """Stop the workers of a DataLoader iterator whose start failed with ``error`` (found in its traceback): torch's
    cleanup of the half-made iterator would print a traceback of its own (an attribute it had not set yet)."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    frame = error.__traceback__
    while frame is not None:
        half_made = frame.tb_frame.f_locals.get("self")
        if isinstance(half_made, _MultiProcessingDataLoaderIter):
            half_made._shutdown = True  # what torch's cleanup checks first
            for worker in getattr(half_made, "_workers", []):
                worker.terminate()
                worker.join(timeout=5)
            return
        frame = frame.tb_next


class _Failed:
    def __init__(self, error):
        self.error = error


class _Prefetcher(threading.Thread):
    """Runs the wrapped iterator in a daemon thread, a bounded number of batches ahead."""

    def __init__(self, iterator, device, max_prefetch=1):
        super().__init__(daemon=True)
        self.queue = queue.Queue(max_prefetch)
        self.iterator = iterator
        self.device = device
        self.stop_event = threading.Event()
        self.start()

    def run(self):
        torch.cuda.set_device(self.device)
        try:
            for item in self.iterator:
                if self.stop_event.is_set():
                    break
                self.queue.put(item)
        except BaseException as error:  # noqa: BLE001  handed to the consumer, which would wait forever otherwise
            self.queue.put(_Failed(error))
            return
        self.queue.put(None)

    def __next__(self):
        item = self.queue.get()
        if item is None:
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.error
        return item

    def __iter__(self):
        return self


class DeviceDataLoader(DataLoader):
    """Drop-in for fastreid's ``DataLoaderX(local_rank, **dataloader_kwargs)``.

    ``device`` defaults to ``cuda:<local_rank>`` when CUDA is available and to the CPU otherwise;
    the plugin's trainer sets it from ``MODEL.DEVICE``. Tensors of each batch dict arrive there.
    """

    def __init__(self, local_rank, device=None, **kwargs):
        kwargs["pin_memory"] = kwargs.get("pin_memory", False) and torch.cuda.is_available()
        if kwargs.get("num_workers"):
            kwargs["worker_init_fn"] = _EndWorkerOnHandOverFailure(kwargs.get("worker_init_fn"))
        super().__init__(**kwargs)
        self.local_rank = local_rank
        self.device = device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")

    @property
    def device(self):
        return self._device

    @device.setter
    def device(self, value):
        value = torch.device(value)
        if value.type == "cuda" and value.index is None:
            value = torch.device("cuda", self.local_rank)
        self._device = value

    def __iter__(self):
        if self.num_workers:
            try:
                batches = super().__iter__()  # starts the workers: each takes open files
            except OSError as error:
                _stop_half_started(error)
                raise (loader_worker_failure(error, [], self.num_workers) or error) from None
            batches = _explained_worker_failures(batches, self.num_workers)
        else:
            batches = super().__iter__()
        if self.device.type == "cuda":
            return self._prefetch_to_cuda(batches)
        return batches  # collated on the CPU already

    def _prefetch_to_cuda(self, batches):
        stream = torch.cuda.Stream(self.device)
        prefetcher = _Prefetcher(batches, self.device)
        try:
            pending = self._copy(next(prefetcher, None), stream)
            while pending is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(stream)
                for value in pending.values():
                    if isinstance(value, torch.Tensor):
                        # allocated on the side stream, used on this one
                        value.record_stream(current)
                batch = pending
                pending = self._copy(next(prefetcher, None), stream)
                yield batch
        finally:
            prefetcher.stop_event.set()

    def _copy(self, batch, stream):
        if batch is None:
            return None
        with torch.cuda.stream(stream):
            return {key: value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                    for key, value in batch.items()}
