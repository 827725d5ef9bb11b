#!/usr/bin/env python
"""Train and evaluate IAUNet, Mask R-CNN and PointRend on cell instance segmentation.

    python train_net.py --config-file configs/revvity25/iaunet_R50.yaml
    python train_net.py --config-file configs/demo/mask_rcnn_R50.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python train_net.py --config-file CFG --resume          # continue from OUTPUT_DIR
    python train_net.py --config-file CFG --num-gpus 8      # DDP, see README for multi-machine
"""
import iaunet_d2.compat  # noqa: F401  (must precede every Detectron2 import)

import sys

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

import iaunet_d2  # noqa: F401  (registers datasets, mappers and models)
from iaunet_d2.data.datasets import DatasetNotFoundError
from iaunet_d2.engine import (
    AtomicCheckpointer, CheckpointReadError, CheckpointWriteError, Trainer, build_config, setup_cfg,
)


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check_before_launch(args):
    """Fail fast, in the launching process, on problems a user must fix first."""
    cfg = build_config(args.config_file, args.opts)
    if args.eval_only and not cfg.MODEL.WEIGHTS and not args.resume:
        raise SystemExit(
            "error: --eval-only needs trained weights: pass MODEL.WEIGHTS path/to/model.pth "
            f"or --resume to load the last checkpoint in OUTPUT_DIR ({cfg.OUTPUT_DIR})."
        )


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    try:
        check_before_launch(args)
    except DatasetNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (CheckpointReadError, CheckpointWriteError) as e:
        # The trainer has logged the traceback; end with the one line that says what to do.
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
