"""The MDPR authors' config files, and the config.yaml their runs write, here with their meaning.

Their files are verbatim copies in tests/fixtures/authors_configs (its README.md names the source); their runs'
config.yaml is built from their own defaults.py and add_mdpr_cfg, as their tools/train_net.py builds it."""
import json
import os
import re
import shlex
import shutil

import pytest
import torch
from fastreid.config import CfgNode, get_cfg
from fastreid.data.transforms.transforms import RandomPatch
from helpers import REPO, code_after_marker, logged, run_script, synergyreid_copy
from test_train_net import metrics_rows

from mdpr_plugin import add_mdpr_config
from mdpr_plugin.authors_keys import AUTHORS_KEYS, authors_keys_in, warn_authors_keys
from mdpr_plugin.config import ConfigKeyError, _all_keys, _value, build_config
from mdpr_plugin.data import build_transforms
from mdpr_plugin.engine import Trainer
from mdpr_plugin.errors import InputError
from mdpr_plugin.modeling import to_authors_state_dict

AUTHORS = os.path.join(REPO, "tests", "fixtures", "authors_configs")
AUTHORS_FILES = {name: os.path.join(AUTHORS, "MDPR", f"{name}.yml") for name in ("DukeMTMC", "Market1501",
                                                                                    "SynergyReID")}
# The warning a config holding all of their keys gets (exactly this line, once).
WARNING = ("26 config keys of the MDPR authors' code have no effect, here as in their MDPR runs; accepted and ignored: "
           "MODEL.LAST_EMBEDDING, MODEL.LAST_ONLY, MODEL.HEADS.ATTN, MODEL.HEADS.GAN, MODEL.HEADS.GAN_RATIO, "
           "MODEL.HEADS.ADDTION_POOL, MODEL.HEADS.NUM_CHUNK, MODEL.LOSSES.CE.ATTN_SCALE, MODEL.LOSSES.CE.MAIN_SCALE, "
           "MODEL.LOSSES.TRI.ATTN, MODEL.LOSSES.CENTER.SCALE, MODEL.LOSSES.KL.MARGIN, INPUT.RGPR.ENABLED, "
           "INPUT.RGPR.PROB, DATASETS.CUHK03_LABELED, DATASETS.MSMT17_V, ATTN_TYPE, CHANNEL_POOL, ENABLE_BRANCH, "
           "IDENTITY, ENABLE_UPSAMPLE, ENABLE_GAT, STAGE, STAGE_PATH, GENERATE_ATTN, BETA.")
