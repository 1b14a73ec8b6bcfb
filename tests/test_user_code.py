"""The user's own code: modules named in IMPORTS (docs/extending.md's example module, outside the repository, trained,
evaluated from its config.yaml and loaded by the tools and FeatureExtractor), every registry name checked in one
line, and a run that does not learn stopped, in the plugin's trainer and in fastreid's own."""
import os
import re
import shutil
import textwrap

import numpy as np
import pytest
from helpers import BUNDLED_IMAGES, REPO, code_after_marker, run_script

from mdpr_plugin.config import build_config
from mdpr_plugin.custom_imports import UserImportError, import_modules
from mdpr_plugin.registry_names import UnknownNameError

EXAMPLE = ("docs/extending.md", "<!-- the user-module example, run by tests/test_user_code.py -->")
SPLITS = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}
USER_RUN = ["IMPORTS", "my_reid", "MODEL.BACKBONE.NAME", "build_my_backbone", "DATASETS.NAMES", "('MyCameras',)",
            "DATASETS.TESTS", "('MyCameras',)", "SOLVER.MAX_EPOCH", "4", "SEED", "0"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """docs/extending.md's my_reid.py in a folder outside the repository, the bundled images laid out as its dataset, and
    the environment a user's shell would have (PYTHONPATH naming that folder, FASTREID_DATASETS the data)."""
    root = tmp_path_factory.mktemp("user-project")
    (root / "code").mkdir()
    (root / "code" / "my_reid.py").write_text(code_after_marker(*EXAMPLE))
    for source, split in SPLITS.items():
        shutil.copytree(os.path.join(BUNDLED_IMAGES, source), root / "datasets" / "my_cameras" / split)
    pythonpath = os.pathsep.join(filter(None, [str(root / "code"), os.environ.get("PYTHONPATH")]))
    return {"root": root, "env": {"PYTHONPATH": pythonpath, "FASTREID_DATASETS": str(root / "datasets")}}


@pytest.fixture(scope="module")
def trained(project):
    output = project["root"] / "run"
    status, log = run_script("train_net.py", "--config-file", "configs/MDPR/demo.yml", *USER_RUN,
                             "OUTPUT_DIR", str(output), env=project["env"])
    return {"status": status, "log": log, "output": output}


def _one_error_line(output, prefix="ERROR:"):
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


@pytest.mark.slow
def test_the_readme_module_trains_through_imports(trained):
    assert trained["status"] == 0, trained["log"][-3000:]
    assert "Imported the modules IMPORTS names: my_reid" in trained["log"]
    assert "model_final.pth" in os.listdir(trained["output"])
    saved = (trained["output"] / "config.yaml").read_text()
    assert re.search(r"^IMPORTS:\n- my_reid$", saved, re.M), saved[:500]


@pytest.mark.slow
def test_its_config_yaml_brings_the_module_back_for_eval_only(project, trained):
    config, weights = str(trained["output"] / "config.yaml"), str(trained["output"] / "model_final.pth")
    status, output = run_script("train_net.py", "--config-file", config, "--eval-only", "MODEL.WEIGHTS", weights,
                                env=project["env"])
    assert status == 0, output[-3000:]
    assert re.search(r"\| MyCameras +\| [\d.]+ ", output), output[-2000:]
    # without the module on the path: one line naming it
    env = dict(project["env"], PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    status, output = run_script("train_net.py", "--config-file", config, "--eval-only", "MODEL.WEIGHTS", weights,
                                env=env)
    assert status == 1
    assert "IMPORTS: module my_reid could not be imported: ModuleNotFoundError" in _one_error_line(output)


@pytest.mark.slow
def test_its_config_yaml_serves_the_tools_and_feature_extractor(project, trained):
    config, weights = str(trained["output"] / "config.yaml"), str(trained["output"] / "model_final.pth")
    query = str(project["root"] / "datasets" / "my_cameras" / "query")
    npz = project["root"] / "query.npz"
    status, output = run_script("-m", "mdpr_plugin.tools.extract", "--config-file", config, "--input", query,
                                "--output", str(npz), "MODEL.WEIGHTS", weights, env=project["env"])
    assert status == 0, output[-3000:]
    features = np.load(npz)["features"]
    code = textwrap.dedent(f"""
        import numpy as np
        from mdpr_plugin import FeatureExtractor
        features = FeatureExtractor({config!r}, {weights!r})(sorted(__import__("glob").glob({query!r} + "/*.jpg")))
        np.save({str(project['root'] / 'python.npy')!r}, features)
    """)
    status, output = run_script("-c", code, env=project["env"])
    assert status == 0, output[-3000:]
    from_python = np.load(project["root"] / "python.npy")
    assert features.shape == from_python.shape == (32, 9 * 128)
    np.testing.assert_allclose(features, from_python, atol=1e-5)


@pytest.mark.parametrize("overrides, expected", [
    (["MODEL.BACKBONE.NAME", "build_resnet_backbon"],
     "MODEL.BACKBONE.NAME 'build_resnet_backbon' is not registered in fastreid. Did you mean build_resnet_backbone"),
    (["MODEL.BACKBONE.NAME", "build_my_backbone"],
     "A backbone of your own must be registered by a module named in IMPORTS"),
    (["MODEL.META_ARCHITECTURE", "MDRP"], "MODEL.META_ARCHITECTURE 'MDRP' is not registered in fastreid. Did you "
                                          "mean MDPR?"),
    (["DATASETS.NAMES", "('MyCameras',)"], "A dataset of your own must be registered by a module named in IMPORTS"),
    (["DATASETS.TESTS", "('Market',)"], "Did you mean Market1501 or MiniMarket1501?"),
    (["MODEL.HEADS.NAME", "EmbedingHead"], "Did you mean EmbeddingHead?"),
    (["SOLVER.OPT", "Adamm"], "SOLVER.OPT 'Adamm' is not known in fastreid. Did you mean Adam"),
    (["IMPORTS", "my_reid.py"], "IMPORTS holds 'my_reid.py', which is not a module name"),
])
def test_an_unknown_name_is_one_line_with_the_right_advice(overrides, expected):
    with pytest.raises((UnknownNameError, UserImportError, ValueError)) as caught:
        build_config("configs/MDPR/demo.yml", overrides)
    assert expected in str(caught.value)


def test_a_loss_name_fastreid_would_skip_is_refused_where_fastreid_reads_the_names():
    with pytest.raises(UnknownNameError) as caught:
        build_config("configs/Baseline-demo.yml", ["MODEL.LOSSES.NAME", "('CrossEntropyLoss', 'TripletLos')"])
    assert str(caught.value) == ("MODEL.LOSSES.NAME 'TripletLos' is not a loss fastreid's Baseline computes: it "
                                 "would train without it. It must be among CrossEntropyLoss, TripletLoss, CircleLoss, "
                                 "Cosface.")
    with pytest.raises(UnknownNameError, match="'CircleLoss' is not a loss fastreid's MGN computes: .* among "
                                               "CrossEntropyLoss, TripletLoss.$"):
        build_config("configs/Baseline-demo.yml", ["MODEL.META_ARCHITECTURE", "MGN",
                                                   "MODEL.LOSSES.NAME", "('CircleLoss',)"])


@pytest.mark.parametrize("names, message", [
    ("('CrossEntropyLoss', 'CircleLoss')", "MODEL.LOSSES.NAME 'CircleLoss' is not a loss MDPR computes: it would train "
                                           "without it. It must be among CrossEntropyLoss, TripletLoss."),
    ("('CrossEntropyloss',)", "MODEL.LOSSES.NAME 'CrossEntropyloss' is not a loss MDPR computes: it would train "
                              "without it. It must be among CrossEntropyLoss, TripletLoss."),
    ("()", "MODEL.LOSSES.NAME is empty: MDPR's heads of the evaluation feature would be trained by no loss. Name "
           "CrossEntropyLoss and / or TripletLoss (both: the paper's)."),
])
def test_mdpr_refuses_loss_names_it_would_skip_and_none(names, message):
    with pytest.raises(UnknownNameError) as caught:
        build_config("configs/MDPR/demo.yml", ["MODEL.LOSSES.NAME", names])
    assert str(caught.value) == message


@pytest.mark.slow
@pytest.mark.parametrize("command, prefix", [
    (["train_net.py", "--config-file", "configs/MDPR/demo.yml"], "ERROR:"),
    (["-m", "mdpr_plugin.tools.extract", "--config-file", "configs/MDPR/demo.yml", "--input", BUNDLED_IMAGES,
      "--output", "unused.npz"], "mdpr-extract: error:"),
])
def test_entry_points_report_an_unknown_name_in_one_line(command, prefix, tmp_path):
    status, output = run_script(*command, "MODEL.BACKBONE.NAME", "build_resnet_backbon", "OUTPUT_DIR",
                                str(tmp_path), cwd=REPO)
    assert status == 1
    assert "Did you mean build_resnet_backbone" in _one_error_line(output, prefix)
    assert os.listdir(tmp_path) == []  # stopped before anything was written


def test_a_module_that_fails_to_import_is_named_with_its_error(tmp_path, monkeypatch):
    (tmp_path / "broken_reid.py").write_text("import os\nraise RuntimeError('no such weights')\n")
    monkeypatch.chdir(tmp_path)  # the working directory is searched
    with pytest.raises(UserImportError, match=r"IMPORTS: module broken_reid could not be imported: RuntimeError: "
                                              r"no such weights \(at .*broken_reid\.py:2\)"):
        import_modules(["broken_reid"])


# ---------------------------------------------------------------------------------- runs that do not learn
NOT_LEARNING = "none of the {} trainable parameters changed"


@pytest.mark.slow
def test_a_frozen_model_stops_with_the_causes_and_a_normal_run_does_not(tmp_path, trained):
    status, output = run_script("train_net.py", "--config-file", "configs/MDPR/demo.yml", "OUTPUT_DIR",
                                str(tmp_path), "MODEL.FREEZE_LAYERS", "['.*']", "SOLVER.FREEZE_ITERS", "1000",
                                "SOLVER.MAX_EPOCH", "4")
    assert status == 1
    line = _one_error_line(output)
    assert re.search(r"none of the \d+ trainable parameters changed over 8 iterations", line), line
    assert "every parameter frozen" in line
    assert "model_final.pth" not in os.listdir(tmp_path)
    assert trained["status"] == 0 and "trainable parameters changed" not in trained["log"]


STOCK_SCRIPT = textwrap.dedent("""
    import os
    import sys
    import mdpr_plugin
    from mdpr_plugin.compat import patch_fastreid
    from mdpr_plugin.engine import StopIfNotLearning

    patch_fastreid(exclude=sys.argv[2:])
    from fastreid.engine import DefaultTrainer

    cfg = mdpr_plugin.config.build_config("configs/Baseline-demo.yml", ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", sys.argv[1],
                                          "SOLVER.MAX_EPOCH", "2", "SOLVER.STEPS", "[1]", "TEST.EVAL_PERIOD", "100"])
    os.makedirs(sys.argv[1])
    with open(os.path.join(sys.argv[1], "config.yaml"), "w") as f:  # as fastreid's default_setup writes it
        f.write(cfg.dump())
    trainer = DefaultTrainer(cfg)
    trainer.register_hooks([StopIfNotLearning()])
    trainer.resume_or_load(resume=False)
    trainer.train()
    print("trained to the end")
""")


@pytest.mark.slow
@pytest.mark.parametrize("exclude", [[], ["fastreid.solver.build:build_optimizer"]])
def test_fastreid_s_own_trainer_takes_the_check_in_one_line(exclude, tmp_path):
    script = tmp_path / "stock_train.py"
    script.write_text(STOCK_SCRIPT)
    status, output = run_script(str(script), str(tmp_path / "out"), *exclude)
    if exclude:  # fastreid's contiguous optimizer on torch 2: nothing trains
        assert status != 0 and "NotLearningError" in output
        assert re.search(r"none of the \d+ trainable parameters changed over \d+ iterations", output)
        assert "optimizer holding copies of the parameters" in output
    else:
        assert status == 0 and "trained to the end" in output, output[-3000:]


def test_names_users_registered_do_not_change_what_is_close():
    from fastreid.modeling.backbones.build import BACKBONE_REGISTRY

    from mdpr_plugin.registry_names import _registered, close_names

    fastreid_names = _registered(BACKBONE_REGISTRY)
    with_users = fastreid_names + ["build_test_user_net", "build_test_not_a_chain", "build_reid_net_v2"]
    for choices in (fastreid_names, with_users):
        assert close_names("build_my_backbone", choices) == []
        assert close_names("build_resnet_backbon", choices)[0] == "build_resnet_backbone"
