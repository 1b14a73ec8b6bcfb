"""MODEL.WEIGHTS must fit the model (the classifiers aside), unless MODEL.ALLOW_PARTIAL_WEIGHTS; evaluation models
take their number of classes from the checkpoint."""
import logging

import pytest
import torch
from fastreid.utils.checkpoint import Checkpointer
from helpers import MDPR_DEMO_CONFIG, bundled_test_images, load_config, logged, run_script

from mdpr_plugin.engine import CheckpointError, MDPRCheckpointer, build_model
from mdpr_plugin.engine.checkpointer import classifier_keys
from mdpr_plugin.engine.eval_model import build_eval_model

CPU = ("MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False")


def mdpr_cfg(*overrides):
    return load_config("configs/MDPR/demo.yml", *CPU, *overrides)


def save_model(cfg, folder, name):
    """Save a freshly built model of ``cfg`` with fastreid's own Checkpointer; BatchNorm statistics moved off
    their defaults so that a weight left unloaded changes the features."""
    model = build_model(cfg)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    Checkpointer(model, save_dir=str(folder)).save(name)
    return str(folder / f"{name}.pth"), model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"mdpr": MDPR demo trained on 16 identities, "baseline": fastreid's Baseline demo}."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    mdpr, _ = save_model(mdpr_cfg("MODEL.HEADS.NUM_CLASSES", "16"), folder, "mdpr16")
    baseline, _ = save_model(load_config("configs/Baseline-demo.yml", *CPU, "MODEL.HEADS.NUM_CLASSES", "16"),
                             folder, "baseline")
    return {"mdpr": mdpr, "baseline": baseline}


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def state_copy(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def unchanged(model, before):
    return all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


# --------------------------------------------------------------------------------------------- refused
def test_another_models_weights_are_refused_and_nothing_is_loaded(checkpoints):
    model = build_model(mdpr_cfg())
    before = state_copy(model)
    for allow_partial in (False, True):  # loading nothing is never a partial load
        with pytest.raises(CheckpointError) as refused:
            MDPRCheckpointer(model, allow_partial=allow_partial).load(checkpoints["baseline"])
        message = str(refused.value)
        assert "baseline.pth does not fit the model MDPR (MODEL.META_ARCHITECTURE MDPR): 0 of the model's" in message
        assert "Missing: backbone.trunk.conv1.weight" in message and "Unexpected: backbone.conv1.weight" in message
        assert "MODEL.ALLOW_PARTIAL_WEIGHTS True cannot help" in message and "\n" not in message
    assert unchanged(model, before)


def test_weights_of_another_width_are_refused_naming_both_shapes(checkpoints):
    cfg = mdpr_cfg("MODEL.BACKBONE.EMBEDDING_DIM", "64", "MODEL.WEIGHTS", checkpoints["mdpr"])
    with pytest.raises(CheckpointError, match=(
            r"mdpr16\.pth does not fit the model MDPR .*: \d+ of the model's \d+ weights \(classifiers aside\) are in "
            r"it with their shape\. Of another shape: hard_branch\.global_embedding\.conv\.weight "
            r"\[file \(128, 512, 1, 1\), model \(64, 512, 1, 1\)\].* and \d+ more\. .*"
            r"set MODEL.ALLOW_PARTIAL_WEIGHTS True to load only the matching weights")):
        build_eval_model(cfg)


def test_a_missing_key_is_refused(checkpoints, tmp_path):
    checkpoint = torch.load(checkpoints["mdpr"], weights_only=True)
    del checkpoint["model"]["fusion.output.0.weight"]
    torch.save(checkpoint, tmp_path / "incomplete.pth")
    model = build_model(mdpr_cfg("MODEL.HEADS.NUM_CLASSES", "16"))
    with pytest.raises(CheckpointError, match=r"incomplete\.pth does not fit .*Missing: fusion\.output\.0\.weight\."):
        MDPRCheckpointer(model).load(str(tmp_path / "incomplete.pth"))


@pytest.mark.slow
def test_train_net_eval_only_refuses_another_models_weights_without_printing_results(checkpoints, tmp_path):
    returncode, output = run_script("train_net.py", "--config-file", MDPR_DEMO_CONFIG, "--eval-only",
                                    "MODEL.WEIGHTS", checkpoints["baseline"], "MODEL.DEVICE", "cpu",
                                    "OUTPUT_DIR", str(tmp_path))
    assert returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "baseline.pth does not fit the model MDPR" in errors[0], output[-3000:]
    assert "Traceback" not in output and "Rank-1" not in output


# ---------------------------------------------------------------------------------------------- allowed
def test_classifiers_of_another_data_set_load(checkpoints):
    """Fine-tuning on another data set: the classifiers differ in size, everything else loads."""
    saved = build_model(mdpr_cfg("MODEL.HEADS.NUM_CLASSES", "16"))
    MDPRCheckpointer(saved).load(checkpoints["mdpr"])
    model = build_model(mdpr_cfg("MODEL.HEADS.NUM_CLASSES", "4"))
    MDPRCheckpointer(model).load(checkpoints["mdpr"])
    classifiers = classifier_keys(model)
    assert len(classifiers) == 8 and all(model.state_dict()[key].shape[0] == 4 for key in classifiers)
    for key, value in model.state_dict().items():
        if key not in classifiers:
            assert torch.equal(value, saved.state_dict()[key]), key


def test_partial_weights_load_when_allowed(checkpoints):
    model = build_model(mdpr_cfg("MODEL.BACKBONE.EMBEDDING_DIM", "64"))
    with logged() as warnings:
        MDPRCheckpointer(model, allow_partial=True).load(checkpoints["mdpr"])
    assert any("MODEL.ALLOW_PARTIAL_WEIGHTS is True: loading the" in w for w in warnings)
    saved = torch.load(checkpoints["mdpr"], weights_only=True)["model"]
    assert torch.equal(model.state_dict()["backbone.trunk.conv1.weight"], saved["backbone.trunk.conv1.weight"])


def test_the_trainer_s_own_checkpoints_resume(checkpoints, tmp_path):
    cfg = mdpr_cfg("MODEL.HEADS.NUM_CLASSES", "16")
    model = build_model(cfg)
    MDPRCheckpointer(model, str(tmp_path)).save("model_final")
    other = build_model(cfg)
    MDPRCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert same_weights(model, other)


# ------------------------------------------------------------------------------------ class count
def test_eval_model_reads_the_number_of_classes_from_the_checkpoint(checkpoints):
    """No NUM_CLASSES given: the classifiers get the checkpoint's 16 classes, so fastreid skips none of its
    weights, and the features are those of the model built with NUM_CLASSES 16."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    fastreid_checkpoint = logging.getLogger("fastreid.utils.checkpoint")  # may not propagate: listen on it
    fastreid_checkpoint.addHandler(handler)
    level = fastreid_checkpoint.level
    fastreid_checkpoint.setLevel(logging.INFO)
    try:
        model, cfg = build_eval_model(mdpr_cfg("MODEL.WEIGHTS", checkpoints["mdpr"]))
    finally:
        fastreid_checkpoint.removeHandler(handler)
        fastreid_checkpoint.setLevel(level)
    messages = [record.getMessage() for record in records]
    assert any(m.startswith("Loading checkpoint from") for m in messages), messages  # the listener hears it
    assert not [m for m in messages if "Skip loading" in m], messages
    assert cfg.MODEL.HEADS.NUM_CLASSES == 16 and not model.training

    given, _ = build_eval_model(mdpr_cfg("MODEL.WEIGHTS", checkpoints["mdpr"], "MODEL.HEADS.NUM_CLASSES", "16"))
    assert same_weights(model, given)
    images = bundled_test_images(cfg, 4)
    with torch.no_grad():
        assert torch.equal(model(images.clone()), given(images.clone()))


def test_eval_model_keeps_a_given_number_of_classes(checkpoints):
    _, cfg = build_eval_model(mdpr_cfg("MODEL.WEIGHTS", checkpoints["mdpr"], "MODEL.HEADS.NUM_CLASSES", "5"))
    assert cfg.MODEL.HEADS.NUM_CLASSES == 5


def test_eval_model_reads_the_checkpoint_once(checkpoints, monkeypatch):
    import mdpr_plugin.engine.checkpointer as checkpointer

    reads = []
    original = checkpointer.safe_load
    monkeypatch.setattr(checkpointer, "safe_load", lambda path: reads.append(path) or original(path))
    build_eval_model(mdpr_cfg("MODEL.WEIGHTS", checkpoints["mdpr"]))
    assert reads == [checkpoints["mdpr"]]
