"""Importing the plugin changes nothing in fastreid; the opt-in patches fix fastreid's stock path and undo cleanly.

Each patch of mdpr_plugin.compat is tested through the behaviour it restores, with fastreid shown broken
without it where that is cheap to show (the evaluator's, with the plugin's evaluator in
tests/evaluation/test_evaluator.py).
"""
import ast
import dataclasses
import os
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
from helpers import REPO, logged, run_script

from mdpr_plugin import compat

# scripts shipped inside fastreid, not modules: importing them runs a build / a self-test
_SCRIPTS = {"fastreid.evaluation.rank_cylib.setup", "fastreid.evaluation.rank_cylib.test_cython"}
# needs matplotlib, an optional dependency of fastreid's visualiser only
_OPTIONAL = {"fastreid.utils.visualizer"}

# ------------------------------------------------------------------------------------ import shims
IMPORT_EVERY_FASTREID_MODULE = textwrap.dedent(f"""
    import importlib, importlib.util, pkgutil, sys
    # the shims alone, loaded from their file without importing the plugin
    spec = importlib.util.spec_from_file_location("shims", {os.path.join(REPO, "mdpr_plugin", "shims.py")!r})
    shims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shims)
    shims.install()
    import fastreid
    skip = {sorted(_SCRIPTS | _OPTIONAL)!r}
    names = [m.name for m in pkgutil.walk_packages(fastreid.__path__, "fastreid.") if m.name not in skip]
    for name in names:
        importlib.import_module(name)
""")


@pytest.mark.slow
def test_fastreid_alone_does_not_import_here():
    # the reason for the import shims: without them, fastreid.data and fastreid.engine fail
    for module in ("fastreid.data", "fastreid.engine"):
        returncode, output = run_script("-c", f"import {module}")
        assert returncode != 0 and ("torch._six" in output or "Mapping" in output), output


@pytest.mark.slow
def test_every_fastreid_module_imports_after_the_shims():
    returncode, output = run_script("-c", IMPORT_EVERY_FASTREID_MODULE + "print('imported', len(names))")
    assert returncode == 0, output
    assert int(output.split("imported")[-1]) > 120


# Records every module attribute of every fastreid module and every __dict__ entry of every class fastreid
# defines, imports every module of the plugin (train_net.py included), and lists what is now another object.
REBOUND_BY_THE_PLUGIN = IMPORT_EVERY_FASTREID_MODULE + textwrap.dedent(f"""
    def fastreid_state():
        state = {{}}
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] != "fastreid":
                continue
            for attribute, value in vars(module).items():
                state[f"{{name}}.{{attribute}}"] = value
                if isinstance(value, type) and value.__module__.startswith("fastreid"):
                    for key, entry in vars(value).items():
                        state[f"{{value.__module__}}.{{value.__qualname__}}.{{key}}"] = entry
        return state

    before = fastreid_state()
    import mdpr_plugin
    plugin = [m.name for m in pkgutil.walk_packages(mdpr_plugin.__path__, "mdpr_plugin.")
              if not m.name.endswith(".__main__")]  # running a tool is not importing it
    for name in plugin:
        importlib.import_module(name)
    sys.path.insert(0, {REPO!r})
    import train_net
    after = fastreid_state()
    rebound = [key for key, value in before.items() if after.get(key, value) is not value]
    print("modules", len(plugin), "names", len(before), "rebound", rebound)
""")


@pytest.mark.slow
def test_importing_the_plugin_rebinds_no_fastreid_name():
    returncode, output = run_script("-c", REBOUND_BY_THE_PLUGIN)
    assert returncode == 0, output
    summary = output.strip().splitlines()[-1]
    assert summary.endswith("rebound []"), summary
    assert int(summary.split()[1]) > 50 and int(summary.split()[3]) > 3000, summary  # it looked at everything


# The tools, the synthetic data (made from the bundled images, read back by a tool's readers) and the repository's
# benchmarks sit above the library: they import it, it never imports them.
ABOVE_THE_LIBRARY = ("mdpr_plugin.tools", "mdpr_plugin.synthetic", "benchmarks")
SOURCE_PACKAGES = ("mdpr_plugin", "benchmarks")


