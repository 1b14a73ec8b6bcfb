"""Every CUDA path of the plugin against the CPU path or against float32 on the GPU: the cases of
benchmarks.gpu_cases as tests. Each runs on the CPU at tiny sizes (the CPU half of every check, in the normal suite)
and, marked ``gpu``, on CUDA at the paper's sizes (skipped, "needs CUDA", without it); what only CUDA has (AMP
inference, TF32, faiss-gpu, ONNX Runtime's CUDA provider, ResNet-101 at the paper's batch) is tested on CUDA only.
``make gpu-check`` runs the ``gpu`` tests, then the timing table."""
import math
import os

import pytest
import torch

from benchmarks import gpu_cases as cases

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=pytest.mark.gpu, id="cuda")]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def settings(device):
    return cases.settings_for(device)


@pytest.fixture(scope="session")
def cuda():
    return torch.device("cuda")


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory):
    """``run(device)``: the demo trained and evaluated by train_net.py on ``device``, once a session (the tests of
    its weights share it, in any order)."""
    runs = {}

    def run(device):
        if device.type not in runs:
            workdir = str(tmp_path_factory.mktemp(f"demo-{device.type}"))
            runs[device.type] = cases.demo_case(cases.settings_for(device), device, workdir, launcher=False)
        return runs[device.type]
    return run


@pytest.fixture(scope="session")
def cpu_reranking():
    """``reference(settings)``: (numbers, distance) of the CPU's re-ranking (gemm search) at ``settings``' size,
    computed once."""
    references = {}

    def reference(settings):
        key = settings.rerank_shape, settings.rerank_dim
        if key not in references:
            references[key] = cases.rerank_case(settings, "gemm")
        return references[key]
    return reference


# ---------------------------------------------------------------------------------------------------------- training
def _training_id(case):
    return "-".join([case.arch, "AMP" if case.amp else "float32", *(["channels-last"] if case.channels_last else []),
                     *(["syncBN"] if case.sync_bn else []), *(["DDP"] if case.ddp else [])])


@pytest.mark.slow  # trains
@pytest.mark.parametrize("case", cases.TRAINING, ids=_training_id)
def test_training_changes_every_parameter_and_every_loss_is_finite(device, settings, case):
    numbers = case.run(settings, device)  # raises CheckFailed naming the unchanged parameters or the losses
    assert numbers["loss_terms"] == (19 if case.arch == "MDPR" else 2)
    assert numbers["unchanged"] == 0 and numbers["parameters"] > 0
    assert all(math.isfinite(v) for v in numbers["losses"].values())
    assert numbers["ms_per_iteration"] > 0 and numbers["images_per_s"] > 0
    assert numbers["amp_active"] == (case.amp and device.type == "cuda")  # on a CPU, AMP trains in float32


@pytest.mark.slow  # trains
@pytest.mark.gpu
def test_resnet101_trains_with_amp_at_the_papers_batch(cuda):
    numbers = cases.RESNET101.run(cases.Settings(), cuda)
    assert numbers["amp_active"] and numbers["unchanged"] == 0 and numbers["loss_terms"] == 19


@pytest.mark.slow  # trains
def test_a_training_that_changes_nothing_is_caught():
    with pytest.raises(cases.CheckFailed, match=r"trainable parameters did not change"):
        cases.train_case(cases.SMALL, torch.device("cpu"), "Baseline", amp=False, opts=["SOLVER.BASE_LR", "0.0"])


# -------------------------------------------------------------------------------------------------------------- step
@pytest.mark.slow  # seconds of CPU in float64
def test_one_training_step_is_as_close_to_float64_as_the_cpus(device):
    numbers = cases.step_case(device)  # raises when the device is farther from float64 than 3x the CPU
    assert 0 < numbers["gradient_cpu"] < 0.1  # the CPU's own float32 against float64
    if device.type == "cpu":  # the CPU against itself: exactly
        assert numbers["loss_device"] == numbers["loss_cpu"] and numbers["gradient_device"] == numbers["gradient_cpu"]
        assert numbers["update_difference"] == 0


# ------------------------------------------------------------------------------------------------------------ loader
@pytest.mark.slow  # loader workers
def test_the_training_loader_delivers_its_batches_on_the_device(device, settings):
    numbers = cases.loader_case(settings, device)  # raises when the batches arrive on another device
    assert numbers["images_per_s"] > 0 and numbers["workers"] >= 1


# -------------------------------------------------------------------------------------------------------------- demo
@pytest.mark.slow  # train_net.py in a subprocess
def test_the_demo_trains_and_evaluates_through_train_net(device, demo_runs):
    numbers = demo_runs(device)  # raises on a failed run, a fall-back to the CPU, no evaluation table
    assert numbers["epochs"] == cases.settings_for(device).demo_epochs and os.path.isfile(numbers["weights"])
    assert 0 <= numbers["mAP"] <= 100 and 0 <= numbers["rank1"] <= 100


