"""fastreid's training conveniences with MDPR: RandomPatch's pool, PreciseBN, the best-model checkpoint."""
import torch
from fastreid.data.transforms.transforms import RandomPatch
from fastreid.engine import hooks
from fastreid.utils.precision_bn import get_bn_modules
from helpers import load_config

from mdpr_plugin.engine import Trainer


def mdpr_demo_trainer(tmp_path, *overrides):
    cfg = load_config("configs/MDPR/demo.yml", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
                      "MODEL.BACKBONE.EMBEDDING_DIM", "16", *overrides)
    return Trainer(cfg)


def test_random_patch_uses_the_configured_pool_in_the_training_loader(tmp_path):
    trainer = mdpr_demo_trainer(tmp_path)
    steps = trainer.data_loader.dataset.transform.transforms
    (patch,) = [step for step in steps if isinstance(step, RandomPatch)]
    assert patch.patchpool.maxlen == 1000


def test_precise_bn_recomputes_mdpr_batch_norm_statistics(tmp_path):
    """PreciseBN sets every BN layer's statistics, MDPR's own included, to the equal-weight average of its
    NUM_ITER batches' statistics (fastreid averages the batch variances, unbiased, as BN's update does);
    a plain training forward would leave a moving average instead."""
    trainer = mdpr_demo_trainer(tmp_path, "TEST.PRECISE_BN.ENABLED", "True",
                                "TEST.PRECISE_BN.DATASET", "MiniMarket1501", "TEST.PRECISE_BN.NUM_ITER", "2")
    (precise_bn,) = [h for h in trainer._hooks if isinstance(h, hooks.PreciseBN)]
    model = trainer.model
    bn_layers = get_bn_modules(model)  # what PreciseBN updates
    updated = {name: module for name, module in model.named_modules() if any(module is bn for bn in bn_layers)}
    # every running statistic of the model is recomputed: a norm PreciseBN misses would keep its moving average
    tracked = {name for name, module in model.named_modules() if getattr(module, "running_mean", None) is not None}
    assert set(updated) == tracked
    # MDPR's own layers among them, outside the backbone
    assert "soft_branch.attention4.bn" in updated
    assert {name.split(".")[0] for name in updated if not name.startswith("backbone.")} == {
        "hard_branch", "soft_branch", "fusion", "distillation", "heads"}

    batches = {name: [] for name in updated}  # per batch: the mean and unbiased variance of each channel

    def record(name):
        def hook(module, inputs):
            channels = inputs[0].detach().double().transpose(0, 1).flatten(1)  # C x (N [x H x W])
            batches[name].append((channels.mean(1), channels.var(1)))
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in updated.items()]
    precise_bn.update_stats()
    for handle in handles:
        handle.remove()
    for name, module in updated.items():
        assert len(batches[name]) == 2, name
        mean, var = (torch.stack(statistic).mean(0) for statistic in zip(*batches[name]))
        # float32 rounding (measured at most 2e-7), relative to the inputs' spread: some inputs have a zero mean
        mean_error = ((module.running_mean.double() - mean).abs() / (mean.abs() + var.sqrt())).max().item()
        var_error = ((module.running_var.double() - var).abs() / var).max().item()
        assert mean_error < 1e-5 and var_error < 1e-5, (name, mean_error, var_error)