def _sources():
    """Every Python file of the package and of the repository's benchmarks."""
    return [os.path.join(folder, file) for package in SOURCE_PACKAGES
            for folder, _, files in os.walk(os.path.join(REPO, package)) for file in files if file.endswith(".py")]


def _plugin_import_graph():
    """``{module: modules of the plugin it imports}`` over the package and the repository's benchmarks, from every
    import statement, those inside functions too: a lazy import is still a dependency, and a cycle through one is
    still a cycle."""
    modules = {}
    for path in _sources():
        parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    def imported(name):
        path, is_package = modules[name]
        base = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                origin = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                for alias in node.names:
                    yield f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin

    graph = {name: {m for m in imported(name) if m in modules and m != name} for name in modules}
    assert len(graph) > 50 and sum(map(len, graph.values())) > 80  # the walk found the package
    assert "mdpr_plugin.engine" in graph["mdpr_plugin.inference"]  # ... and the imports inside functions
    assert "mdpr_plugin.engine" in graph["benchmarks.gpu_cases"]  # ... and the benchmarks' imports of the library
    return graph


def _a_cycle(graph):
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    done, on_path = set(), []

    def visit(name):
        on_path.append(name)
        for nxt in sorted(graph[name]):
            if nxt in on_path:
                return on_path[on_path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        done.add(on_path.pop())
        return None

    return next(filter(None, (visit(name) for name in sorted(graph) if name not in done)), None)


def _is_above_the_library(name):
    return any(name == top or name.startswith(top + ".") for top in ABOVE_THE_LIBRARY)


def test_the_plugin_has_no_import_cycle():
    assert _a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the search finds one
    cycle = _a_cycle(_plugin_import_graph())
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


def test_the_library_never_imports_a_tool_or_a_benchmark():
    graph = _plugin_import_graph()
    assert any(map(_is_above_the_library, graph)) and not _is_above_the_library("mdpr_plugin.toolsets")
    upward = [f"{name} imports {imported}" for name, imports in sorted(graph.items()) if not _is_above_the_library(name)
              for imported in sorted(imports) if _is_above_the_library(imported)]
    assert upward == [], "; ".join(upward)


def test_the_installed_package_never_imports_the_repository_s_benchmarks():
    # benchmarks/ is not in the wheel: an import of it from the package fails wherever the package is installed
    graph = _plugin_import_graph()
    assert any(name.startswith("benchmarks.") for name in graph)
    into = [f"{name} imports {imported}" for name, imports in sorted(graph.items()) if name.startswith("mdpr_plugin")
            for imported in sorted(imports) if imported == "benchmarks" or imported.startswith("benchmarks.")]
    assert into == [], "; ".join(into)


def _calls_patch_fastreid(path):
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Call):
            function = node.func
            if getattr(function, "id", None) == "patch_fastreid" or getattr(function, "attr", None) == "patch_fastreid":
                return True
    return False


def test_train_net_the_tools_and_the_benchmarks_never_call_patch_fastreid():
    sources = _sources()
    assert len(sources) > 50 and compat.__file__ in sources
    assert [path for path in sources + [os.path.join(REPO, "train_net.py")] if _calls_patch_fastreid(path)] == []
    assert _calls_patch_fastreid(__file__)  # the check finds a call where there is one


# -------------------------------------------------------------------------------- opt-in patches
@pytest.fixture
def patched():
    applied = compat.patch_fastreid()
    yield applied
    compat.unpatch_fastreid()


def test_every_patch_names_the_fastreid_code_it_answers():
    assert len(compat.PATCHES) == 10
    for patch in compat.PATCHES:
        assert ".py:" in patch.reason and len(patch.source_sha256) == 16, patch.target


def _stock_cfg(demo_cfg, **changes):
    demo_cfg.MODEL.HEADS.NUM_CLASSES = 4
    for key, value in changes.items():
        demo_cfg.merge_from_list([key, value])
    return demo_cfg


