"""Every config key that iaunet_d2 adds to Detectron2's defaults, declared once."""
from detectron2.config import CfgNode as CN

__all__ = ["REMOVED_KEYS", "RETIRED_KEYS", "add_iaunet_config", "apply_pretrained_policy"]

# Keys of earlier versions that saved configs (OUTPUT_DIR/config.yaml) may still name;
# iaunet_d2.engine.build_config drops them with a warning. Key -> (the key whose value
# it must equal, or None: any value is dropped; why it is gone).
RETIRED_KEYS = {
    "MODEL.IAUNET.HIDDEN_DIM": ("MODEL.IAUNET.CONV_DIM",
                                "MODEL.IAUNET.CONV_DIM sets the width of both decoders"),
    "MODEL.IAUNET.IA_PRIOR_PROB": (None, "it set a constant bias of the instance-activation "
                                         "logits, which their softmax cancels"),
}


# Keys of the project's earlier IAUNet variant that are gone: naming one is an error that
# says where its option went (key -> the message's tail).
_TO_PLUS = "moved to MODEL.IAUNET.PLUS (the IAUNet+ variant, configs iaunet_plus_*.yaml)"
REMOVED_KEYS = {
    "MODEL.IAUNET.DEEP_SUPERVISION": _TO_PLUS,
    "MODEL.IAUNET.QUERY_CONTENT_EMBED": _TO_PLUS,
    "MODEL.IAUNET.HEAD_INIT_STD": _TO_PLUS,
    "MODEL.IAUNET.MASK_FEATURE_POS": _TO_PLUS,
    "MODEL.IAUNET.ANCHOR_POINTS": _TO_PLUS,
    "MODEL.IAUNET.ANCHOR_SIGMA": _TO_PLUS,
    "MODEL.IAUNET.ACTIVATION_COST": _TO_PLUS,
    "MODEL.IAUNET.ACTIVATION_MAP_WEIGHT": _TO_PLUS + " as ACTIVATION_LOSS",
    "MODEL.IAUNET.MASK_HEAD": _TO_PLUS + " as DYNAMIC_MASK_HEAD (True/False)",
    "MODEL.IAUNET.DYNAMIC_MASK_CHANNELS": _TO_PLUS,
    "MODEL.IAUNET.DYNAMIC_MASK_LAYERS": _TO_PLUS,
    "MODEL.IAUNET.DYNAMIC_MASK_UPSAMPLE": _TO_PLUS,
    "MODEL.IAUNET.AUX_MASK_FEATURES": "removed: auxiliary masks use the final mask features",
    "MODEL.IAUNET.QUERY_LAYERS_PER_LEVEL": "removed (it did not help)",
    "MODEL.IAUNET.CENTER_PRIOR": "removed (it did not help)",
    "MODEL.IAUNET.CENTER_WEIGHT": "removed (it did not help)",
    "MODEL.IAUNET.IOU_AWARE_CLASS": "removed (it did not help)",
    "MODEL.IAUNET.DENSE_WEIGHT": "removed (it did not help)",
    "MODEL.IAUNET.MASK_LOSS": "removed: mask losses are on sampled points",
}


