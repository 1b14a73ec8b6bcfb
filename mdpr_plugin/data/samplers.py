"""A training data stream that is a function of (seed, position), so a resumed run continues it exactly.

fastreid 1.4.0's training samplers (data/samplers/*.py) seed the *global* numpy RNG with
``np.random.seed(seed)`` when their stream starts and draw from it (ImbalancedDatasetSampler draws from
the global torch RNG), with a seed from ``comm.shared_random_seed()``. Two consequences:

- a resumed run draws a new seed and starts the stream from its beginning: it sees other batches
  than the interrupted run would have;
- with ``DATALOADER.NUM_WORKERS 0`` the sampler and the augmentations (which also draw from the
  global numpy / python / torch RNGs) interleave on the same generators.

:class:`ResumableSampler` wraps any of fastreid's training samplers. It runs the sampler's own
``_infinite_indices()`` on private copies of the three global generators (so fastreid's sampling logic
is unchanged and nothing else disturbs it), skips the positions a resumed run has already consumed,
and hands every index out together with a per-sample seed derived from (seed, position in the global
stream). :class:`SeededDataset` seeds the python, numpy and torch CPU generators with that seed before
the sample's transforms run, so flips, padding crops, random erasing and AutoAugment decisions depend
only on the sample's position: not on the number of loader workers, their prefetching, or where the
run was interrupted.

Not covered: RandomPatch (``INPUT.RPT``) pastes patches from a pool of earlier images; the pool lives
in each loader worker and starts empty in a resumed run (see the trainer's warning).
"""
import contextlib
import itertools
import random

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

# How many indices a resumed run draws per call while skipping the consumed part of the stream.
_SKIP_CHUNK = 1 << 16


def sample_seed(seed, position):
    """The 32-bit seed of the sample at ``position`` of the global stream of run seed ``seed``."""
    return int(np.random.SeedSequence((seed, position)).generate_state(1)[0])


def seed_all(seed, cuda=False):
    """Seed python's, numpy's and torch's CPU generators, and with ``cuda`` every GPU's (the data pipeline
    leaves those alone: see SeededDataset)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def global_rng_state(state=None):
    """Run the block on the global python/numpy/torch-CPU generators set to ``state`` (a dict from an
    earlier call; None keeps them as they are); yields a dict that, after the block, holds the state
    the block left, and restores the generators the caller had."""
    outer = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if state is not None:
        random.setstate(state["random"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
    inner = {}
    try:
        yield inner
    finally:
        inner.update(random=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
        random.setstate(outer["random"])
        np.random.set_state(outer["numpy"])
        torch.set_rng_state(outer["torch"])


class ResumableSampler(torch.utils.data.Sampler):
    """Yields ``(index, sample_seed)`` pairs of this process's share of a seeded global stream.

    Args:
        sampler: one of fastreid's training samplers (anything with ``_infinite_indices()``, a
            ``_seed`` it reads when the stream starts, and the rank-interleaved layout fastreid uses:
            process ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...``).
        seed: the run's seed; the same on every process.
        rank, world_size: this process's place.
    ``start_position`` (settable; the trainer sets it on resume) is the number of global-stream
    positions already consumed: iterations done x SOLVER.IMS_PER_BATCH.
    """

    def __init__(self, sampler, seed, rank=0, world_size=1):
        if not hasattr(sampler, "_infinite_indices"):
            raise TypeError(f"{type(sampler).__name__} has no _infinite_indices(): ResumableSampler wraps "
                            "fastreid's training samplers (DATALOADER.SAMPLER_TRAIN).")
        self.sampler = sampler
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.start_position = 0

    # checkpointed (as "train_sampler"), so that a resumed run with SEED -1 keeps the run's seed
    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])

    def _global_stream(self, chunk):
        """(position, index) pairs from ``start_position`` on, drawn ``chunk`` at a time on private RNGs."""
        self.sampler._seed = self.seed  # fastreid's samplers re-seed numpy from it when the stream starts
        with global_rng_state() as state:
            seed_all(self.seed)  # ImbalancedDatasetSampler draws from torch's generator: seed that too
        indices = self.sampler._infinite_indices()
        skipped = 0
        while skipped < self.start_position:
            with global_rng_state(state) as state:
                skipped += sum(1 for _ in itertools.islice(indices, min(_SKIP_CHUNK, self.start_position - skipped)))
        position = self.start_position
        while True:
            with global_rng_state(state) as state:
                block = list(itertools.islice(indices, chunk))
            for index in block:
                yield position, int(index)
                position += 1

    def __iter__(self):
        # one draw per global batch keeps the cost of switching generators negligible
        chunk = max(self.world_size, 64)
        for position, index in self._global_stream(chunk):
            if position % self.world_size == self.rank:
                yield index, sample_seed(self.seed, position)


class SeededDataset(Dataset):
    """A training dataset whose items are fetched as ``dataset[(index, seed)]``: the transforms of each
    sample run on generators seeded with the sample's own seed. Plain integer indices pass through."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        # num_classes, img_items, pids, ... of the wrapped CommDataset (guard: while unpickling in a
        # loader worker, self.dataset does not exist yet)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        if get_worker_info() is not None:
            # a loader worker's generators serve nothing else: no need to restore them
            seed_all(seed)
            return self.dataset[index]
        # in the training process (NUM_WORKERS 0) leave the caller's generators as they were
        with global_rng_state():
            seed_all(seed)
            return self.dataset[index]
