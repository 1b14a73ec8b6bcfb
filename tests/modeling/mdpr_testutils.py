"""Helpers for the modeling tests: small MDPR configs on the CPU (``from modeling.mdpr_testutils import ...``)."""
import torch

from fastreid.modeling.meta_arch import build_model
from helpers import load_config

E = 16  # small embedding width keeps the tests fast


def small_cfg(*overrides):
    """Base-SBS + MDPR keys, ResNet-18, E=16, 4 classes, no pretrained weights; ``overrides`` as in merge_from_list."""
    return load_config(
        "configs/Base-SBS.yml",
        "MODEL.META_ARCHITECTURE", "MDPR",
        "MODEL.DEVICE", "cpu",
        "MODEL.BACKBONE.DEPTH", "18x",
        "MODEL.BACKBONE.WITH_NL", False,
        "MODEL.BACKBONE.PRETRAIN", False,
        "MODEL.BACKBONE.EMBEDDING_DIM", E,
        "MODEL.HEADS.NUM_CLASSES", 4,
        "MODEL.LOSSES.TRI.MARGIN", 0.05,
        *overrides,
    )


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def batch(b=4, h=64, w=32, seed=0):
    """fastreid-style batch: 0-255 float images, two images per identity."""
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(b, 3, h, w, generator=g) * 255,
            "targets": torch.arange(b) // 2}
