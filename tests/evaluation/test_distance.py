"""The plugin's blocked distance is fastreid's build_dist, bit for bit."""
import numpy as np
import pytest
import torch

import mdpr_plugin  # noqa: F401
from fastreid.utils.compute_dist import build_dist
from mdpr_plugin.evaluation import pairwise_distance
from mdpr_plugin.evaluation.distance import check_metric


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_size", [128, 4096])
def test_blocked_distance_is_build_dist(metric, block_size):
    generator = torch.Generator().manual_seed(0)
    q, g = torch.randn(300, 256, generator=generator), torch.randn(1000, 256, generator=generator)
    mine = pairwise_distance(q, g, metric, block_size=block_size)
    assert mine.dtype == np.float32 and mine.shape == (300, 1000)
    np.testing.assert_array_equal(mine, build_dist(q, g, metric))


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="TEST.METRIC"):
        check_metric("jaccard")
