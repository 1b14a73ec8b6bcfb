"""A device-aware replacement for fastreid's ``DataLoaderX``.

fastreid's ``DataLoaderX`` (data/data_utils.py:127,151) creates a CUDA stream and moves every batch
to ``cuda:<local_rank>``, so no loader works without CUDA. This one keeps its behaviour on CUDA
(a background thread runs the loader one batch ahead and copies it to the GPU on a side stream) and
is a plain DataLoader on the CPU.
"""
import queue
import threading

import torch
from torch.utils.data import DataLoader


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
        for item in self.iterator:
            if self.stop_event.is_set():
                break
            self.queue.put(item)
        self.queue.put(None)

    def __next__(self):
        item = self.queue.get()
        if item is None:
            raise StopIteration
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