@pytest.mark.slow  # train_net.py in a subprocess
def test_the_demo_trains_and_evaluates_through_the_launcher(device, settings, tmp_path):
    numbers = cases.demo_case(settings, device, str(tmp_path), launcher=True)
    assert os.path.isfile(numbers["weights"]) and 0 <= numbers["mAP"] <= 100


# -------------------------------------------------------------------------------------------------------- evaluation
@pytest.mark.slow  # the demo trained by train_net.py
def test_the_demo_weights_evaluate_on_the_device_as_on_the_cpu(device, demo_runs):
    # TF32 as torch sets it: cuDNN's convolutions round, hence the wider feature tolerance
    numbers = cases.evaluation_case(device, demo_runs(device)["weights"], False,
                                    feature_tolerance=cases.TF32_TOLERANCE)  # raises over the tolerances
    if device.type == "cpu":
        assert numbers["relative_difference"] == 0
        assert (numbers["mAP"], numbers["rank1"]) == (numbers["reference_mAP"], numbers["reference_rank1"])


@pytest.mark.slow  # the demo trained by train_net.py
@pytest.mark.gpu
def test_with_tf32_off_the_gpu_features_are_the_cpus(cuda, demo_runs):
    numbers = cases.evaluation_case(cuda, demo_runs(cuda)["weights"], False, tf32=False)
    assert numbers["relative_difference"] <= cases.FEATURE_TOLERANCE


@pytest.mark.slow  # the demo trained by train_net.py
@pytest.mark.gpu
def test_amp_inference_keeps_float32s_map_and_rank1(cuda, demo_runs):
    numbers = cases.evaluation_case(cuda, demo_runs(cuda)["weights"], True)
    assert abs(numbers["mAP"] - numbers["reference_mAP"]) <= cases.METRIC_TOLERANCE
    assert abs(numbers["rank1"] - numbers["reference_rank1"]) <= cases.METRIC_TOLERANCE


# -------------------------------------------------------------------------------------------------------- re-ranking
def test_the_torch_search_reranks_as_the_cpus(device, settings, cpu_reranking):
    reference = cpu_reranking(settings)
    numbers, _ = cases.rerank_case(settings, "torch", reference)  # raises when mAP / Rank-1 move by 0.01
    assert numbers["backend"] == "torch" and reference[0]["backend"] == "gemm"
    assert numbers["same_top10"] > 0.99
    if device.type == "cpu":
        assert numbers["mAP"] == reference[0]["mAP"] and numbers["same_top10"] == 1.0


@pytest.mark.gpu
def test_the_faiss_gpu_search_reranks_as_the_cpus(cuda, cpu_reranking):
    from mdpr_plugin.evaluation.knn import faiss_gpu_available

    if not faiss_gpu_available():
        pytest.skip("faiss-gpu is not installed here (this faiss has no GPU support)")
    settings = cases.Settings()
    numbers, _ = cases.rerank_case(settings, "faiss-gpu", cpu_reranking(settings))
    assert numbers["backend"] == "faiss-gpu" and numbers["same_top10"] > 0.99


# --------------------------------------------------------------------------------------------------------- extractor
@pytest.mark.slow  # a model built, saved and run (and exported)
def test_the_feature_extractor_on_the_device_gives_the_cpus_features(device, settings, tmp_path):
    numbers = cases.extractor_case(settings, device, str(tmp_path), onnx=False)  # raises over 1e-3 relative
    assert set(numbers["images_per_s"]) == {str(b) for b in settings.extractor_batches}
    if device.type == "cpu":
        assert numbers["relative_difference"] == 0


@pytest.mark.gpu
def test_with_tf32_off_the_feature_extractor_gives_the_cpus_features(cuda, tmp_path):
    numbers = cases.extractor_case(cases.Settings(), cuda, str(tmp_path), False, tf32=False)
    assert numbers["relative_difference"] <= cases.FEATURE_TOLERANCE


@pytest.mark.slow  # a model built, saved and run (and exported)
def test_onnx_runtime_on_the_device_gives_the_cpus_features(device, settings, tmp_path):
    from mdpr_plugin.onnx_runtime import onnx_cuda_available

    if device.type == "cuda" and not onnx_cuda_available():
        pytest.skip("ONNX Runtime here has no CUDA provider (onnxruntime-gpu is not installed)")
    numbers = cases.extractor_case(settings, device, str(tmp_path), onnx=True)  # raises over 1e-3 relative
    assert 0 < numbers["relative_difference"] < cases.FEATURE_TOLERANCE  # another runtime: close, not equal
