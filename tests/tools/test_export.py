"""mdpr-export: the ONNX graph matches PyTorch on real images, at batch sizes other than the traced one."""
import re
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from fastreid.modeling import build_model
from helpers import BUNDLED_IMAGES, MDPR_DEMO_CONFIG, bundled_test_images, load_config

from mdpr_plugin import FeatureExtractor
from mdpr_plugin.errors import MissingExtraError
from mdpr_plugin.tools import export, extract


@pytest.fixture(scope="module")
def demo_model(demo_weights):
    cfg = load_config("configs/MDPR/demo.yml", "MODEL.WEIGHTS", demo_weights, "MODEL.DEVICE", "cpu",
                      "MODEL.BACKBONE.PRETRAIN", "False")
    return cfg, FeatureExtractor(cfg).model


def real_images(cfg, count):
    return bundled_test_images(cfg, count)


@pytest.mark.slow
def test_cli_exports_and_reports_parity(demo_onnx):
    path, output = demo_onnx
    match = re.search(r"parity on 8 images .*max abs diff (\S+), max rel diff (\S+)", output)
    assert match, output
    print(f"CLI export parity: max abs diff {match.group(1)}, max rel diff {match.group(2)}")
    assert float(match.group(2)) <= export.MAX_REL_DIFF


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 5])  # the export traced a batch of export.EXPORT_BATCH = 2
def test_onnx_matches_pytorch_on_real_images(demo_model, demo_onnx, batch):
    cfg, model = demo_model
    result = export.check_onnx(demo_onnx[0], model, real_images(cfg, batch))
    print(f"batch {batch}: {result}")
    assert result["batch"] == batch
    assert result["feature_dim"] == model.eval_feature_dim
    assert result["max_rel_diff"] <= 1e-4


@pytest.mark.slow
def test_graph_interface(demo_onnx):
    session = onnxruntime.InferenceSession(demo_onnx[0], providers=["CPUExecutionProvider"])
    (images,), (features,) = session.get_inputs(), session.get_outputs()
    assert (images.name, features.name) == ("images", "features")
    assert isinstance(images.shape[0], str)  # symbolic: the batch axis is dynamic
    assert images.shape[1:] == [3, 128, 64]
    assert images.type == "tensor(float)"
    out = session.run(None, {"images": np.full((3, 3, 128, 64), 128, np.float32)})[0]
    assert out.shape == (3, 1152)


@pytest.mark.slow
def test_check_reports_a_different_model(demo_model, demo_onnx):
    """The parity check can fail: another model's features are far from the exported graph's."""
    cfg, _ = demo_model
    torch.manual_seed(1)
    other = build_model(cfg).eval()
    result = export.check_onnx(demo_onnx[0], other, real_images(cfg, 3))
    assert result["max_rel_diff"] > 1e-2


def test_fastreid_baseline_exports(tmp_path):
    cfg = load_config("configs/Baseline-demo.yml", "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = export.export_onnx(model, str(tmp_path / "baseline.onnx"), *cfg.INPUT.SIZE_TEST)
    images = real_images(cfg, 3)
    before = images.clone()
    result = export.check_onnx(path, model, images)
    assert result["feature_dim"] == 512 and result["max_rel_diff"] <= 1e-4
    # Baseline normalises its input in place: check_onnx must have given it a copy
    assert torch.equal(images, before)


@pytest.mark.slow
def test_missing_onnxruntime_names_the_extra(monkeypatch, demo_onnx, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[onnx\]'"):
        export.onnx_session(demo_onnx[0])
    with pytest.raises(SystemExit, match=r"mdpr-extract: error: onnxruntime is not installed.*\[onnx\]"):
        extract.main(["--config-file", MDPR_DEMO_CONFIG, "--input", BUNDLED_IMAGES, "--output",
                      str(tmp_path / "f.npz"), "--onnx", demo_onnx[0]])


def test_missing_onnxscript_stops_the_export(monkeypatch, demo_model, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingExtraError, match=r"onnxscript is not installed.*\[onnx\]"):
        export.export_onnx(demo_model[1], str(tmp_path / "m.onnx"), 128, 64)


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"mdpr-export: error: Checkpoint .*nothing\.pth not found"):
        export.main(["--config-file", MDPR_DEMO_CONFIG, "--output", str(tmp_path / "m.onnx"),
                     "MODEL.WEIGHTS", str(tmp_path / "nothing.pth")])
    with pytest.raises(SystemExit, match=r"MODEL.WEIGHTS is empty"):
        export.main(["--config-file", MDPR_DEMO_CONFIG, "--output", str(tmp_path / "m.onnx")])


@pytest.mark.parametrize("options, message", [
    (["--opset", "3"], r"--opset 3 cannot be written: torch's exporter writes opsets 18 to \d+"),
    (["--opset", "99"], r"--opset 99 cannot be written: torch's exporter writes opsets 18 to \d+"),
    (["--check-images", "nowhere"], r"image folder nowhere does not exist"),
], ids=["opset 3", "opset 99", "no check images"])
def test_export_arguments_are_checked_before_the_model_is_built(monkeypatch, tmp_path, options, message):
    """An opset outside the exporter's range was exported as 18 with a logged traceback and exit status 0; a
    wrong --check-images folder was found after the export."""
    def refuse_to_build(*args, **kwargs):
        raise AssertionError("the model was built before the arguments were checked")

    monkeypatch.setattr(export, "FeatureExtractor", refuse_to_build)
    with pytest.raises(SystemExit, match=r"^mdpr-export: error: " + message):
        export.main(["--config-file", MDPR_DEMO_CONFIG, "--output", str(tmp_path / "m.onnx"), *options,
                     "MODEL.WEIGHTS", "unused.pth"])
    assert not (tmp_path / "m.onnx").exists()
