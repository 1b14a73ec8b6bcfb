"""fastreid's training conveniences with MDPR: RandomPatch's pool, PreciseBN, the best-model checkpoint."""
import torch
from fastreid.data.transforms.transforms import RandomPatch
from fastreid.engine import hooks
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
    trainer = mdpr_demo_trainer(tmp_path, "TEST.PRECISE_BN.ENABLED", "True",
                                "TEST.PRECISE_BN.DATASET", "MiniMarket1501", "TEST.PRECISE_BN.NUM_ITER", "2")
    (precise_bn,) = [h for h in trainer._hooks if isinstance(h, hooks.PreciseBN)]
    bn = trainer.model.soft_branch.attention4.bn
    before = bn.running_mean.clone()
    precise_bn.update_stats()
    assert not torch.equal(before, bn.running_mean)
    assert torch.isfinite(bn.running_var).all()
