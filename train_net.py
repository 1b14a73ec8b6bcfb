#!/usr/bin/env python
"""Train or evaluate MDPR (or any fastreid model) with fastreid's engine.

The flags are fastreid's tools/train_net.py's: --config-file, --resume, --eval-only, --num-gpus,
--num-machines, --machine-rank, --dist-url, then KEY VALUE config overrides.
"""
import mdpr_plugin  # noqa: F401  (makes fastreid work here and registers MDPR)
from fastreid.engine import default_argument_parser, launch
from fastreid.utils.checkpoint import Checkpointer
from mdpr_plugin.engine import Trainer, setup_config


def main(args):
    cfg = setup_config(args)

    if args.eval_only:
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False  # the weights come from MODEL.WEIGHTS
        model = Trainer.build_model(cfg)
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
