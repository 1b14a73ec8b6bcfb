"""Key mapping between the authors' released MDPR checkpoints and this model.

Functions on state dicts; the MDPR module calls them when it loads a state dict (``MDPR._load_from_state_dict``),
so every loader converts the authors' layout. Keys that no rule covers pass through unchanged, so the loader's
missing / unexpected report still shows them.
"""
import re

# (authors' prefix, our prefix); "{i}" stands for an index. Longer prefixes first where one extends another.
_BACKBONE = [
    ("generate.backbone.0.", "backbone.trunk.conv1."),
    ("generate.backbone.1.", "backbone.trunk.bn1."),
    ("generate.backbone.4.", "backbone.trunk.layer1."),
    ("generate.backbone.5.", "backbone.trunk.layer2."),
    ("generate.backbone_part.0.", "backbone.hard.layer3."),
    ("generate.backbone_part.1.", "backbone.hard.layer4."),
    ("generate.backbone_attn.0.", "backbone.soft.layer3."),
    ("generate.backbone_attn.1.", "backbone.soft.layer4."),
]


def _embedding(authors, ours):
    # The authors' Embedding names its conv "embedding"; ours calls it "conv".
    return [(f"{authors}embedding.", f"{ours}conv."), (f"{authors}bn.", f"{ours}bn.")]


def _attention_maker(authors, ours):
    return [(f"{authors}conv.", f"{ours}conv1x1."), (f"{authors}conv3.", f"{ours}conv3x3."),
            (f"{authors}bn.", f"{ours}bn.")]


def _bap(scale):
    authors, ours = f"generate.attn_bap{scale}.", f"soft_branch.bap{scale}."
    return [(f"{authors}pool.", f"{ours}pool.")] + _embedding(
        f"{authors}embedding_layer.{{i}}.", f"{ours}embeddings.{{i}}.")


_BRANCHES = (
    _embedding("generate.embedding_hard_global.", "hard_branch.global_embedding.")
    + _embedding("generate.embedding_hard_part.{i}.", "hard_branch.part_embeddings.{i}.")
    + _embedding("generate.embedding_attn_feature4.", "soft_branch.feature4_embedding.")
    + _embedding("generate.em3_1024.", "soft_branch.layer3_embedding.")
    + _embedding("generate.embedding_attn_feature3.", "soft_branch.feature3_embedding.")
    + _attention_maker("generate.attention_maker4.", "soft_branch.attention4.")
    + _attention_maker("generate.attention_maker3.", "soft_branch.attention3.")
    + [("generate.up_attn_4_3.conv.", "soft_branch.guide.conv.")]
    + _bap(4) + _bap(3)
)

_HEADS = [
    ("hard_global_head.", "heads.hard_global."),
    ("hard_part_head.{i}.", "heads.hard_part_{i}."),
    ("attn_feature4_head.", "heads.attn_feature4."),
    ("attn_bap_feature4_head.", "heads.attn_bap4."),
    ("attn_feature3_head.", "heads.attn_feature3."),
    ("attn_bap_feature3_head.", "heads.attn_bap3."),
    ("fusion_feat_head.", "heads.fusion."),
]

# Fusion blocks and predictors are Sequentials with the authors' indices on both sides.
_FUSION_AND_DISTILLATION = [
    ("fusion.merge.", "fusion.merge_parts."),
    ("fusion.output_part.", "fusion.part."),
    ("fusion.output_attn.", "fusion.attn."),
    ("fusion.output.", "fusion.output."),
    ("predictor1.", "distillation.predictor1."),
    ("predictor2.", "distillation.predictor2."),
]

# A later release wraps the predictors: predictor{1,2}.conv.{0,1,3}.*; read-only (we write the plain form).
_LATER_VARIANT = [
    ("predictor1.conv.", "distillation.predictor1."),
    ("predictor2.conv.", "distillation.predictor2."),
]

_RULES = _BACKBONE + _BRANCHES + _HEADS + _FUSION_AND_DISTILLATION


def _compile(rules):
    """Turn prefix pairs into (regex, template) pairs; "{i}" becomes a captured index."""
    compiled = []
    for source, target in rules:
        pattern = re.compile("^" + re.escape(source).replace(re.escape("{i}"), r"(\d+)"))
        compiled.append((pattern, target))
    return compiled


_TO_OURS = _compile(_LATER_VARIANT + _RULES)
_TO_AUTHORS = _compile([(ours, authors) for authors, ours in _RULES])


def _rename(state_dict, rules):
    renamed = {}
    for key, value in state_dict.items():
        new_key = key
        for pattern, target in rules:
            match = pattern.match(key)
            if match:
                new_key = target.replace("{i}", match.group(1)) if match.groups() else target
                new_key += key[match.end():]
                break
        if new_key in renamed:
            raise ValueError(f"two checkpoint keys map to {new_key!r}")
        renamed[new_key] = value
    return renamed


def _strip_module(state_dict):
    # (Distributed)DataParallel checkpoints prefix every key with "module.".
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def is_authors_layout(state_dict):
    """True if the state dict uses the authors' module names (their model keeps everything under ``generate.``)."""
    return any(key.startswith("generate.") for key in _strip_module(state_dict))


def convert_authors_state_dict(state_dict):
    """The authors' keys (either predictor variant, optional ``module.`` prefix) renamed to this model's."""
    return _rename(_strip_module(state_dict), _TO_OURS)


def convert_authors_keys(state_dict, prefix=""):
    """Rename in place the keys of ``state_dict`` under ``prefix`` from the authors' layout to this model's, when
    they are in it (torch hands each module the keys under its prefix while loading). Returns whether they were."""
    own = {key[len(prefix):]: key for key in state_dict if key.startswith(prefix)}
    if not is_authors_layout(own):
        return False
    converted = convert_authors_state_dict({name: state_dict.pop(key) for name, key in own.items()})
    state_dict.update((prefix + name, value) for name, value in converted.items())
    return True


def to_authors_state_dict(state_dict):
    """Inverse of ``convert_authors_state_dict``: this model's keys renamed to the authors' layout."""
    return _rename(dict(state_dict), _TO_AUTHORS)
