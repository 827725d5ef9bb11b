"""Small, fast training settings shared by the engine tests."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MASK_RCNN = os.path.join(REPO_ROOT, "configs", "demo", "mask_rcnn_R50.yaml")
DEMO_POINTREND = os.path.join(REPO_ROOT, "configs", "demo", "pointrend_R50.yaml")


def tiny_rcnn_opts(output_dir, max_iter=3, **overrides):
    """Command-line style overrides that shrink a demo R-CNN config to seconds on CPU:
    ResNet-18, slim FPN and heads (a checkpoint with its AdamW moments is ~140 MB instead
    of ~370 MB), 96-pixel inputs, batch 2, no data-loader workers."""
    opts = {
        "MODEL.DEVICE": "cpu",
        "MODEL.RESNETS.DEPTH": 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
        "MODEL.FPN.OUT_CHANNELS": 64,
        "MODEL.ROI_BOX_HEAD.FC_DIM": 128,
        "MODEL.ROI_MASK_HEAD.CONV_DIM": 64,
        "MODEL.ROI_MASK_HEAD.FC_DIM": 128,  # PointRend's coarse head
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": 100,
        "MODEL.RPN.POST_NMS_TOPK_TEST": 100,
        "INPUT.IMAGE_SIZE": 96,
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.MAX_ITER": max_iter,
        "SOLVER.WARMUP_ITERS": 1,
        "SOLVER.CHECKPOINT_PERIOD": 1000,
        "DATALOADER.NUM_WORKERS": 0,
        "TEST.EVAL_PERIOD": 0,
        "OUTPUT_DIR": str(output_dir),
    }
    opts.update(overrides)
    flat = []
    for key, value in opts.items():
        flat += [key, str(value)]
    return flat


def save_random_model(path, config, opts):
    """Save a freshly built (random, seed 0) model of ``config`` as a Detectron2-style
    checkpoint; returns the path."""
    import torch
    from detectron2.modeling import build_model

    from iaunet_d2.config import build_config

    torch.manual_seed(0)
    model = build_model(build_config(config, opts, prepare_data=False))
    torch.save({"model": model.state_dict()}, path)
    return str(path)
