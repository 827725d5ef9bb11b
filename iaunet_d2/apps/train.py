"""Train and evaluate IAUNet, Mask R-CNN and PointRend on cell instance segmentation.

    python train_net.py --config-file configs/revvity25/iaunet_R50.yaml
    python train_net.py --config-file configs/demo/mask_rcnn_R50.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python train_net.py --config-file CFG --resume          # continue from OUTPUT_DIR
    python train_net.py --config-file configs/custom/iaunet_R50.yaml \\
        --train-dir my_cells/train --val-dir my_cells/val   # your own images + label masks
    python train_net.py --config-file CFG --num-gpus 8      # DDP, see README for multi-machine

``train_net.py``, ``iaunet-train`` and ``python -m iaunet_d2.apps.train`` all run
:func:`cli`.
"""
import iaunet_d2.compat  # noqa: F401  (must precede every Detectron2 import)

import logging
import os
import shlex
import sys

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results

import iaunet_d2  # noqa: F401  (registers datasets, mappers and models)
from iaunet_d2.data.datasets import DatasetNotFoundError
from iaunet_d2.data.validation import DatasetError
from iaunet_d2.engine import (
    AtomicCheckpointer, CheckpointReadError, CheckpointWriteError, Trainer, TrainingInterrupted,
    build_config, launch, setup_cfg,
)
from iaunet_d2.config import ConfigError, PixelStatsError
from iaunet_d2.modeling.config_check import check_model_config


class SetupError(Exception):
    """A problem with the command line that the user must fix (one line, exit 2)."""


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        weights = cfg.MODEL.WEIGHTS
        if args.resume and checkpointer.has_checkpoint():
            weights = checkpointer.get_checkpoint_file()
        # Strict: evaluating weights that do not fit would report a random model's AP.
        checkpointer.load_weights(weights, strict=True)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _is_local_path(path):
    return "://" not in path


def check_before_launch(args):
    """Fail fast, in the launching process, on problems a user must fix first.

    Raises:
        SetupError, ConfigError (including values the model's constructors reject),
        DatasetNotFoundError, DatasetError, PixelStatsError.
    """
    if args.num_machines > 1 and args.dist_url == "auto":
        raise SetupError("a multi-machine run needs --dist-url tcp://<address of machine 0>:<port>.")
    cfg = build_config(args.config_file, args.opts)
    check_model_config(cfg, args.config_file)
    if args.eval_only and not cfg.MODEL.WEIGHTS and not args.resume:
        raise SetupError(
            "--eval-only needs trained weights: pass MODEL.WEIGHTS path/to/model.pth "
            f"or --resume to load the last checkpoint in OUTPUT_DIR ({cfg.OUTPUT_DIR})."
        )
    if cfg.MODEL.WEIGHTS and _is_local_path(cfg.MODEL.WEIGHTS) and not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise SetupError(f"MODEL.WEIGHTS '{cfg.MODEL.WEIGHTS}' not found.")
    if not args.eval_only and not cfg.DATASETS.TRAIN:
        raise SetupError(
            f"'{args.config_file}' names no training data: pass --train-dir DIR "
            "(a folder of images and label images, or with one COCO json)."
        )
    return cfg


def build_parser():
    """Detectron2's training arguments plus the folders of a lab's own data."""
    parser = default_argument_parser()
    parser.add_argument(
        "--train-dir", metavar="DIR",
        help="folder of training images with instance label images (<name>_masks.tif, "
             "<name>_labels.tif, or a labels/ subfolder) or one COCO json; sets "
             "DATASETS.TRAIN_DIR and trains on it (see README, 'Train on your own data')",
    )
    parser.add_argument(
        "--val-dir", metavar="DIR",
        help="folder of evaluation images, same layouts; sets DATASETS.TEST_DIR",
    )
    return parser


def parse_args(argv=None):
    """Parsed command line; a missing ``--config-file`` or an option written after the
    ``KEY VALUE`` overrides (where argparse would take it as an override) is a
    :class:`SetupError`."""
    args = build_parser().parse_args(argv)
    if not args.config_file:
        raise SetupError("--config-file is required, e.g. "
                         "python train_net.py --config-file configs/demo/iaunet_R50.yaml")
    flags = [o for o in args.opts if o.startswith("--")]
    if flags:
        raise SetupError(f"options go before the KEY VALUE overrides: write {flags[0]} before "
                         f"{args.opts[0]} (got '{' '.join(args.opts)}').")
    # Absolute paths, so that the saved config.yaml works from any folder.
    keys = set(args.opts[::2])
    for flag, key in ((args.train_dir, "DATASETS.TRAIN_DIR"), (args.val_dir, "DATASETS.TEST_DIR")):
        if flag:
            args.opts = list(args.opts) + [key, os.path.abspath(os.path.expanduser(flag))]
    # Own data without --val-dir is not evaluated on the config file's test set (the
    # demo's synthetic cells, say), which the user did not give.
    args.cleared_test = bool(args.train_dir and not args.val_dir
                             and not keys & {"DATASETS.TEST", "DATASETS.TEST_DIR"})
    if args.cleared_test:
        args.opts = list(args.opts) + ["DATASETS.TEST", "()"]
    return args


def _last_line(error):
    """The message of an error raised in a worker (the data loader adds its traceback)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def cli(argv=None):
    try:
        args = parse_args(argv)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Data preparation (label conversion, pixel statistics) reports here, before the
    # run's own log exists.
    project_logger = logging.getLogger("iaunet_d2")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("[%(asctime)s %(name)s]: %(message)s", "%m/%d %H:%M:%S"))
    project_logger.addHandler(console)
    project_logger.setLevel(logging.INFO)
    try:
        cfg = check_before_launch(args)
    except (SetupError, ConfigError, DatasetNotFoundError, DatasetError, PixelStatsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        project_logger.removeHandler(console)
    if args.cleared_test:
        print(f"note: no --val-dir: training on {args.train_dir} without evaluation "
              "(DATASETS.TEST cleared); add --val-dir DIR to evaluate.", file=sys.stderr)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            # CPU runs use gloo; otherwise NCCL on CUDA, as Detectron2 does.
            backend="gloo" if cfg.MODEL.DEVICE == "cpu" else None,
        )
    except (DatasetError, CheckpointReadError) as e:
        # Bad data or weights (WeightsMismatchError included): the user's to fix.
        print(f"error: {_last_line(e)}", file=sys.stderr)
        return 2
    except CheckpointWriteError as e:
        # The traceback is in OUTPUT_DIR/log.txt; end with the one line that says what to do.
        print(f"error: {e} Continue with: {_resume_command(args)}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"interrupted: {e.where} Continue with: {_resume_command(args)}", file=sys.stderr)
        return 130
    return 0


def _resume_command(args):
    """The command that continues this run from its last checkpoint."""
    argv = ["--config-file", args.config_file, "--resume"]
    if args.num_gpus != 1:
        argv += ["--num-gpus", str(args.num_gpus)]
    return "python train_net.py " + shlex.join([*argv, *args.opts])


if __name__ == "__main__":
    sys.exit(cli())