@pytest.mark.slow
def test_stock_train_and_test_loaders_run_on_cpu(demo_cfg, patched):
    from fastreid.data import build_reid_test_loader, build_reid_train_loader

    train_batch = next(iter(build_reid_train_loader(demo_cfg)))
    assert train_batch["images"].shape == (16, 3, 128, 64)
    assert train_batch["images"].device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    test_loader, num_query = build_reid_test_loader(demo_cfg, dataset_name="MiniMarket1501")
    assert num_query == 32 and len(test_loader.dataset) == 64
    assert next(iter(test_loader))["images"].shape[1:] == (3, 128, 64)


def test_stock_build_model_falls_back_to_the_cpu_with_one_warning(demo_cfg, patched):
    from fastreid.modeling import build_model
    from mdpr_plugin import devices

    cfg = _stock_cfg(demo_cfg, **{"MODEL.DEVICE": "cuda"})
    devices._warned.clear()
    with logged() as warnings:
        first, second = build_model(cfg), build_model(cfg)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert first.device.type == second.device.type == expected
    assert sum("CUDA is not available" in w for w in warnings) == (0 if torch.cuda.is_available() else 1)


def test_stock_default_trainer_runs_an_amp_step_on_cpu(demo_cfg, patched):
    from fastreid.engine import DefaultTrainer
    from fastreid.utils.events import EventStorage

    demo_cfg.SOLVER.AMP.ENABLED = True
    with logged() as warnings:
        trainer = DefaultTrainer(demo_cfg)
    trainer.iter = 0
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with EventStorage(0):
        trainer.run_step()
    assert sum(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters())) > 0
    on_cuda = torch.cuda.is_available()
    assert trainer._trainer.amp_enabled == on_cuda
    assert on_cuda or any("AMP needs CUDA" in w for w in warnings)


