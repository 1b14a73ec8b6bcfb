"""Synthetic re-id features with planted identities and cameras, at benchmark shapes.

Each image's feature is ``a * identity_centre + b * camera_offset + noise`` (standard normal
components). ``a`` is set from the width so that a same-identity pair stands a few noise standard
deviations above a random pair, which gives mAP values in the range real models reach instead of a
trivially separable set; the camera offset makes same-camera images look alike, the case fastreid's
protocol removes (same identity, same camera gallery entries are ignored).
"""
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Shape:
    name: str
    num_query: int
    num_gallery: int
    num_identities: int  # identities with queries (all of them also in the gallery)
    num_distractors: int  # identities only in the gallery
    num_cameras: int


# The test splits of the real datasets: sizes, identity and camera counts.
DUKE = Shape("DukeMTMC-reID", 2228, 17661, 702, 408, 8)
MSMT17 = Shape("MSMT17", 11659, 82161, 3060, 0, 15)
SMALL = Shape("small", 48, 400, 16, 8, 4)


@dataclass
class SyntheticSet:
    features: torch.Tensor  # (num_query + num_gallery, dim) float32, queries first
    pids: np.ndarray
    camids: np.ndarray
    num_query: int

    def split(self):
        """``(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids)``."""
        n = self.num_query
        return (self.features[:n], self.features[n:], self.pids[:n], self.pids[n:],
                self.camids[:n], self.camids[n:])


def identities_and_cameras(shape, rng):
    """Every query identity gets queries (round robin) and gallery images on every camera it can."""
    q_pids = np.arange(shape.num_query) % shape.num_identities
    all_ids = shape.num_identities + shape.num_distractors
    # each identity appears at least once in the gallery, the rest is spread at random
    g_pids = np.concatenate([np.arange(all_ids), rng.integers(0, all_ids, shape.num_gallery - all_ids)])
    q_camids = rng.integers(0, shape.num_cameras, shape.num_query)
    g_camids = rng.integers(0, shape.num_cameras, shape.num_gallery)
    return np.concatenate([q_pids, g_pids]), np.concatenate([q_camids, g_camids])


@torch.no_grad()
def synthetic_set(shape, dim, seed=0, snr=4.0, camera_weight=0.5, chunk=8192):
    """Deterministic features for ``shape`` at width ``dim``."""
    rng = np.random.default_rng(seed)
    pids, camids = identities_and_cameras(shape, rng)
    generator = torch.Generator().manual_seed(seed)
    identity_scale = (snr / np.sqrt(dim)) ** 0.5
    centres = torch.randn(shape.num_identities + shape.num_distractors, dim, generator=generator)
    cameras = torch.randn(shape.num_cameras, dim, generator=generator)
    features = torch.empty(len(pids), dim)
    for start in range(0, len(pids), chunk):  # chunks keep the temporaries small at MSMT17 size
        stop = min(start + chunk, len(pids))
        block = torch.randn(stop - start, dim, generator=generator)
        block.add_(centres[torch.from_numpy(pids[start:stop])], alpha=identity_scale)
        block.add_(cameras[torch.from_numpy(camids[start:stop])], alpha=camera_weight * identity_scale)
        features[start:stop] = block
    return SyntheticSet(features, pids.astype(np.int64), camids.astype(np.int64), shape.num_query)
