"""The machine's measured float32 ceiling: the best of a large matmul and a large 3x3 convolution.

Both count a multiply-add as 2 FLOPs, as ``torch.utils.flop_counter`` does, so the model benchmark's
"achieved / ceiling" compares like with like. The convolution goes through oneDNN (mkldnn) on the CPU,
which on AVX2 machines often beats the BLAS matmul: the ceiling is the better of the two, because a
ResNet is mostly convolutions.
"""
import time

import torch
import torch.nn.functional as F


def _best_rate(run, flops, seconds_budget, min_runs=3):
    """Best FLOP/s of ``run()`` over repeats (after one untimed warm-up), within a time budget."""
    run()
    best, spent, runs = 0.0, 0.0, 0
    while runs < min_runs or spent < seconds_budget:
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        best = max(best, flops / elapsed)
        spent, runs = spent + elapsed, runs + 1
    return best


def matmul_rate(n=2048, seconds_budget=2.0, device="cpu"):
    """FLOP/s of an n x n by n x n float32 matmul (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return _best_rate(lambda: _synced(torch.mm, a, b), 2 * n ** 3, seconds_budget)


def conv_rate(batch=16, channels=256, height=64, width=32, seconds_budget=2.0, device="cpu",
              channels_last=False):
    """FLOP/s of a 3x3, stride 1, padded channels -> channels convolution (2 * 9 * C_in per output)."""
    x = torch.randn(batch, channels, height, width, device=device)
    w = torch.randn(channels, channels, 3, 3, device=device)
    if channels_last:
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    flops = 2 * 9 * channels * channels * batch * height * width
    return _best_rate(lambda: _synced(F.conv2d, x, w, padding=1), flops, seconds_budget)


def _synced(op, *args, **kwargs):
    out = op(*args, **kwargs)
    if out.is_cuda:
        torch.cuda.synchronize()
    return out


def measure_ceiling(device="cpu", small=False):
    """{"matmul", "conv", "conv_channels_last", "ceiling"} in FLOP/s; ``small``: tiny sizes (for tests)."""
    with torch.no_grad():
        if small:
            rates = {"matmul": matmul_rate(256, 0.05, device),
                     "conv": conv_rate(2, 32, 16, 8, 0.05, device),
                     "conv_channels_last": conv_rate(2, 32, 16, 8, 0.05, device, channels_last=True)}
        else:
            rates = {"matmul": matmul_rate(4096 if device != "cpu" else 2048, 2.0, device),
                     "conv": conv_rate(seconds_budget=2.0, device=device),
                     "conv_channels_last": conv_rate(seconds_budget=2.0, device=device, channels_last=True)}
    rates["ceiling"] = max(rates.values())
    return rates
