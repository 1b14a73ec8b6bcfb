"""A checkpoint in the MDPR authors' key layout loads through any loader, because the MDPR module converts it
itself: fastreid's Checkpointer (with or without patch_fastreid()), its DefaultPredictor and a plain
load_state_dict give the plugin's loader's features, with no missing or unexpected key."""
import logging
from collections import OrderedDict

import pytest
import torch
from fastreid.engine import DefaultPredictor
from fastreid.utils.checkpoint import Checkpointer
from helpers import logged

from mdpr_plugin import compat
from mdpr_plugin.engine.eval_model import build_eval_model
from mdpr_plugin.modeling import to_authors_state_dict
from modeling.mdpr_testutils import batch, build, small_cfg

IMAGES = batch()["images"]
CLASSES = 4  # small_cfg's
# what fastreid's Checkpointer logs about keys it could not load (utils/checkpoint.py)
KEY_REPORTS = ("not found in the checkpoint", "not used by the model", "Skip loading")


def features(model):
    model.eval()
    with torch.no_grad():
        return model(IMAGES.clone())


@pytest.fixture(scope="module")
def authors_checkpoint(tmp_path_factory):
    """The path of ``{"model": weights in the authors' layout}`` (a plain dict, as their code writes it), and
    the features of the model the weights come from (BatchNorm statistics off their defaults, so that a
    buffer left unloaded changes the features)."""
    source = build(small_cfg(), seed=0)
    for module in source.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("authors") / "authors.pth"
    torch.save({"model": to_authors_state_dict(source.state_dict())}, path)
    return str(path), features(source)


@pytest.fixture(scope="module")
def plugin_features(authors_checkpoint):
    """The features of the plugin's loader (the evaluation's and FeatureExtractor's), which sizes the
    classifiers from the checkpoint."""
    path, source_features = authors_checkpoint
    model, cfg = build_eval_model(small_cfg("MODEL.WEIGHTS", path, "MODEL.HEADS.NUM_CLASSES", 0))
    assert cfg.MODEL.HEADS.NUM_CLASSES == CLASSES  # read from the authors' classifier keys
    assert torch.equal(features(model), source_features)
    return features(model)


def a_fresh_model(plugin_features, *overrides):
    model = build(small_cfg(*overrides), seed=1)
    assert not torch.allclose(features(model), plugin_features, atol=1e-3)  # loading must change it
    return model


def same_features(model, plugin_features):
    return torch.equal(features(model), plugin_features)


@pytest.mark.parametrize("patched", [False, True], ids=["stock", "patch_fastreid"])
def test_fastreids_checkpointer_loads_every_key(authors_checkpoint, plugin_features, patched):
    model = a_fresh_model(plugin_features)
    if patched:
        compat.patch_fastreid()
    try:
        assert (Checkpointer._load_file.__module__ == "fastreid.utils.checkpoint") is not patched
        with logged("fastreid.utils.checkpoint", logging.INFO) as messages:
            Checkpointer(model).load(authors_checkpoint[0])
    finally:
        compat.unpatch_fastreid()
    assert any(m.startswith("Loading checkpoint from") for m in messages), messages  # the listener hears it
    assert [m for m in messages if any(report in m for report in KEY_REPORTS)] == []
    assert same_features(model, plugin_features)


@pytest.mark.parametrize("prefix", ["", "module."], ids=["plain", "DDP-saved"])
def test_load_state_dict_loads_every_key(authors_checkpoint, plugin_features, prefix):
    saved = torch.load(authors_checkpoint[0], weights_only=True)["model"]
    model = a_fresh_model(plugin_features)
    incompatible = model.load_state_dict({prefix + key: value for key, value in saved.items()}, strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert same_features(model, plugin_features)


def test_fastreids_default_predictor_gives_the_plugins_features(authors_checkpoint, plugin_features):
    predictor = DefaultPredictor(small_cfg("MODEL.WEIGHTS", authors_checkpoint[0]))
    assert torch.equal(predictor(IMAGES.clone()), plugin_features)


def test_classifiers_of_another_size_are_skipped_as_fastreid_skips_its_own(authors_checkpoint, plugin_features):
    """fastreid's evaluation builds the model with NUM_CLASSES 0: its checkpointer loads everything else."""
    model = a_fresh_model(plugin_features, "MODEL.HEADS.NUM_CLASSES", 0)
    with logged() as warnings:
        Checkpointer(model).load(authors_checkpoint[0])
    assert len([w for w in warnings if "Not loading the classifier heads." in w]) == len(model.heads) > 0
    assert same_features(model, plugin_features)
    saved = torch.load(authors_checkpoint[0], weights_only=True)["model"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"heads\."):  # a strict load refuses
        model.load_state_dict(saved)


def test_a_state_dict_of_this_models_version_is_never_renamed():
    model = build(small_cfg())
    own = model.state_dict()
    assert own._metadata[""]["version"] == 2  # what the model records in every state dict it writes
    in_authors_names = OrderedDict(to_authors_state_dict(own))
    in_authors_names._metadata = own._metadata
    incompatible = model.load_state_dict(in_authors_names, strict=False)
    assert "generate.backbone.0.weight" in incompatible.unexpected_keys
    assert "backbone.trunk.conv1.weight" in incompatible.missing_keys
