"""Config keys MDPR adds to fastreid's config.

The model switches live at the config root (``ATTN_NUM``, ``PART_NUM``, ...) because that is where the
authors' YAML files put them; keeping them there lets those files load unchanged.
"""
from fastreid.config import CfgNode as CN

# Root-level keys: name -> (default, meaning).
_ROOT_KEYS = {
    "ATTN_NUM": (2, "M, number of foreground attention maps per scale (one background map is added)"),
    "PART_NUM": (2, "P, number of horizontal stripes of the hard content branch"),
    "ATTN_GUIDED": (True, "guide layer3's attention with layer4's raw attention"),
    "FUSION_ENABLE": (True, "fuse hard and soft maps into a 4E-wide fusion feature (needs both branches)"),
    "DISTILLATION_ENABLE": (True, "mutual distillation between the branches (needs both branches)"),
    "ATTN_DIVERSITY_LOSS_ENABLE": (True, "attention diversity and sparsity losses"),
    "OUTPUT_ALL": (False, "at eval, also keep the attention maps on model.last_attention_maps"),
    # Ours, not the authors': keep only one branch. Fusion and distillation need both, so with one
    # branch off they are skipped (the model logs it once when it is built).
    "HARD_BRANCH_ENABLE": (True, "build the hard (stripe) content branch"),
    "SOFT_BRANCH_ENABLE": (True, "build the soft (attention) content branch"),
}


def _add(node, key, value):
    # Setting only missing keys makes the function idempotent and keeps values already merged.
    if key not in node:
        setattr(node, key, value)


def add_mdpr_config(cfg):
    """Add MDPR's keys to a fastreid config (in place; safe to call twice).

    Call it before ``cfg.merge_from_file``: yacs refuses keys it does not know.
    """
    for key, (default, _meaning) in _ROOT_KEYS.items():
        _add(cfg, key, default)

    # E: width of every MDPR embedding (heads, fusion input, distillation).
    _add(cfg.MODEL.BACKBONE, "EMBEDDING_DIM", 512)

    # Weight of the attention sparsity regulariser (sum of attention / batch size).
    _add(cfg.MODEL.LOSSES, "ATTN_DIVERSITY", CN())
    _add(cfg.MODEL.LOSSES.ATTN_DIVERSITY, "SCALE", 0.001)

    # Patch pool of RandomPatch (INPUT.RPT): fastreid hard-codes 50000; MDPR's configs use 1000.
    _add(cfg.INPUT.RPT, "POOL_CAPACITY", 50000)
    return cfg
