"""Small, fast IAUNet configs and synthetic batches for CPU tests."""
from typing import Dict, List, Optional, Sequence, Tuple

import iaunet_d2  # noqa: F401  (compatibility fixes and registrations first)
import torch
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Instances

from iaunet_d2 import add_iaunet_config
from iaunet_d2.modeling.transformer_decoder import build_transformer_decoder

__all__ = [
    "small_iaunet_cfg", "small_transformer_decoder", "synthetic_instances", "synthetic_batch",
]


def small_resnet18_cfg(meta_architecture):
    """The project's config on CPU with a trainable ResNet-18 backbone and no weights."""
    cfg = get_cfg()
    add_iaunet_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    return cfg


def small_iaunet_cfg(plus=None, **iaunet_overrides):
    """A tiny CPU IAUNet config: ResNet-18 (trainable BN), 32-wide decoder, 6 queries.

    Keyword arguments override ``MODEL.IAUNET.<KEY>`` (e.g. ``BRIDGE=True``). ``plus``:
    None for the paper's model, True for IAUNet+ with its defaults, or a dict of
    ``MODEL.IAUNET.PLUS`` keys for IAUNet+ with those changed.
    """
    cfg = small_resnet18_cfg("IAUNet")
    ia = cfg.MODEL.IAUNET
    ia.NUM_CLASSES = 1
    ia.CONV_DIM = 32
    ia.MASK_DIM = 16
    ia.NUM_QUERIES = 6
    ia.NHEADS = 4
    ia.DIM_FEEDFORWARD = 64
    ia.TRAIN_NUM_POINTS = 256
    for key, value in iaunet_overrides.items():
        setattr(ia, key, value)
    if plus is not None:
        ia.PLUS.ENABLED = True
        for key, value in (plus if isinstance(plus, dict) else {}).items():
            setattr(ia.PLUS, key, value)
    cfg.TEST.DETECTIONS_PER_IMAGE = 6
    return cfg


def small_transformer_decoder(cfg):
    """The transformer decoder of ``cfg`` alone, at the widths its pixel decoder has."""
    ia = cfg.MODEL.IAUNET
    return build_transformer_decoder(cfg, in_channels=ia.CONV_DIM, mask_dim=ia.MASK_DIM,
                                     level_strides=[32, 16, 8, 4])


def synthetic_instances(
    height: int, width: int, num_instances: int, generator: torch.Generator, num_classes: int = 1
) -> Instances:
    """Random axis-aligned rectangles as ground truth at (height, width)."""
    masks = torch.zeros((num_instances, height, width), dtype=torch.bool)
    for k in range(num_instances):
        y0 = int(torch.randint(0, height - 8, (1,), generator=generator))
        x0 = int(torch.randint(0, width - 8, (1,), generator=generator))
        h = int(torch.randint(4, 16, (1,), generator=generator))
        w = int(torch.randint(4, 16, (1,), generator=generator))
        masks[k, y0 : y0 + h, x0 : x0 + w] = True
    inst = Instances((height, width))
    inst.gt_classes = torch.randint(0, num_classes, (num_instances,), generator=generator)
    inst.gt_masks = BitMasks(masks)
    return inst


def synthetic_batch(
    sizes: Sequence[Tuple[int, int]],
    num_instances: Sequence[int],
    output_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    seed: int = 0,
) -> List[Dict]:
    """Detectron2-style batched inputs with uint8 (3, H, W) images and instances.

    Args:
        sizes: (H, W) of each image.
        num_instances: ground-truth instance count per image (0 allowed).
        output_sizes: optional "height"/"width" per image (the original image size).
    """
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for i, ((h, w), m) in enumerate(zip(sizes, num_instances)):
        inst = synthetic_instances(h, w, m, gen)
        image = torch.randint(0, 60, (3, h, w), generator=gen, dtype=torch.uint8)
        # Brighter objects, so that the images carry some signal.
        fg = inst.gt_masks.tensor.any(0)
        image[:, fg] += 150
        record = {"image": image, "instances": inst}
        if output_sizes is not None:
            record["height"], record["width"] = output_sizes[i]
        batch.append(record)
    return batch
