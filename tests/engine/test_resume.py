"""Exact resume: a run killed with SIGKILL and restarted with --resume ends where an uninterrupted run
ends; the sampler stream and per-sample augmentation that make it so."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from fastreid.data.samplers import NaiveIdentitySampler, TrainingSampler
from fastreid.data.transforms import build_transforms
from helpers import REPO
from mdpr_plugin.data.samplers import ResumableSampler, SeededDataset, sample_seed
from mdpr_plugin.serialization import safe_load


def take(sampler, n):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(n)]


def identity_items(num_ids=8, per_id=4):
    return [(f"img{pid}_{i}.jpg", pid, i % 3) for pid in range(num_ids) for i in range(per_id)]


@pytest.mark.parametrize("make", [lambda: TrainingSampler(20, seed=0),
                                  lambda: NaiveIdentitySampler(identity_items(), 8, 2, seed=0)],
                         ids=["TrainingSampler", "NaiveIdentitySampler"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_a_resumed_stream_continues_the_uninterrupted_one(make, world_size):
    for rank in range(world_size):
        full = take(ResumableSampler(make(), seed=3407, rank=rank, world_size=world_size), 60)
        resumed = ResumableSampler(make(), seed=3407, rank=rank, world_size=world_size)
        resumed.start_position = 24 * world_size  # 24 samples per process consumed
        assert take(resumed, 36) == full[24:]
    # another seed, another stream
    assert take(ResumableSampler(make(), seed=1), 30) != take(ResumableSampler(make(), seed=3407), 30)


def test_processes_share_one_global_stream():
    one = take(ResumableSampler(TrainingSampler(20, seed=0), seed=5), 40)
    rank0 = take(ResumableSampler(TrainingSampler(20, seed=0), seed=5, rank=0, world_size=2), 20)
    rank1 = take(ResumableSampler(TrainingSampler(20, seed=0), seed=5, rank=1, world_size=2), 20)
    assert rank0 == one[0::2] and rank1 == one[1::2]
    # each index comes with the seed of its position in the global stream
    assert [seed for _, seed in one[:3]] == [sample_seed(5, p) for p in range(3)]


def test_the_stream_ignores_and_keeps_the_global_generators():
    sampler = ResumableSampler(NaiveIdentitySampler(identity_items(), 8, 2, seed=0), seed=11)
    expected = take(sampler, 200)

    np.random.seed(123)
    before = np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state()
    iterator = iter(sampler)
    got = []
    for _ in range(200):
        got.append(next(iterator))
    after = np.random.get_state()[1], random.getstate(), torch.get_rng_state()
    assert np.array_equal(before[0], after[0]) and before[1] == after[1] and torch.equal(before[2], after[2])

    # the augmentations drawing from the global generators between batches do not change it
    iterator = iter(sampler)
    interleaved = []
    for _ in range(200):
        interleaved.append(next(iterator))
        np.random.rand(), random.random(), torch.rand(1)
    assert got == expected == interleaved


def test_each_sample_is_augmented_from_its_own_seed(demo_cfg):
    from fastreid.data.common import CommDataset
    from mdpr_plugin.data import MiniMarket1501

    items = MiniMarket1501().train
    dataset = SeededDataset(CommDataset(items, build_transforms(demo_cfg, is_train=True)))
    assert dataset.num_classes == 16 and len(dataset) == 32

    torch.manual_seed(0)
    untouched = torch.rand(3)
    torch.manual_seed(0)
    first = dataset[(0, 7)]["images"]
    # in the training process (no loader workers) the caller's generators are left as they were
    assert torch.equal(torch.rand(3), untouched)
    torch.rand(5), np.random.rand(5), random.random()
    assert torch.equal(dataset[(0, 7)]["images"], first)
    # flip, padding crop and random erasing draw differently under other seeds
    assert any(not torch.equal(dataset[(0, seed)]["images"], first) for seed in range(8, 12))


def test_the_seed_is_checkpointed_and_a_resume_restores_it_with_the_stream_position(demo_cfg):
    """With SEED -1 each start draws a seed; --resume must continue with the checkpoint's."""
    from mdpr_plugin.engine import Trainer

    demo_cfg.SOLVER.WARMUP_ITERS = 1
    first = Trainer(demo_cfg)
    first.train_sampler.seed = 1234  # as if drawn at random
    first.checkpointer.save("model_0000", epoch=0)
    assert safe_load(os.path.join(demo_cfg.OUTPUT_DIR, "model_0000.pth"))["train_sampler"] == {"seed": 1234}

    second = Trainer(demo_cfg)
    second.train_sampler.seed = 99
    second.resume_or_load(resume=True)
    assert second.train_sampler.seed == 1234 and second.start_epoch == 1
    # 2 iterations per epoch x 16 images
    assert second.train_sampler.start_position == 32


