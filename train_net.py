#!/usr/bin/env python
"""Train and evaluate IAUNet, Mask R-CNN and PointRend on cell instance segmentation.

    python train_net.py --config-file configs/revvity25/iaunet_R50.yaml
    python train_net.py --config-file configs/demo/mask_rcnn_R50.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python train_net.py --config-file CFG --resume          # continue from OUTPUT_DIR
    python train_net.py --config-file configs/custom/iaunet_R50.yaml \\
        --train-dir my_cells/train --val-dir my_cells/val   # your own images + label masks
    python train_net.py --config-file CFG --num-gpus 8      # DDP, see README for multi-machine

A wrapper: the application is iaunet_d2.apps.train (console script iaunet-train).
"""
import iaunet_d2.compat  # noqa: F401  (must precede every Detectron2 import)

import sys

from iaunet_d2.apps.train import (  # noqa: F401  (the names scripts and tests use)
    SetupError,
    build_parser,
    check_before_launch,
    cli,
    main,
    parse_args,
)

if __name__ == "__main__":
    sys.exit(cli())
