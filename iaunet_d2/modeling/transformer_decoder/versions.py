"""How checkpoints of earlier versions of the IAUNet transformer decoder load.

Versions (``IAUNetTransformerDecoder._version``, saved in a state dict's metadata):

1. the paper's decoder: IA queries only, masks from the mask features alone;
2. a per-slot content embedding added to the IA queries, and the pixels' positional
   embedding added to the mask features;
3. per-slot anchor points and the center prior, both on by default;
4. the dynamic mask head by default (``MODEL.IAUNET.MASK_HEAD "dynamic"``), the
   center prior off by default, and the anchor prior's width (``anchor_sigma``) saved.

A checkpoint is loaded as it was trained: parts it has no weights for are switched off
(or, for the content embedding, set to zero, which adds nothing).
"""
import logging
import math
from typing import Dict, Optional

import torch
from torch import nn

__all__ = ["match_checkpoint_version"]

logger = logging.getLogger(__name__)


def match_checkpoint_version(decoder, state_dict: Dict, prefix: str, version: Optional[int]) -> None:
    """Adapt ``decoder`` (and, for version 1, ``state_dict`` in place) to a checkpoint
    saved with ``version`` (None: unknown, e.g. converted from elsewhere, treated as 1).

    Called from the decoder's ``_load_from_state_dict`` before its weights load.
    """
    old = version is None or version < 2
    dropped = []
    content_key = prefix + "query_content.weight"
    if old and content_key not in state_dict:
        if decoder.query_content is not None:
            state_dict[content_key] = torch.zeros_like(decoder.query_content.weight)
        if decoder.mask_pe is not None:
            decoder.mask_pe = None
            dropped.append("mask positional features")
    if version is None or version < 3:
        if decoder.anchors is not None and prefix + "anchors.weight" not in state_dict:
            decoder.anchors = None
            decoder.anchor_sigma = None  # a buffer: None leaves the state dict
            dropped.append("anchor points")
        if decoder.center_scale is not None and prefix + "center_scale.weight" not in state_dict:
            decoder.center_scale = None
            dropped.append("center prior")
    if version is None or version < 4:
        sigma_key = prefix + "anchor_sigma"
        if decoder.anchors is not None and sigma_key not in state_dict:
            # Earlier versions did not save it; they all trained with ANCHOR_SIGMA 1.0.
            state_dict[sigma_key] = torch.tensor(1.0 / math.sqrt(decoder.num_queries))
            if not math.isclose(float(decoder.anchor_sigma), float(state_dict[sigma_key])):
                logger.warning(
                    "The transformer decoder checkpoint (version %s) predates saved anchor "
                    "widths: its anchor prior is taken as trained with ANCHOR_SIGMA 1.0.",
                    version,
                )
        scale_key = prefix + "center_scale.weight"
        if decoder.center_scale is None and scale_key in state_dict:
            # Trained with the center prior (on by default in version 3): keep it.
            decoder.center_scale = nn.Linear(state_dict[scale_key].shape[1], 1).to(
                decoder.head_fc.weight.device
            )
            logger.warning(
                "The transformer decoder checkpoint (version %s) was trained with the "
                "center prior: switched on, as it was trained.", version,
            )
    kernel_key = prefix + "kernel_embed.weight"
    if (version is None or version < 4) and decoder.dynamic_mask is not None \
            and kernel_key in state_dict:
        # Trained with the linear head: rebuild it at the checkpoint's width.
        out_features, in_features = state_dict[kernel_key].shape
        device = decoder.dynamic_mask.controller.weight.device
        decoder.dynamic_mask = None
        decoder.kernel_embed = nn.Linear(in_features, out_features).to(device)
        dropped.append("the dynamic mask head (its linear kernels restored)")
    if dropped:
        logger.warning(
            "Loading a transformer decoder checkpoint of version %s, trained without %s: "
            "switched off, as it was trained.", version, ", ".join(dropped),
        )
