"""Each compatibility measure of mdpr_plugin.compat, tested through the behaviour it restores."""
import logging
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import run_script

import fastreid
from fastreid.data import build_reid_test_loader, build_reid_train_loader
from fastreid.engine import DefaultTrainer
from fastreid.evaluation import ReidEvaluator
from fastreid.modeling import build_model
from fastreid.utils.compute_dist import build_dist
from fastreid.utils.events import EventStorage
from mdpr_plugin import compat

# scripts shipped inside the package, not modules: importing them runs a build / a self-test
_SCRIPTS = {"fastreid.evaluation.rank_cylib.setup", "fastreid.evaluation.rank_cylib.test_cython"}
# needs matplotlib, an optional dependency of fastreid's visualiser only
_OPTIONAL = {"fastreid.utils.visualizer"}


def test_every_fastreid_module_imports_in_a_fresh_interpreter():
    code = textwrap.dedent(f"""
        import importlib, pkgutil
        import mdpr_plugin, fastreid
        skip = {sorted(_SCRIPTS | _OPTIONAL)!r}
        names = [m.name for m in pkgutil.walk_packages(fastreid.__path__, "fastreid.") if m.name not in skip]
        for name in names:
            importlib.import_module(name)
        print("imported", len(names))
    """)
    returncode, output = run_script("-c", code)
    assert returncode == 0, output
    assert int(output.split("imported")[-1]) > 120


def test_fastreid_alone_does_not_import_here():
    # the reason for the import shims: without the plugin, fastreid.data and fastreid.engine fail
    for module in ("fastreid.data", "fastreid.engine"):
        returncode, output = run_script("-c", f"import {module}")
        assert returncode != 0 and ("torch._six" in output or "Mapping" in output), output


def _first_batch(loader):
    return next(iter(loader))


def test_stock_train_and_test_loaders_run_on_cpu(demo_cfg):
    train_batch = _first_batch(build_reid_train_loader(demo_cfg))
    assert train_batch["images"].shape == (16, 3, 128, 64)
    assert train_batch["images"].device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    test_loader, num_query = build_reid_test_loader(demo_cfg, dataset_name="MiniMarket1501")
    assert num_query == 32 and len(test_loader.dataset) == 64
    assert _first_batch(test_loader)["images"].shape[1:] == (3, 128, 64)


def test_affine_augmentation_builds_with_todays_torchvision(demo_cfg):
    demo_cfg.INPUT.AFFINE.ENABLED = True
    batch = _first_batch(build_reid_train_loader(demo_cfg))
    assert batch["images"].shape == (16, 3, 128, 64)


def test_random_patch_pool_size_comes_from_the_config(demo_cfg):
    from fastreid.data.transforms.transforms import RandomPatch
    from mdpr_plugin.data import build_transforms

    demo_cfg.INPUT.RPT.ENABLED = True
    demo_cfg.INPUT.RPT.POOL_CAPACITY = 1000
    patches = [t for t in build_transforms(demo_cfg).transforms if isinstance(t, RandomPatch)]
    assert len(patches) == 1 and patches[0].patchpool.maxlen == 1000


def test_cuda_device_falls_back_to_cpu_with_one_warning(demo_cfg, caplog):
    demo_cfg.MODEL.DEVICE = "cuda"
    demo_cfg.MODEL.HEADS.NUM_CLASSES = 16
    compat._warned_devices.clear()
    with caplog.at_level(logging.WARNING, logger="mdpr_plugin.compat"):
        first, second = build_model(demo_cfg), build_model(demo_cfg)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert first.device.type == second.device.type == expected
    warnings = sum("CUDA is not available" in r.getMessage() for r in caplog.records)
    assert warnings == (0 if torch.cuda.is_available() else 1)


def test_stock_default_trainer_runs_an_amp_step_on_cpu(demo_cfg, caplog):
    demo_cfg.SOLVER.AMP.ENABLED = True
    with caplog.at_level(logging.WARNING):
        trainer = DefaultTrainer(demo_cfg)
    trainer.iter = 0
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with EventStorage(0):
        trainer.run_step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    assert changed > 0
    on_cuda = torch.cuda.is_available()
    assert trainer._trainer.amp_enabled == on_cuda
    assert on_cuda or any("AMP needs CUDA" in r.getMessage() for r in caplog.records)


def test_optimizer_from_the_stock_builder_updates_every_trainable_parameter(demo_cfg):
    from fastreid.solver import build_optimizer

    demo_cfg.MODEL.HEADS.NUM_CLASSES = 4
    model = build_model(demo_cfg)
    optimizer, _ = build_optimizer(demo_cfg, model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    batch = {"images": torch.rand(4, 3, 128, 64) * 255, "targets": torch.tensor([0, 0, 1, 1])}
    with EventStorage(0):  # the head logs its accuracy
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, trainable))


def test_evaluator_never_exits_when_the_fast_ranking_module_is_missing(demo_cfg, monkeypatch, caplog):
    # an entry of None in sys.modules makes the import fail, as an unbuilt module would
    monkeypatch.setitem(sys.modules, "fastreid.evaluation.rank_cylib.rank_cy", None)
    monkeypatch.setattr(fastreid.evaluation.rank_cylib, "compile_helper", lambda: sys.exit(1))
    with caplog.at_level(logging.WARNING):
        ReidEvaluator(demo_cfg, num_query=4)
    assert any("pure-Python ranking" in r.getMessage() for r in caplog.records)


def test_fast_ranking_module_was_built_at_setup():
    assert compat.fast_ranking_available()


def test_reranking_runs_on_the_cpu():
    generator = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(20, 32, generator=generator), torch.randn(60, 32, generator=generator)
    dist = build_dist(query, gallery, metric="jaccard", k1=10, k2=3)
    assert dist.shape == (20, 60)
    assert np.isfinite(dist).all() and (dist >= 0).all() and (dist <= 1 + 1e-6).all()


def test_applying_twice_changes_nothing():
    import fastreid.utils.compute_dist as compute_dist
    from fastreid.engine import defaults

    before = compute_dist.compute_jaccard_distance, defaults.build_model, defaults.build_optimizer
    compat.apply()
    assert (compute_dist.compute_jaccard_distance, defaults.build_model, defaults.build_optimizer) == before