# ------------------------------------------------------------------------------------ end to end
OPTS = ("MODEL.DEVICE", "cpu", "SEED", "3407",
        # a loader worker: the augmentations run in another process, whose generators a resume cannot
        # restore; only per-sample seeds make them repeat
        "DATALOADER.NUM_WORKERS", "1",
       # 8 images per iteration: 4 iterations per epoch, 2 epochs; a checkpoint after each epoch
       "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_EPOCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
       # warm-up over 3 iterations, then the LR drops tenfold after epoch 0: the schedule must resume too
       "SOLVER.WARMUP_ITERS", "3", "SOLVER.STEPS", "(1,)", "TEST.EVAL_PERIOD", "2")


def start(output_dir, *flags):
    """train_net.py in the background; its output goes to a file (a pipe nobody reads would fill up)."""
    # one thread per process: the result of a float reduction must not depend on how a run was split
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "train_net.py", "--config-file", "configs/Baseline-demo.yml", *flags,
               *OPTS, "OUTPUT_DIR", str(output_dir)]
    log = open(f"{output_dir}{'-'.join(('',) + flags)}.out", "w+")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def output_of(proc, timeout=900):
    proc.wait(timeout=timeout)
    proc.log.seek(0)
    output = proc.log.read()
    proc.log.close()
    return output


def finish(proc):
    output = output_of(proc)
    assert proc.returncode == 0, output[-5000:]
    return output


def final_metrics(output):
    return re.findall(r"^\| MiniMarket1501 \|(.*)\|\s*$", output, flags=re.M)[-1]


def logged(output_dir):
    """metrics.json as {iteration: record}: loss and learning rate at each logged iteration."""
    records = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.json"))]
    return {r["iteration"]: r for r in records if "total_loss" in r}


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_and_resumed_ends_as_an_uninterrupted_run(tmp_path):
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    uninterrupted = start(whole)  # runs alongside, on the other core

    killed = start(interrupted)
    tag = interrupted / "last_checkpoint"
    deadline = time.monotonic() + 900
    while not (tag.exists() and tag.read_text() == "model_0000.pth"):
        assert killed.poll() is None, output_of(killed)[-5000:]
        assert time.monotonic() < deadline, "no checkpoint after epoch 0"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    output_of(killed)
    assert killed.returncode == -signal.SIGKILL
    assert not (interrupted / "model_final.pth").exists()  # it was killed mid-training
    assert safe_load(str(interrupted / "model_0000.pth"))["train_sampler"] == {"seed": 3407}

    resumed_output = finish(start(interrupted, "--resume"))
    assert "Resuming the training data stream (seed 3407) at iteration 4 (epoch 1)." in resumed_output
    assert "epoch/iter: 0/" not in resumed_output
    whole_output = finish(uninterrupted)

    # exactly equal: the same operations on the same data in the same order, one thread, on the CPU
    expected = safe_load(str(whole / "model_final.pth"))
    got = safe_load(str(interrupted / "model_final.pth"))
    assert expected["model"].keys() == got["model"].keys()
    for name, value in expected["model"].items():
        assert torch.equal(value, got["model"][name]), name
    for key in ("optimizer", "lr_sched", "warmup_sched"):
        assert repr(expected[key]) == repr(got[key]), key
    assert final_metrics(resumed_output) == final_metrics(whole_output)

    # the resumed iterations ran with the same learning rates (metrics.json's losses are medians over the
    # iterations of the process, which differ in a resumed one; the parameters above are what counts)
    whole_log, resumed_log = logged(whole), logged(interrupted)
    resumed_iterations = [i for i in whole_log if i >= 4]
    assert resumed_iterations and all(resumed_log[i]["lr"] == whole_log[i]["lr"] for i in resumed_iterations)
    assert whole_log[7]["lr"] == pytest.approx(0.1 * 3.5e-4)


def test_processes_that_resume_from_different_checkpoints_are_stopped(demo_cfg, monkeypatch):
    """E.g. machines without a shared OUTPUT_DIR: one finds the checkpoint, another starts afresh."""
    from fastreid.utils import comm
    from mdpr_plugin.engine import Trainer
    from mdpr_plugin.errors import MDPRError

    demo_cfg.SOLVER.WARMUP_ITERS = 1
    trainer = Trainer(demo_cfg)
    trainer.checkpointer.save("model_0000", epoch=0)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", lambda value: [value, 0])  # rank 1 found no checkpoint
    with pytest.raises(MDPRError, match=r"start epoch by rank: \[1, 0\].*same OUTPUT_DIR"):
        trainer.resume_or_load(resume=True)
