"""Multi-process training on the CPU (gloo): torchrun and --num-gpus starts, DDP, SyncBN fallback,
evaluation over shards, files from rank 0 only; the launcher's and the batch checks' errors."""
import json
import os
import re
import textwrap

import pytest
import torch
import torch.distributed as dist
from fastreid.layers.batch_norm import SyncBatchNorm
from helpers import REPO, load_config, logged, run_script
from mdpr_plugin.data.checks import check_batch_composition, triplet_loss_used
from mdpr_plugin.engine import distributed as mdpr_distributed
from mdpr_plugin.engine.launch import launch
from torch import nn

# Each training process gets one thread: two processes on this project's two cores.
THREADS = {"OMP_NUM_THREADS": "1"}

# Runs train_net.main as train_net.py does, and makes each process leave what the test checks in
# $MDPR_TEST_DUMP (outside OUTPUT_DIR): its final state dict, its batch size and the test images it
# evaluated. torchrun runs it as __main__ in every process.
DRIVER = textwrap.dedent(f"""
    import json, os, sys
    sys.path.insert(0, {REPO!r})
    import torch
    import train_net
    from fastreid.engine import default_argument_parser
    from fastreid.utils import comm
    from mdpr_plugin.engine import Trainer
    from mdpr_plugin.engine.launch import launch, training_device_type
    from mdpr_plugin.evaluation import ReidEvaluator

    DUMP = os.environ["MDPR_TEST_DUMP"]
    evaluated = []
    process = ReidEvaluator.process
    def recording_process(self, inputs, outputs):
        evaluated.extend(inputs["img_paths"])
        return process(self, inputs, outputs)
    ReidEvaluator.process = recording_process

    train = Trainer.train
    def train_and_dump(self):
        results = train(self)
        rank = comm.get_rank()
        model = getattr(self.model, "module", self.model)
        torch.save(model.state_dict(), os.path.join(DUMP, f"state{{rank}}.pth"))
        with open(os.path.join(DUMP, f"info{{rank}}.json"), "w") as f:
            json.dump({{"world_size": comm.get_world_size(), "local_rank": comm.get_local_rank(),
                       "batch_size": self.data_loader.batch_sampler.batch_size,
                       "ddp": type(self.model).__name__, "evaluated": evaluated}}, f)
        return results
    Trainer.train = train_and_dump

    if __name__ == "__main__":
        args = default_argument_parser().parse_args()
        launch(train_net.main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, (args,),
               device_type=training_device_type(args.config_file, args.opts))
""")


def run(*args, env=None):
    saved = dict(os.environ)
    os.environ.update(THREADS, **(env or {}))
    try:
        return run_script(*args, timeout=900)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def metrics_rows(output):
    return re.findall(r"^\| MiniMarket1501 \|(.*)\|\s*$", output, flags=re.M)


@pytest.fixture(scope="module")
def torchrun_baseline(tmp_path_factory):
    """Baseline-demo, 2 processes started by torchrun: 4 iterations of 8 images per process, then an
    evaluation over both processes' shards."""
    tmp = tmp_path_factory.mktemp("torchrun")
    driver, dump, out = tmp / "driver.py", tmp / "dump", tmp / "out"
    driver.write_text(DRIVER)
    dump.mkdir()
    returncode, output = run(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
        "--config-file", "configs/Baseline-demo.yml", "MODEL.DEVICE", "cpu", "SEED", "3407",
        "SOLVER.MAX_EPOCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
        "TEST.EVAL_PERIOD", "2", "OUTPUT_DIR", str(out), env={"MDPR_TEST_DUMP": str(dump)})
    assert returncode == 0, output[-5000:]
    infos = [json.loads((dump / f"info{rank}.json").read_text()) for rank in (0, 1)]
    states = [torch.load(dump / f"state{rank}.pth") for rank in (0, 1)]
    return out, output, infos, states


@pytest.mark.slow
def test_torchrun_joins_the_processes_into_one_ddp_job(torchrun_baseline):
    _, output, infos, _ = torchrun_baseline
    assert [info["world_size"] for info in infos] == [2, 2]
    assert [info["local_rank"] for info in infos] == [0, 1]  # fastreid's comm knows the local group
    assert [info["ddp"] for info in infos] == ["DistributedDataParallel"] * 2
    # SOLVER.IMS_PER_BATCH 16 is the total: 8 images per process
    assert [info["batch_size"] for info in infos] == [8, 8]
    assert "2 processes (gloo): SOLVER.IMS_PER_BATCH 16 = 8 images per process." in output


@pytest.mark.slow
def test_ranks_end_with_identical_parameters_and_statistics(torchrun_baseline):
    _, _, _, (state0, state1) = torchrun_baseline
    assert state0.keys() == state1.keys()
    for name in state0:
        # parameters through DDP's averaged gradients; BatchNorm statistics through the copy from rank 0
        # before evaluation (fastreid's DDP does not broadcast buffers)
        assert torch.equal(state0[name], state1[name]), name


