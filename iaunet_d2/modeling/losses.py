"""Loss functions of the set criteria: point-wise mask losses and the point sampling
they use. Shapes are given per function; every loss is summed over masks and divided by
the number of target masks, as the set criterion normalises them.
"""
import torch
import torch.nn.functional as F

from .matcher import pixel_index_to_coords, sample_logits_at

__all__ = [
    "dice_loss",
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
