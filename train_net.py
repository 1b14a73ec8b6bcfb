#!/usr/bin/env python
"""Train or evaluate MDPR (or any fastreid model) with fastreid's engine.

The flags are fastreid's tools/train_net.py's: --config-file, --resume, --eval-only, --num-gpus,
--num-machines, --machine-rank, --dist-url, then KEY VALUE config overrides.

Several processes: ``--num-gpus N`` (N processes on this machine: one per GPU over NCCL, or N CPU
processes over gloo without CUDA), or ``torchrun --nproc_per_node N train_net.py ...``. See
mdpr_plugin/engine/launch.py.
"""
import mdpr_plugin  # noqa: F401  (registers MDPR; adds the import names fastreid lacks on torch 2)
from fastreid.engine import default_argument_parser
from mdpr_plugin.engine import Trainer, build_eval_model, setup_config
from mdpr_plugin.engine.output_dir import TrainingOutputDir
from mdpr_plugin.errors import run_reporting_errors
from mdpr_plugin.engine.launch import launch, training_device_type


def main(args):
    cfg = setup_config(args)  # a training run holds OUTPUT_DIR's lock from here

    if args.eval_only:
        # the weights must fit the model; NUM_CLASSES from the checkpoint when not given
        model, cfg = build_eval_model(cfg, build=Trainer.build_model)
        return Trainer.test(cfg, model)

    with TrainingOutputDir(cfg) as output_dir:  # refused before training: OUTPUT_DIR as it was
        trainer = Trainer(cfg)  # checks the training and test sets
        trainer.resume_or_load(resume=args.resume)  # checks the weights
        output_dir.start(trainer.cfg)  # every check passed: log.txt, config.yaml, an interrupted run's leftovers
        return trainer.train()


def launch_main(args):
    launch(
        run_reporting_errors,  # in every process: bad input prints its message, no traceback
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(main, args),
        # NCCL for a CUDA MODEL.DEVICE, gloo otherwise (also checks the config before any process starts)
        device_type=training_device_type(args.config_file, args.opts),
    )


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    run_reporting_errors(launch_main, args)