@pytest.mark.slow
def test_evaluation_sees_every_test_image_exactly_once_across_ranks(torchrun_baseline):
    _, output, (info0, info1), _ = torchrun_baseline
    shard0, shard1 = info0["evaluated"], info1["evaluated"]
    assert len(shard0) == len(shard1) == 32 and not set(shard0) & set(shard1)
    folder = os.path.join(REPO, "mdpr_plugin/data/mini_market1501/Market-1501-v15.09.15")
    test_images = {name for sub in ("query", "bounding_box_test") for name in os.listdir(os.path.join(folder, sub))}
    assert sorted(os.path.basename(p) for p in shard0 + shard1) == sorted(test_images)
    assert len(metrics_rows(output)) == 1  # the metrics of the whole set, printed by rank 0 only


@pytest.mark.slow
def test_only_rank_0_writes_files(torchrun_baseline):
    out, _, _, _ = torchrun_baseline
    files = set(os.listdir(out))
    assert {"log.txt", "config.yaml", "metrics.json", "last_checkpoint", "model_0000.pth",
            "model_final.pth"} <= files
    assert not [f for f in files if "rank" in f]  # fastreid's logger would write log.txt.rank1
    assert len([f for f in files if f.startswith("events.out.tfevents")]) == 1
    iterations = [json.loads(line)["iteration"] for line in open(os.path.join(out, "metrics.json"))]
    assert iterations and len(iterations) == len(set(iterations))  # one writer