def add_iaunet_config(cfg):
    """Add the project's keys to a Detectron2 config (in place).

    Safe to call on a config that already has PointRend's keys. Values here are the
    defaults; the yaml files in ``configs/`` set the recipes.
    """
    # ---------------------------------------------------------------- input / data
    # Name in iaunet_d2.data.dataset_mappers.MAPPER_REGISTRY.
    cfg.INPUT.DATASET_MAPPER_NAME = "cell_instance"
    # Longest image side after resizing (train and test), and the training crop size.
    cfg.INPUT.IMAGE_SIZE = 512
    # Scale jitter applied on top of the longest-side resize during training.
    cfg.INPUT.MIN_SCALE = 0.8
    cfg.INPUT.MAX_SCALE = 1.5
    # Random flips used in training: any of "horizontal", "vertical".
    cfg.INPUT.FLIPS = ["horizontal", "vertical"]
    # Random 90-degree rotations in training (the authors' extra augmentation).
    cfg.INPUT.ROTATE_90 = False
    # How images that are not 8-bit are mapped to 0..255 (training, evaluation,
    # prediction): "percentile" (1st..99.8th per image), "minmax" (per image) or
    # "fixed:LOW,HIGH" (one range for all); see iaunet_d2.data.image_io.
    cfg.INPUT.INTENSITY_NORM = "percentile"
    # Take MODEL.PIXEL_MEAN / PIXEL_STD from the first training dataset: its metadata,
    # else measured on its images (cached). MODEL.PIXEL_MEAN/STD set by the user win.
    # Turned off in the resolved config, which then holds the values.
    cfg.INPUT.PIXEL_STATS_FROM_DATASET = True
    # A lab's own data: a folder of images with label images (or one COCO json)
    # registered as "folder_train" / "folder_val", replacing DATASETS.TRAIN / TEST.
    cfg.DATASETS.TRAIN_DIR = ""
    cfg.DATASETS.TEST_DIR = ""

    # ---------------------------------------------------------------- solver
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0  # lr multiplier for backbone parameters
    # Replaces BACKBONE_MULTIPLIER when MODEL.WEIGHTS is set (a pretrained backbone is
    # fine-tuned at a lower lr, as Mask2Former's recipe and the IAUNet authors' code do).
    cfg.SOLVER.PRETRAINED_BACKBONE_MULTIPLIER = 1.0
    cfg.SOLVER.BASE_LR_END = 1e-6  # final lr of the cosine schedule
    # Weight decay of nn.Embedding parameters (learned queries and their positional
    # embeddings); SOLVER.WEIGHT_DECAY applies to the rest (norms: WEIGHT_DECAY_NORM).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Gradient clipping: Detectron2's SOLVER.CLIP_GRADIENTS keys, plus the clip type
    # "full_model" (one global norm over all parameters) handled by iaunet_d2.

    # ---------------------------------------------------------------- evaluation
    # COCO tasks to evaluate; TEST.DETECTIONS_PER_IMAGE also caps the evaluator.
    cfg.TEST.EVAL_TASKS = ["segm", "bbox"]

    # ---------------------------------------------------------------- backbones
    # Used when MODEL.WEIGHTS is set (fine-tuning from ImageNet); without weights the
    # yaml's MODEL.RESNETS.NORM (trainable BN/GN) and MODEL.BACKBONE.FREEZE_AT apply.
    cfg.MODEL.BACKBONE.PRETRAINED_NORM = "FrozenBN"
    cfg.MODEL.BACKBONE.PRETRAINED_FREEZE_AT = 2

    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.TIMM_NAME = "swin_small_patch4_window7_224"
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Path to a timm/torchvision Swin state dict to initialise from ("" = scratch).
    cfg.MODEL.SWIN.WEIGHTS = ""

    # ---------------------------------------------------------------- IAUNet
    cfg.MODEL.IAUNET = CN()
    cfg.MODEL.IAUNET.NUM_CLASSES = 1
    cfg.MODEL.IAUNET.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.IAUNET.PIXEL_DECODER_NAME = "IAUNetPixelDecoder"
    cfg.MODEL.IAUNET.TRANSFORMER_DECODER_NAME = "IAUNetTransformerDecoder"
    cfg.MODEL.IAUNET.CRITERION_NAME = "IAUNetSetCriterion"
    cfg.MODEL.IAUNET.SIZE_DIVISIBILITY = 32
    # Pixel decoder. CONV_DIM is also the width of the transformer decoder (its queries
    # are pooled from, and attend to, the pixel decoder's features).
    cfg.MODEL.IAUNET.CONV_DIM = 256
    cfg.MODEL.IAUNET.MASK_DIM = 256
    cfg.MODEL.IAUNET.NORM = "BN"
    cfg.MODEL.IAUNET.BRANCH_FUSION = "add"  # "add" or "concat" of main + previous branch
    cfg.MODEL.IAUNET.BRIDGE = False  # extra up-block + SE on the top backbone level
    # Instance activation layer and transformer decoder
    cfg.MODEL.IAUNET.NUM_QUERIES = 100
    cfg.MODEL.IAUNET.NHEADS = 8
    cfg.MODEL.IAUNET.DIM_FEEDFORWARD = 2048
    cfg.MODEL.IAUNET.DROPOUT = 0.0
    cfg.MODEL.IAUNET.PRE_NORM = False
    # Criterion and matcher
    cfg.MODEL.IAUNET.CLASS_WEIGHT = 1.0
    cfg.MODEL.IAUNET.DICE_WEIGHT = 2.0
    cfg.MODEL.IAUNET.MASK_WEIGHT = 5.0
    cfg.MODEL.IAUNET.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.IAUNET.TRAIN_NUM_POINTS = 112 * 112
    # Inference
    cfg.MODEL.IAUNET.TEST = CN()
    cfg.MODEL.IAUNET.TEST.SCORE_THRESH = 0.01
    cfg.MODEL.IAUNET.TEST.MASK_THRESH = 0.5
    cfg.MODEL.IAUNET.TEST.NMS_IOU = 0.8
    # Mixed precision for inference: "" (fp32), "bf16" or "fp16" (torch.autocast on the
    # model's device; meant for CUDA). Post-processing always runs in fp32.
    cfg.MODEL.IAUNET.TEST.AMP = ""

    # ---------------------------------------------------------------- IAUNet+
    # The project's variant of IAUNet (not the paper's model): additions for faster
    # convergence from scratch, all off unless ENABLED (configs iaunet_plus_*.yaml).
    # With ENABLED False these keys must keep their defaults (checked when the model is
    # built), so that a config cannot believe it trains something it does not.
    cfg.MODEL.IAUNET.PLUS = CN()
    cfg.MODEL.IAUNET.PLUS.ENABLED = False
    # Every decoder layer predicts and is supervised (auxiliary losses on the final
    # 1/4-resolution mask features, as Mask2Former); the paper supervises the last only.
    cfg.MODEL.IAUNET.PLUS.DEEP_SUPERVISION = True
    # A learnable per-slot content embedding added to each level's IA queries.
    cfg.MODEL.IAUNET.PLUS.QUERY_CONTENT_EMBED = True
    # Normal init (this std) of the class and kernel heads, zero biases (paper: PyTorch's).
    cfg.MODEL.IAUNET.PLUS.HEAD_INIT_STD = 0.01
    # The pixels' sine positional embedding added to the final mask features.
    cfg.MODEL.IAUNET.PLUS.MASK_FEATURE_POS = True
    # A learned anchor point per query slot (initialised evenly over the INPUT.IMAGE_SIZE
    # square) with a Gaussian prior on its IA logits; ANCHOR_SIGMA is the prior's std in
    # units of the mean anchor spacing, INPUT.IMAGE_SIZE / sqrt(NUM_QUERIES).
    cfg.MODEL.IAUNET.PLUS.ANCHOR_POINTS = True
    cfg.MODEL.IAUNET.PLUS.ANCHOR_SIGMA = 0.5
    # Matching cost and loss weight of a query's activation maps against a target:
    # -log of the maps' mass inside the target mask (the paper: neither).
    cfg.MODEL.IAUNET.PLUS.ACTIVATION_COST = 1.0
    cfg.MODEL.IAUNET.PLUS.ACTIVATION_LOSS = 1.0
    # The dynamic mask head instead of the paper's kernel dot product: a per-query MLP
    # (DYNAMIC_MASK_LAYERS layers of DYNAMIC_MASK_CHANNELS) over projected mask features
    # and each pixel's offset from the query's activation-map centroid (in tenths of
    # INPUT.IMAGE_SIZE), run on the projected features upsampled DYNAMIC_MASK_UPSAMPLE x.
    cfg.MODEL.IAUNET.PLUS.DYNAMIC_MASK_HEAD = True
    cfg.MODEL.IAUNET.PLUS.DYNAMIC_MASK_CHANNELS = 8
    cfg.MODEL.IAUNET.PLUS.DYNAMIC_MASK_LAYERS = 3
    cfg.MODEL.IAUNET.PLUS.DYNAMIC_MASK_UPSAMPLE = 2

    # ---------------------------------------------------------------- Mask2Former
    # The query-based baseline (META_ARCHITECTURE "Mask2Former"); defaults are
    # Mask2Former's instance-segmentation settings.
    cfg.MODEL.MASK2FORMER = CN()
    cfg.MODEL.MASK2FORMER.NUM_CLASSES = 1
    # Backbone levels used: the deformable encoder's (1/8..1/32) plus the finer ones
    # (res2) that the FPN step turns into the 1/4 mask features.
    cfg.MODEL.MASK2FORMER.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    # Levels encoded by the deformable-attention encoder (and attended by the decoder).
    cfg.MODEL.MASK2FORMER.DEFORMABLE_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.MASK2FORMER.SIZE_DIVISIBILITY = 32
    # Pixel decoder: width (a multiple of 32: GroupNorm(32)), mask-feature width and
    # the norm of the FPN convs.
    cfg.MODEL.MASK2FORMER.CONV_DIM = 256
    cfg.MODEL.MASK2FORMER.MASK_DIM = 256
    cfg.MODEL.MASK2FORMER.NORM = "GN"
    # Deformable encoder: layers, FFN width and sampling points per head and level.
    cfg.MODEL.MASK2FORMER.ENC_LAYERS = 6
    cfg.MODEL.MASK2FORMER.ENC_DIM_FEEDFORWARD = 1024
    cfg.MODEL.MASK2FORMER.ENC_NUM_POINTS = 4
    # Transformer decoder (NHEADS also sets the encoder's heads; DROPOUT both).
    cfg.MODEL.MASK2FORMER.NUM_QUERIES = 100
    cfg.MODEL.MASK2FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK2FORMER.NHEADS = 8
    cfg.MODEL.MASK2FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK2FORMER.DROPOUT = 0.0
    # Masked-attention layers; predictions come before the first and after every
    # layer, i.e. DEC_LAYERS + 1 of them.
    cfg.MODEL.MASK2FORMER.DEC_LAYERS = 9
    # Supervise every prediction (losses with suffixes _0.._{DEC_LAYERS-1}), not just the last.
    cfg.MODEL.MASK2FORMER.DEEP_SUPERVISION = True
    # Matching costs and loss weights (the same values serve both).
    cfg.MODEL.MASK2FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK2FORMER.MASK_WEIGHT = 5.0
    cfg.MODEL.MASK2FORMER.DICE_WEIGHT = 5.0
    cfg.MODEL.MASK2FORMER.NO_OBJECT_WEIGHT = 0.1
    # Points per mask for matching and losses, and the importance sampling of the loss
    # points (OVERSAMPLE_RATIO x candidates, IMPORTANCE_SAMPLE_RATIO of them uncertain).
    cfg.MODEL.MASK2FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK2FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK2FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Inference keeps the TEST.DETECTIONS_PER_IMAGE best (query, class) pairs; a mask is
    # the pixels with probability > MASK_THRESH.
    cfg.MODEL.MASK2FORMER.TEST = CN()
    cfg.MODEL.MASK2FORMER.TEST.MASK_THRESH = 0.5


def apply_pretrained_policy(cfg):
    """Pick backbone normalization and freezing from whether weights are given.

    With ``MODEL.WEIGHTS`` set (ImageNet-initialised fine-tuning, the paper's setup)
    the ResNet uses ``MODEL.BACKBONE.PRETRAINED_NORM``, freezes stages up to
    ``MODEL.BACKBONE.PRETRAINED_FREEZE_AT`` and the backbone's lr is scaled by
    ``SOLVER.PRETRAINED_BACKBONE_MULTIPLIER``. Without weights the yaml's trainable
    normalization and ``FREEZE_AT`` are kept, because frozen statistics of a random
    network would never learn. The config must not be frozen.
    """
    if cfg.MODEL.WEIGHTS:
        cfg.MODEL.RESNETS.NORM = cfg.MODEL.BACKBONE.PRETRAINED_NORM
        cfg.MODEL.BACKBONE.FREEZE_AT = cfg.MODEL.BACKBONE.PRETRAINED_FREEZE_AT
        cfg.SOLVER.BACKBONE_MULTIPLIER = cfg.SOLVER.PRETRAINED_BACKBONE_MULTIPLIER
