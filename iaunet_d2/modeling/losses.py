"""Loss functions and targets of the set criteria: point-wise mask losses and the point
sampling they use, the IoUs of matched masks (IoU-aware class targets), per-pixel
foreground/border targets and the centre L1 loss. Shapes are given per function; every
loss is summed over masks and divided by the number of target masks, as the set
criterion normalises them.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from .matcher import mask_centroids, pixel_index_to_coords, sample_logits_at

__all__ = [
    "center_l1_loss",
    "dense_targets",
    "dice_loss",
    "matched_mask_ious",
    "sample_points_with_importance",
    "sigmoid_bce_loss",
]


def sigmoid_bce_loss(pred: torch.Tensor, target: torch.Tensor, num_masks: torch.Tensor):
    """Sum over masks of the mean point-wise sigmoid BCE, divided by ``num_masks``.

    Args:
        pred: (K, P) logits; target: (K, P) values in [0, 1]; num_masks: scalar.
    Returns:
        scalar.
    """
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(pred: torch.Tensor, target: torch.Tensor, num_masks: torch.Tensor):
    """Sum over masks of ``1 - (2|p.t| + 1) / (|p| + |t| + 1)``, divided by ``num_masks``.

    Args:
        pred: (K, P) logits; target: (K, P) values in [0, 1]; num_masks: scalar.
    Returns:
        scalar.
    """
    prob = pred.sigmoid()
    numerator = 2.0 * (prob * target).sum(-1)
    denominator = prob.sum(-1) + target.sum(-1)
    loss = 1.0 - (numerator + 1.0) / (denominator + 1.0)
    return loss.sum() / num_masks


@torch.no_grad()
def sample_points_with_importance(
    mask_logits: torch.Tensor,
    height: int,
    width: int,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Choose ``num_points`` pixel centres of a ``height x width`` grid per mask.

    Args:
        mask_logits: (K, h, w) predicted logits (any resolution covering the same extent).
    Returns:
        int64 (K, num_points) flat pixel indices into the ``height x width`` grid.
    """
    num_masks = mask_logits.shape[0]
    device = mask_logits.device
    num_important = int(importance_sample_ratio * num_points)
    num_uniform = num_points - num_important
    parts = []
    if num_important > 0:
        num_candidates = max(int(num_points * oversample_ratio), num_important)
        candidates = torch.randint(height * width, (num_masks, num_candidates), device=device)
        logits = sample_logits_at(
            mask_logits[:, None].float(), pixel_index_to_coords(candidates, height, width)
        )[:, 0]
        # Uncertainty = -|logit|: the points where the prediction is least decided.
        top = torch.topk(-logits.abs(), k=num_important, dim=1).indices
        parts.append(torch.gather(candidates, 1, top))
    if num_uniform > 0:
        parts.append(torch.randint(height * width, (num_masks, num_uniform), device=device))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def matched_mask_ious(
    pred_masks: torch.Tensor,
    targets: List[Dict[str, torch.Tensor]],
    indices: List[Tuple[torch.Tensor, torch.Tensor]],
) -> List[torch.Tensor]:
    """IoU of each matched query's mask (logit > 0) with its target, both on the
    prediction grid (targets average-pooled from the padded input size, > 0.5).

    Args:
        pred_masks: (B, N, h, w) logits.
    Returns:
        per image, float32 (K,) IoUs in the order of ``indices``.
    """
    ious = []
    for b, ((pred_idx, tgt_idx), target) in enumerate(zip(indices, targets)):
        pred = pred_masks[b][pred_idx.to(pred_masks.device)] > 0  # (K, h, w)
        tgt = target["masks"][tgt_idx.to(target["masks"].device)][:, None].float()
        tgt = F.adaptive_avg_pool2d(tgt, pred.shape[-2:])[:, 0].to(pred.device) > 0.5
        inter = (pred & tgt).flatten(1).sum(1).float()
        union = (pred | tgt).flatten(1).sum(1).float()
        ious.append(torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union)))
    return ious


def dense_targets(targets: List[Dict[str, torch.Tensor]], size: Tuple[int, int]) -> torch.Tensor:
    """Per-pixel foreground and border targets, (B, 2, h, w) in [0, 1].

    Foreground: the union of an image's masks; borders: pixels of a mask with a
    4-neighbour outside it (so touching cells are separated by their borders). Both
    are computed at the padded input resolution, then average-pooled to ``size``
    (exact: the padded size is a multiple of 4).
    """
    maps = []
    for target in targets:
        masks = target["masks"]  # (M, H, W)
        if masks.shape[0] == 0:
            maps.append(masks.new_zeros((2,) + tuple(masks.shape[-2:])))
            continue
        fg = masks.amax(0)
        # Erosion by a plus-shaped element: min over the 4-neighbours (outside = 0).
        padded = F.pad(masks, (1, 1, 1, 1))
        eroded = torch.minimum(
            torch.minimum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]),
            torch.minimum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]),
        ) * masks
        border = (masks - eroded).amax(0)
        maps.append(torch.stack([fg, border]))
    return F.adaptive_avg_pool2d(torch.stack(maps).float(), size)


def center_l1_loss(
    pred_centers: torch.Tensor,
    targets: List[Dict[str, torch.Tensor]],
    indices: List[Tuple[torch.Tensor, torch.Tensor]],
    num_masks: torch.Tensor,
) -> torch.Tensor:
    """L1 distance of the matched queries' centres from their targets' centroids,
    summed and divided by ``num_masks``.

    Args:
        pred_centers: (B, N, 2) (x, y) in [0, 1] of the padded image.
    """
    total = pred_centers.sum() * 0.0  # a gradient for every parameter (DDP)
    for b, ((pred_idx, tgt_idx), target) in enumerate(zip(indices, targets)):
        if pred_idx.numel() == 0:
            continue
        centres = mask_centroids(target["masks"][tgt_idx.to(target["masks"].device)])
        pred = pred_centers[b][pred_idx.to(pred_centers.device)].float()
        total = total + (pred - centres.to(pred.device)).abs().sum()
    return total / num_masks
