"""Random features with planted identities and cameras for the evaluation tests."""
import numpy as np
import torch

from mdpr_plugin.synthetic.planted_features import Shape, synthetic_set

SHAPE = Shape("test", num_query=60, num_gallery=540, num_identities=30, num_distractors=15, num_cameras=4)


def planted(dim=48, seed=0, shape=SHAPE):
    """``(q, g, q_pids, g_pids, q_camids, g_camids)`` with a same-identity same-camera gallery copy
    of every fifth query: fastreid's protocol must ignore it (were it counted, it would be the
    nearest gallery entry of that query)."""
    q, g, qp, gp, qc, gc = synthetic_set(shape, dim, seed=seed).split()
    copies = np.arange(0, len(q), 5)
    jitter = 1e-3 * torch.randn(len(copies), dim, generator=torch.Generator().manual_seed(seed))
    g = torch.cat([g, q[copies] + jitter])
    return q, g, qp, np.concatenate([gp, qp[copies]]), qc, np.concatenate([gc, qc[copies]])
