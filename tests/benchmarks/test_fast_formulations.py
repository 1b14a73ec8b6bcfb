"""The model's vectorised formulations give the results of the straightforward ones (float32, within 1e-5
relative), so that speed never changes results.

The diversity loss is one batched matrix product over the M attention features; the straightforward
version is written out here as the formula reads, pair by pair, and swapped into a copy of the same
model. (BAP stays a loop over the M maps: a stacked-convolution version was measured no faster and no
smaller at M = 2 — ResNet-50, 256x128, batch 16, 2 CPU threads: 17.0-18.4 s vs 18.4 s per step, peak
RSS within 1 % — so the simpler form was kept; see docs/benchmarks.md.)
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from mdpr_plugin.modeling import mdpr
from modeling.mdpr_testutils import batch, build, small_cfg

RTOL = 1e-5


def diversity_by_loop(pooled):
    """sum_{i<j} mean_b cos(f_i^b, f_j^b), pair by pair."""
    total = 0
    for i in range(len(pooled)):
        for j in range(i + 1, len(pooled)):
            total = total + F.cosine_similarity(pooled[i].flatten(1), pooled[j].flatten(1), dim=1).mean()
    return total if torch.is_tensor(total) else torch.zeros(())


@pytest.fixture
def straightforward(monkeypatch):
    """Context in which MDPR runs the loop formulations; ``use.calls`` lists M of each call they get."""
    def counted_loop(pooled):
        use.calls.append(len(pooled))
        return diversity_by_loop(pooled)

    def use():
        monkeypatch.setattr(mdpr, "attention_diversity_loss", counted_loop)
    use.calls = []
    return use


def _close(a, b):
    return torch.allclose(a, b, rtol=RTOL, atol=RTOL * b.abs().max().item())


def _train_forward(model, data, swap=None):
    if swap:
        swap()
    losses = model(data)
    sum(losses.values()).backward()
    return {name: value.detach() for name, value in losses.items()}


@pytest.mark.parametrize("m", [2, 3])  # M = 1 has no pair: both give zero (tests/modeling/test_mdpr_losses.py)
def test_training_losses_match_the_loop_formulation(straightforward, m):
    fast = build(small_cfg("ATTN_NUM", m))
    slow = copy.deepcopy(fast)
    data = batch(b=4)
    fast_losses = _train_forward(fast, data)
    slow_losses = _train_forward(slow, data, straightforward)

    assert straightforward.calls == [m, m]  # the swapped-in loop ran, once per scale (layer4, layer3)
    assert set(fast_losses) == set(slow_losses)
    for name in slow_losses:
        assert _close(fast_losses[name], slow_losses[name]), name
    for scale in ("4", "3"):  # a comparison of numbers, not of zeros
        assert slow_losses[f"loss_diversity_loss_{scale}"].abs() > 0


def test_gradients_match_the_loop_formulation_in_float64(straightforward):
    """In float32 the BN backward's cancellations turn the two formulations' rounding differences into
    ~1e-3 relative gradient differences; in float64 they must agree to far below that."""
    fast = build(small_cfg("ATTN_NUM", 3)).double()
    slow = copy.deepcopy(fast)
    data = {k: v.double() if v.is_floating_point() else v for k, v in batch(b=4).items()}
    _train_forward(fast, data)
    _train_forward(slow, data, straightforward)
    assert straightforward.calls == [3, 3]
    fast_params = dict(fast.named_parameters())
    compared = 0
    for name, param in slow.named_parameters():
        if param.grad is not None:
            assert torch.allclose(fast_params[name].grad, param.grad, rtol=1e-9,
                                  atol=1e-9 * param.grad.abs().max().item()), name
            compared += "bap" in name
    assert compared >= 2 * 3 * 3  # conv / BN weight / BN bias of the 3 embeddings of both BAPs