@pytest.mark.slow
def test_num_gpus_starts_cpu_processes_and_mdpr_trains_with_syncbn_falling_back(tmp_path):
    """train_net.py --num-gpus 2 without CUDA: 2 gloo processes; MDPR with SyncBN trains with per-process
    BatchNorm and a warning (torch's SyncBatchNorm runs on CUDA only)."""
    returncode, output = run(
        "train_net.py", "--config-file", "configs/MDPR/demo.yml", "--num-gpus", "2", "--dist-url", "auto",
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NORM", "syncBN", "MODEL.HEADS.NORM", "syncBN",
        # one epoch of 4 iterations (the demo's cosine schedule needs more than one epoch)
        "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_ITERS", "1", "SOLVER.SCHED", "MultiStepLR",
        "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "1", "OUTPUT_DIR", str(tmp_path))
    assert returncode == 0, output[-5000:]
    assert "--num-gpus 2 starts 2 CPU processes that communicate over gloo" in output
    assert re.search(r"syncBN but the model trains on the CPU.*Using per-process BatchNorm for its \d+ layers",
                     output)
    assert "2 processes (gloo): SOLVER.IMS_PER_BATCH 8 = 4 images per process." in output
    assert "epoch/iter: 0/3" in output and len(metrics_rows(output)) == 1
    assert "model_final.pth" in os.listdir(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if "rank" in f]


# ------------------------------------------------------------------------------- in-process checks
@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one process (DDP needs one)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_as_fastreid_calls_it_works_for_a_cpu_model_with_syncbn(one_process_group):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SyncBatchNorm(4, bias_freeze=True))
    model[1].running_mean.fill_(0.5)
    # torch refuses fastreid's own call (engine/defaults.py:210) for a CPU model
    with pytest.raises(ValueError, match="device_ids"):
        nn.parallel.DistributedDataParallel(nn.Linear(2, 2), device_ids=[0], broadcast_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built before DDP, as the trainer does
    weight_before = model[1].weight.detach().clone()
    with logged() as warnings:
        ddp = mdpr_distributed.distributed_data_parallel(model, device_ids=[0], broadcast_buffers=False)
    assert any("Using per-process BatchNorm for its 1 layers" in w for w in warnings)
    bn = ddp.module[1]
    assert type(bn).__name__ == "BatchNorm" and not isinstance(bn, nn.SyncBatchNorm)
    assert torch.all(bn.running_mean == 0.5) and not bn.bias.requires_grad and bn.weight.requires_grad
    (ddp(torch.randn(2, 3, 5, 5)) ** 2).sum().backward()
    optimizer.step()
    # the optimizer holds the layer's own parameters: the replaced layer trains
    assert not torch.equal(bn.weight.detach(), weight_before)


def test_more_processes_than_gpus_is_refused_with_the_count():
    visible = torch.cuda.device_count()
    wanted = max(visible + 1, 2)  # one process is started without the check
    with pytest.raises(ValueError, match=rf"--num-gpus {wanted} but this machine has {visible} visible GPU"):
        launch(print, wanted, device_type="cuda")


@pytest.mark.parametrize("world_size, overrides, message", [
    (2, ("SOLVER.IMS_PER_BATCH", "15"), r"SOLVER.IMS_PER_BATCH 15 is the total over 2 processes and must be "
                                        r"divisible by 2"),
    (2, ("SOLVER.IMS_PER_BATCH", "12", "DATALOADER.NUM_INSTANCE", "4"),
     r"6 images per process, which is not a multiple of DATALOADER.NUM_INSTANCE 4"),
    (3, ("SOLVER.IMS_PER_BATCH", "16"), r"must be divisible by 3"),  # 16 // 3 * 3 = 15 would not split into pairs
    # one process: the identity sampler would wait forever for the 15th image's identity
    (1, ("SOLVER.IMS_PER_BATCH", "15"), r"SOLVER.IMS_PER_BATCH 15 is not a multiple of DATALOADER.NUM_INSTANCE 2"),
    (2, ("TEST.IMS_PER_BATCH", "1"), r"TEST.IMS_PER_BATCH 1 is the total over 2 processes"),
    # rounding 17 down to 16 would put one identity in each batch
    (1, ("SOLVER.IMS_PER_BATCH", "17", "DATALOADER.NUM_INSTANCE", "16"), r"e\.g\. SOLVER\.IMS_PER_BATCH 32\."),
    # Base-SBS's NUM_INSTANCE 16 in a 16-image batch: one identity per batch
    (1, ("SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_INSTANCE", "16"),
     r"16 images per process with DATALOADER.NUM_INSTANCE 16 puts 1 identity in each training batch: there is "
     r"nothing to tell apart .* Use SOLVER.IMS_PER_BATCH 32, or DATALOADER.NUM_INSTANCE 8\."),
    # one image of each identity: no positive pair for the triplet loss
    (1, ("DATALOADER.NUM_INSTANCE", "1"), r"DATALOADER.NUM_INSTANCE 1 gives each identity one image per training "
                                          r"batch: the triplet loss .* has no positive pair"),
    (1, ("SOLVER.IMS_PER_BATCH", "1", "DATALOADER.SAMPLER_TRAIN", "TrainingSampler"),
     r"gives a training batch of 1 image: one identity per batch"),
])
def test_batch_sizes_that_do_not_split_are_refused_with_advice_that_works(world_size, overrides, message):
    cfg = load_config("configs/Baseline-demo.yml", *overrides)  # NaiveIdentitySampler, NUM_INSTANCE 2, TripletLoss
    with pytest.raises(ValueError, match=message) as refused:
        _check_training_batch(cfg, world_size)
    for advice in _advice(str(refused.value)):  # following the advice passes the checks
        _check_training_batch(load_config("configs/Baseline-demo.yml", *overrides, *advice), world_size)


def _check_training_batch(cfg, world_size):
    """The batch checks of a training run, in their order: before the data is read, then with it."""
    mdpr_distributed.check_batch_sizes(cfg, world_size)
    check_batch_composition(cfg.DATALOADER.SAMPLER_TRAIN, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE,
                            world_size, triplet_loss_used(cfg))


def _advice(message):
    """The alternatives a refusal suggests, each as KEY VALUE overrides: "e.g. A 1 and B 2" or "Use A 1, or B 2"."""
    suggested = re.search(r"(?:e\.g\.|Use) ([A-Z_]+\.[A-Z_.]+ \d+(?: and [A-Z_.]+ \d+)?(?:, or [A-Z_.]+ \d+)*)",
                          message)
    if not suggested:
        return []
    return [alternative.replace(" and ", " ").split() for alternative in suggested.group(1).split(", or ")]


@pytest.mark.parametrize("sampler", ["NaiveIdentitySampler", "TrainingSampler"])
@pytest.mark.parametrize("triplet", [True, False])
def test_every_batch_refusal_suggests_values_that_pass_every_batch_check(sampler, triplet):
    """Over a grid of processes, batch sizes and NUM_INSTANCE: each refusal names values that pass, and each batch
    that passes holds two or more identities per process, of two images each under a triplet loss."""
    base = load_config("configs/Baseline-demo.yml", "DATALOADER.SAMPLER_TRAIN", sampler, "MODEL.LOSSES.TRI.SCALE",
                       "1.0" if triplet else "0.0")
    refused = 0
    for world_size in (1, 2, 3, 4):
        for ims in range(1, 37):
            for instances in range(1, 10):
                cfg = base.clone()
                cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", ims, "DATALOADER.NUM_INSTANCE", instances])
                try:
                    _check_training_batch(cfg, world_size)
                except ValueError as error:
                    refused += 1
                    alternatives = _advice(str(error))
                    assert alternatives, str(error)
                    for advice in alternatives:
                        followed = cfg.clone()
                        followed.merge_from_list(advice)
                        _check_training_batch(followed, world_size)
                    continue
                per_process = ims // world_size
                if sampler == "NaiveIdentitySampler":
                    assert per_process // instances >= 2 and (instances >= 2 or not triplet)
                else:
                    assert per_process >= 2
    assert refused