def _trained_parameters(cfg):
    """How many of the trainable parameters one step of fastreid's build_optimizer changes, and how many."""
    from fastreid.modeling import build_model
    from fastreid.solver import build_optimizer
    from fastreid.utils.events import EventStorage

    model = build_model(cfg)
    optimizer, _ = build_optimizer(cfg, model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    batch = {"images": torch.rand(4, 3, 128, 64) * 255, "targets": torch.tensor([0, 0, 1, 1])}
    with EventStorage(0):  # the head logs its accuracy
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()
    return sum(not torch.equal(b, p) for b, p in zip(before, trainable)), len(trainable)


def test_stock_optimizer_trains_nothing_on_torch_2_and_every_parameter_once_patched(demo_cfg):
    cfg = _stock_cfg(demo_cfg)
    changed, total = _trained_parameters(cfg)
    assert changed == 0 and total > 50  # fastreid's contiguous buffer under torch 2's zero_grad
    compat.patch_fastreid()
    try:
        assert _trained_parameters(cfg) == (total, total)
    finally:
        compat.unpatch_fastreid()


def test_stock_checkpointer_reads_fastreids_own_best_model_checkpoint_once_patched(demo_cfg, tmp_path):
    from fastreid.modeling import build_model
    from fastreid.utils.checkpoint import Checkpointer

    model = build_model(_stock_cfg(demo_cfg))
    Checkpointer(model, str(tmp_path)).save("model_best", epoch=2, metric=np.float64(61.5))
    with pytest.raises(Exception, match="Weights only load failed"):  # torch >= 2.6's default
        Checkpointer(model).load(str(tmp_path / "model_best.pth"))
    compat.patch_fastreid()
    try:
        extra = Checkpointer(model).load(str(tmp_path / "model_best.pth"))
    finally:
        compat.unpatch_fastreid()
    assert extra["metric"] == 61.5 and extra["epoch"] == 2


def test_stock_reranking_runs_on_the_cpu(patched):
    from fastreid.utils.compute_dist import build_dist

    generator = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(20, 32, generator=generator), torch.randn(60, 32, generator=generator)
    dist = build_dist(query, gallery, metric="jaccard", k1=10, k2=3)
    assert dist.shape == (20, 60)
    assert np.isfinite(dist).all() and (dist >= 0).all() and (dist <= 1 + 1e-6).all()


def test_ddp_and_launch_are_replaced_where_fastreid_uses_them_and_nowhere_else(patched):
    import fastreid.engine
    import fastreid.engine.defaults as engine_defaults
    import fastreid.utils.checkpoint as fastreid_checkpoint
    from mdpr_plugin.engine.distributed import distributed_data_parallel
    from mdpr_plugin.engine.launch import launch

    assert engine_defaults.DistributedDataParallel is distributed_data_parallel
    # the checkpointer's isinstance checks and torch itself keep torch's class
    assert fastreid_checkpoint.DistributedDataParallel is torch.nn.parallel.DistributedDataParallel
    assert fastreid.engine.launch is launch and sys.modules["fastreid.engine.launch"].launch is launch


def test_a_module_that_imported_a_name_by_value_is_patched_and_restored(monkeypatch):
    from fastreid.engine import launch as fastreid_launch
    from mdpr_plugin.engine.launch import launch

    user_script = types.ModuleType("users_train_net")  # `from fastreid.engine import launch` at its top
    user_script.launch = fastreid_launch
    monkeypatch.setitem(sys.modules, "users_train_net", user_script)
    compat.patch_fastreid()
    try:
        assert user_script.launch is launch
    finally:
        compat.unpatch_fastreid()
    assert user_script.launch is fastreid_launch


def _fastreid_state():
    state = {}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "fastreid" and module is not None:
            for attribute, value in vars(module).items():
                state[(name, attribute)] = value
                if isinstance(value, type) and value.__module__.startswith("fastreid"):
                    state.update(((value, key), entry) for key, entry in vars(value).items())
    return state


def test_unpatch_restores_every_original_and_patching_twice_changes_nothing():
    before = _fastreid_state()
    first = compat.patch_fastreid()
    patched_state = _fastreid_state()
    try:
        assert compat.patch_fastreid() == first
        assert _fastreid_state() == patched_state
        changed = [key for key, value in before.items() if patched_state.get(key) is not value]
        assert len(changed) >= len(compat.PATCHES)
    finally:
        compat.unpatch_fastreid()
    after = _fastreid_state()
    assert [key for key, value in before.items() if after.get(key) is not value] == []


def test_a_patch_whose_target_differs_is_refused_and_nothing_changes(monkeypatch):
    from fastreid.solver import build as solver_build

    edited = [patch if patch.target != "fastreid.solver.build:build_optimizer"
              else dataclasses.replace(patch, source_sha256="0" * 16) for patch in compat.PATCHES]
    monkeypatch.setattr(compat, "PATCHES", tuple(edited))
    before = _fastreid_state()
    with pytest.raises(compat.FastreidPatchError, match=r"fastreid.solver.build:build_optimizer in .*solver/build\.py "
                                                        r"is not the code this patch was written for .*\(left out: on "
                                                        r"torch 2 nothing trains.*exclude"):
        compat.patch_fastreid()
    after = _fastreid_state()
    assert [key for key, value in before.items() if after.get(key) is not value] == []

    original = solver_build.build_optimizer
    applied = compat.patch_fastreid(exclude=["fastreid.solver.build:build_optimizer"])
    try:
        assert "fastreid.solver.build:build_optimizer" not in applied and len(applied) == len(edited) - 1
        assert solver_build.build_optimizer is original
    finally:
        compat.unpatch_fastreid()


def test_every_patch_says_what_leaving_it_out_means():
    assert all(patch.without for patch in compat.PATCHES)
    assert len({patch.without for patch in compat.PATCHES}) == len(compat.PATCHES)


def test_exclude_names_only_known_targets():
    with pytest.raises(compat.FastreidPatchError, match="exclude names no patch: \\['read_image'\\]"):
        compat.patch_fastreid(exclude=["read_image"])
