"""The trainer's optimizer takes fused steps (SOLVER.FUSED): the same update, in one pass per tensor."""
import copy

import torch
from fastreid.utils.events import EventStorage

from mdpr_plugin.engine import Trainer


def _one_step(cfg, model):
    optimizer, _ = Trainer.build_optimizer(cfg, model)
    batch = {"images": torch.rand(4, 3, 128, 64, generator=torch.Generator().manual_seed(0)) * 255,
             "targets": torch.tensor([0, 0, 1, 1])}
    with EventStorage(0):
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()
    return optimizer


def test_the_fused_step_is_the_multi_tensor_step_within_float32_rounding(demo_cfg):
    demo_cfg.MODEL.HEADS.NUM_CLASSES = 4
    torch.manual_seed(0)
    model = Trainer.build_model(demo_cfg)
    unfused_model, unfused_cfg = copy.deepcopy(model), demo_cfg.clone()
    unfused_cfg.SOLVER.FUSED = False
    fused = _one_step(demo_cfg, model)
    unfused = _one_step(unfused_cfg, unfused_model)
    assert {g["fused"] for g in fused.param_groups} == {True} and len(fused.param_groups) > 50
    assert {g["fused"] for g in unfused.param_groups} == {None}
    changed = 0
    for p, q in zip(model.parameters(), unfused_model.parameters()):
        scale = q.detach().abs().max().clamp_min(1e-12)
        assert ((p - q).abs().max() / scale).item() < 1e-5
        changed += not torch.equal(p, q)
    assert changed > 0  # the two are different implementations, not the same code path


def test_a_resumed_run_steps_fused_again(demo_cfg):
    demo_cfg.merge_from_list(["SOLVER.MAX_EPOCH", 1, "TEST.EVAL_PERIOD", 1])
    trainer = Trainer(demo_cfg)
    for group in trainer.optimizer.param_groups:  # a checkpoint written without the fused flag
        group["fused"] = None
    trainer.checkpointer.save("model_0000", epoch=0)
    resumed = Trainer(demo_cfg)
    resumed.resume_or_load(resume=True)
    assert {g["fused"] for g in resumed.optimizer.param_groups} == {True}