# The bundled images in place of their data, on the CPU, at a small size, briefly: only data, sizes and device change.
# 8 images of 2 per identity: 4 identities a batch.
SMALL = ("MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.DEPTH", "18x",
         "MODEL.BACKBONE.FEAT_DIM", "512", "MODEL.BACKBONE.EMBEDDING_DIM", "16", "INPUT.SIZE_TRAIN", "[64, 32]",
         "INPUT.SIZE_TEST", "[64, 32]", "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "2",
         "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "32", "SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_ITERS", "1")
BUNDLED = ("DATASETS.NAMES", "('MiniMarket1501',)", "DATASETS.TESTS", "('MiniMarket1501',)")
SYNERGY = ("DATASETS.NAMES", "('SynergyReID',)", "DATASETS.TESTS", "('SynergyReID',)")


def authors_module(name):
    """The namespace of their fastreid/config/``name``, run against fastreid's CfgNode (their fork's config.py is
    fastreid 1.4.0's)."""
    with open(os.path.join(AUTHORS, "fastreid_config", name)) as f:
        source = f.read().replace("from .config import CfgNode as CN", "from fastreid.config import CfgNode as CN")
    namespace = {}
    exec(compile(source, name, "exec"), namespace)
    return namespace


def authors_defaults():
    """Their config before any file: their defaults.py, then their add_mdpr_cfg (their train_net.py's setup)."""
    cfg = authors_module("defaults.py")["_C"].clone()
    authors_module("mdpr_config.py")["add_mdpr_cfg"](cfg)
    return cfg


def authors_config_yaml(folder, name="Market1501"):
    """The config.yaml a run of their train_net.py writes for their ``name``.yml (fastreid's setup dumps the config
    once merged); returns its path."""
    cfg = authors_defaults()
    cfg.merge_from_file(AUTHORS_FILES[name])
    path = os.path.join(str(folder), "config.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())
    return path


def ours():
    return add_mdpr_config(get_cfg())


# ------------------------------------------------------------------------------------------ keys
def test_the_plugin_lists_exactly_the_keys_their_defaults_add_with_their_defaults():
    theirs, plugin = authors_defaults(), ours()
    extra = [key for key in _all_keys(theirs) if key not in set(_all_keys(plugin))]
    assert extra == list(AUTHORS_KEYS)
    assert {key: _value(theirs, key) for key in extra} == {key: default for key, (default, _) in AUTHORS_KEYS.items()}
    # the keys both add mean the same by default
    fastreids = set(_all_keys(get_cfg()))
    shared = [key for key in _all_keys(theirs) if key in set(_all_keys(plugin)) - fastreids]
    assert len(shared) == 9  # EMBEDDING_DIM, ATTN_NUM, PART_NUM, ATTN_GUIDED, ..., ATTN_DIVERSITY.SCALE
    assert {key: _value(plugin, key) for key in shared} == {key: _value(theirs, key) for key in shared}


@pytest.mark.parametrize("name", AUTHORS_FILES)
def test_their_files_load_with_the_values_their_code_reads(name):
    cfg = build_config(AUTHORS_FILES[name])
    theirs = authors_defaults()
    theirs.merge_from_file(AUTHORS_FILES[name])
    assert {key: _value(cfg, key) for key in _all_keys(theirs) if key not in AUTHORS_KEYS} == {
        key: _value(theirs, key) for key in _all_keys(theirs) if key not in AUTHORS_KEYS}
    assert authors_keys_in(cfg) == []  # their files set none of the keys without effect


def test_their_runs_config_yaml_loads_and_names_their_keys_in_one_warning_line(tmp_path):
    cfg = build_config(authors_config_yaml(tmp_path))
    with logged() as messages:
        warn_authors_keys(cfg)
    assert messages == [WARNING]
    assert (cfg.ATTN_TYPE, cfg.MODEL.HEADS.NUM_CHUNK, cfg.BETA) == ("PAM", 2, 0.001)  # kept, as their run had them


def test_their_keys_keep_the_values_given_and_a_run_of_ours_loads_again(tmp_path):
    cfg = build_config(os.path.join(REPO, "configs/MDPR/demo.yml"), ["BETA", "0.5", "STAGE", "second"])
    assert (cfg.BETA, cfg.STAGE) == (0.5, "second") and authors_keys_in(cfg) == ["STAGE", "BETA"]
    written = tmp_path / "config.yaml"  # as a run of the plugin writes it
    written.write_text(cfg.dump())
    assert build_config(str(written)).dump() == cfg.dump()


def test_our_configs_get_none_of_their_keys_and_no_warning():
    cfg = build_config(os.path.join(REPO, "configs/MDPR/duke.yml"))
    with logged() as messages:
        warn_authors_keys(cfg)
    assert authors_keys_in(cfg) == [] and messages == []
    assert "BETA" not in cfg and "RGPR" not in cfg.INPUT


@pytest.mark.parametrize("text, opts, message", [
    ("ATTN_NUMS: 3\n", [], r"Unknown config key ATTN_NUMS in .*typo\.yml\. Did you mean ATTN_NUM\?"),
    ("", ["MODEL.BACKBONE.EMBEDING_DIM", "64"], r"Unknown config key MODEL\.BACKBONE\.EMBEDING_DIM in the command "
                                                r"line\. Did you mean MODEL\.BACKBONE\.EMBEDDING_DIM\?"),
    ("ATTN_TYPES: CAM\n", [], r"Unknown config key ATTN_TYPES in .*typo\.yml\."),  # one of theirs, mistyped
])
def test_a_mistyped_key_beside_theirs_is_still_refused(tmp_path, text, opts, message):
    path = tmp_path / "typo.yml"
    path.write_text(f"_BASE_: {authors_config_yaml(tmp_path)}\n{text}")
    with pytest.raises(ConfigKeyError, match=message):
        build_config(str(path), opts)


def test_their_grayscale_patch_replacement_is_refused_not_ignored(tmp_path):
    with pytest.raises(InputError) as caught:
        build_config(authors_config_yaml(tmp_path), ["INPUT.RGPR.ENABLED", "True"])
    assert str(caught.value) == ("INPUT.RGPR.ENABLED True asks for their random grayscale patch replacement, which "
                                 "the plugin does not have: set it to False or remove it (in the config file or the "
                                 "command line).")


# --------------------------------------------------------------------------------- RandomPatch pool
def patch_pools(transform):
    return [step.patchpool.maxlen for step in transform.transforms if isinstance(step, RandomPatch)]


def test_a_run_from_their_market1501_file_has_their_patch_pool_of_1000(tmp_path):
    cfg = build_config(AUTHORS_FILES["Market1501"], SMALL + BUNDLED)
    assert cfg.INPUT.RPT.ENABLED and cfg.INPUT.RPT.POOL_CAPACITY == 0  # their file sets none
    assert patch_pools(Trainer.build_train_loader(cfg).dataset.transform) == [1000]
    assert patch_pools(build_transforms(build_config(authors_config_yaml(tmp_path)))) == [1000]


@pytest.mark.parametrize("config, opts, pool", [
    ("configs/MDPR/duke.yml", [], 1000),
    ("configs/MDPR/demo.yml", ["INPUT.RPT.POOL_CAPACITY", "64"], 64),
    ("configs/MDPR/demo.yml", ["INPUT.RPT.POOL_CAPACITY", "0"], 1000),
    ("configs/Baseline-demo.yml", ["INPUT.RPT.ENABLED", "True"], 50000),  # fastreid's models keep fastreid's pool
])
def test_the_patch_pool_is_the_configs_or_the_meta_architectures(config, opts, pool):
    assert patch_pools(build_transforms(build_config(os.path.join(REPO, config), opts))) == [pool]


def test_a_negative_patch_pool_is_refused():
    with pytest.raises(InputError, match=r"INPUT\.RPT\.POOL_CAPACITY -1 is not allowed: it must be an integer >= 0 "
                                         r"\(RandomPatch's patch pool; 0: the meta-architecture's own\)"):
        build_config(os.path.join(REPO, "configs/MDPR/demo.yml"), ["INPUT.RPT.POOL_CAPACITY", "-1"])


# ------------------------------------------------------------------------------- through train_net.py
def loss_names(output_dir):
    """The loss terms a run logged in its metrics.json."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return {key for line in f for key in json.loads(line) if key.startswith("loss_")}


def train_and_evaluate(config_file, output_dir, *opts, env=None):
    """Train ``config_file`` with ``opts`` through train_net.py, then evaluate its model_final.pth with
    ``--eval-only``; returns the training run's output. Both evaluations must give the same numbers."""
    returncode, output = run_script("train_net.py", "--config-file", config_file, *opts, "OUTPUT_DIR", output_dir,
                                    env=env)
    assert returncode == 0, output[-3000:]
    returncode, evaluated = run_script("train_net.py", "--config-file", config_file, "--eval-only", *opts,
                                       "MODEL.WEIGHTS", os.path.join(output_dir, "model_final.pth"),
                                       "OUTPUT_DIR", output_dir + "/eval", env=env)
    assert returncode == 0, evaluated[-3000:]
    assert re.findall(r"^\| \w+ \|.*$", evaluated, flags=re.M)[-1:] == re.findall(r"^\| \w+ \|.*$", output,
                                                                                   flags=re.M)[-1:]
    return output


@pytest.mark.slow
def test_their_market1501_file_trains_and_evaluates_through_train_net(tmp_path):
    output = train_and_evaluate(AUTHORS_FILES["Market1501"], str(tmp_path / "run"), *SMALL, *BUNDLED)
    assert len(metrics_rows(output)) == 1
    assert len(loss_names(tmp_path / "run")) == 19 and "loss_fusion_triplet" in loss_names(tmp_path / "run")


def readme_commands():
    """The README's commands for the authors' files, each as an argument list after ``python``."""
    block = code_after_marker("README.md", "<!-- the authors' commands, run by tests/test_authors_configs.py -->",
                              language="bash")
    lines = [line for line in block.replace("\\\n", " ").splitlines() if not line.startswith("#")]
    return [shlex.split(line)[1:] for line in lines]


@pytest.mark.slow
def test_the_readmes_commands_train_their_dukemtmc_file_and_evaluate_their_weights(tmp_path):
    """In a folder laid out as theirs, the README's two commands, with the bundled images, small sizes and the CPU
    added: their DukeMTMC.yml trains; the weights in their key layout evaluate to the training run's numbers."""
    shutil.copytree(AUTHORS, tmp_path / "configs", ignore=shutil.ignore_patterns("*.py", "*.md"))
    train, evaluate = readme_commands()
    run = lambda args: run_script(os.path.join(REPO, "train_net.py"), *args[1:], *SMALL, *BUNDLED, cwd=str(tmp_path))
    returncode, trained = run(train + ["OUTPUT_DIR", "logs/train"])
    assert returncode == 0, trained[-3000:]
    assert len(loss_names(tmp_path / "logs" / "train")) == 19

    weights = tmp_path / "weights" / "DukeMTMC-reID.pth"
    weights.parent.mkdir()
    ours_final = torch.load(tmp_path / "logs" / "train" / "model_final.pth", map_location="cpu", weights_only=True)
    torch.save({"model": to_authors_state_dict(ours_final["model"])}, weights)
    returncode, evaluated = run(evaluate + ["OUTPUT_DIR", "logs/eval"])
    assert returncode == 0, evaluated[-3000:]
    assert "not found in the checkpoint" not in evaluated and "not used by the model" not in evaluated
    assert metrics_rows(evaluated) == metrics_rows(trained)[-1:]


@pytest.mark.slow
def test_their_synergyreid_file_trains_and_evaluates_on_that_layout(tmp_path):
    synergyreid_copy(tmp_path / "datasets")
    output = train_and_evaluate(AUTHORS_FILES["SynergyReID"], str(tmp_path / "run"), *SMALL, *SYNERGY,
                                env={"FASTREID_DATASETS": str(tmp_path / "datasets")})
    assert re.search(r"^\| SynergyReID \|", output, flags=re.M)
    assert len(loss_names(tmp_path / "run")) == 19


@pytest.mark.slow
def test_their_runs_config_yaml_trains_without_triplet_when_loss_names_say_so(tmp_path):
    config = authors_config_yaml(tmp_path)
    output = train_and_evaluate(config, str(tmp_path / "run"), *SMALL, *BUNDLED,
                                "MODEL.LOSSES.NAME", "('CrossEntropyLoss',)")
    warnings = [line for line in output.splitlines() if "config keys of the MDPR authors' code" in line]
    assert len(warnings) == 1 and warnings[0].endswith(f"]: {WARNING}")
    with open(tmp_path / "run" / "log.txt") as f:
        assert f.read().count(WARNING) == 1
    logged_losses = loss_names(tmp_path / "run")
    assert len(logged_losses) == 13 and not any(name.endswith("_triplet") for name in logged_losses)
    assert CfgNode.load_yaml_with_base(str(tmp_path / "run" / "config.yaml"))["BETA"] == 0.001  # kept in the run's
