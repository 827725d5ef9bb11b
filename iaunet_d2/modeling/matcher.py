"""Hungarian matching between IAUNet's N query predictions and the M ground-truth masks.

The matching cost mirrors the training losses (paper, section 7):

    C = cost_class * C_cls + cost_dice * C_dice + cost_mask * C_bce

with ``C_cls = -p(target class)`` and the two mask costs evaluated on a random set of
points shared by every prediction and every target of an image, so that an N x M x H x W
tensor is never built.

Points are drawn uniformly among the pixel centres of the target grid (the padded input
resolution). Predictions, which live on a coarser grid (1/4), are read there by bilinear
interpolation with ``align_corners=False`` and border padding: exactly the value the 4x
upsampling done at inference gives that pixel (zero padding would pull the outermost
pixels towards logit 0). Targets are read without interpolation, so they stay binary
and a perfect prediction has zero cost / loss (bilinear reads of a binary mask give soft
0..1 targets at borders, whose BCE can never reach zero).
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import point_sample

from .iaunet_plus import plus_options

__all__ = [
    "HungarianMatcher",
    "sample_pixel_centers",
    "pixel_index_to_coords",
    "compute_cost_matrix",
    "linear_assignment",
    "batch_dice_cost",
    "batch_sigmoid_bce_cost",
    "sample_logits_at",
]


def pixel_index_to_coords(index: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flat pixel indices -> normalized point coordinates of the pixel centres.

    Args:
        index: int64 (..., P) indices into a row-major ``height x width`` grid.
    Returns:
        float32 (..., P, 2) coordinates in [0, 1]^2, (x, y) order as ``point_sample`` expects.
    """
    rows = torch.div(index, width, rounding_mode="floor")
    cols = index - rows * width
    x = (cols.to(torch.float32) + 0.5) / width
    y = (rows.to(torch.float32) + 0.5) / height
    return torch.stack([x, y], dim=-1)


def sample_logits_at(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear read of mask logits at normalized points, as ``F.interpolate`` upsamples.

    Args:
        masks: (B, C, h, w); coords: (B, P, 2) in [0, 1]^2, (x, y) order.
    Returns:
        (B, C, P).
    """
    return point_sample(masks, coords, align_corners=False, padding_mode="border")


def sample_pixel_centers(
    num_points: int, height: int, width: int, device=None, shape_prefix: Sequence[int] = ()
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw pixel centres of a ``height x width`` grid uniformly (with replacement).

    Returns:
        index: int64 (*shape_prefix, num_points) flat pixel indices (to gather targets).
        coords: float32 (*shape_prefix, num_points, 2) their [0, 1]^2 (x, y) coordinates.
    """
    index = torch.randint(height * width, (*shape_prefix, num_points), device=device)
    return index, pixel_index_to_coords(index, height, width)


def batch_sigmoid_bce_cost(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid-BCE over points for every (prediction, target) pair.

    Args:
        pred: (N, P) mask logits at the points.
        target: (M, P) target values in [0, 1] at the same points.
    Returns:
        (N, M) cost.
    """
    num_points = pred.shape[1]
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): linear in t, so two matmuls
    # give all pairs at once.
    pos = F.softplus(-pred)
    neg = F.softplus(pred)
    return (pos @ target.T + neg @ (1.0 - target).T) / num_points


def batch_dice_cost(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice cost ``1 - (2|p.t| + 1) / (|p| + |t| + 1)`` for every pair, p = sigmoid(pred).

    Args:
        pred: (N, P) mask logits at the points.
        target: (M, P) target values in [0, 1].
    Returns:
        (N, M) cost.
    """
    prob = pred.sigmoid()
    numerator = 2.0 * (prob @ target.T)
    denominator = prob.sum(-1)[:, None] + target.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def compute_cost_matrix(
    pred_logits: torch.Tensor,
    pred_point_logits: torch.Tensor,
    tgt_labels: torch.Tensor,
    tgt_point_masks: torch.Tensor,
    cost_class: float = 1.0,
    cost_mask: float = 1.0,
    cost_dice: float = 1.0,
) -> torch.Tensor:
    """Matching cost of one image.

    Args:
        pred_logits: (N, C+1) class logits (last column = no-object).
        pred_point_logits: (N, P) mask logits at the shared points.
        tgt_labels: int64 (M,) target classes in [0, C).
        tgt_point_masks: (M, P) target mask values at the same points.
    Returns:
        float32 (N, M) cost matrix.
    """
    prob = pred_logits.float().softmax(-1)
    # -p(class) rather than -log p: bounded, so a confident wrong class cannot dominate.
    c_class = -prob[:, tgt_labels]
    pred_point_logits = pred_point_logits.float()
    tgt_point_masks = tgt_point_masks.float()
    c_mask = batch_sigmoid_bce_cost(pred_point_logits, tgt_point_masks)
    c_dice = batch_dice_cost(pred_point_logits, tgt_point_masks)
    return cost_class * c_class + cost_mask * c_mask + cost_dice * c_dice


def linear_assignment(cost: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of an (N, M) cost matrix (scipy, on CPU).

    Returns:
        (pred_idx, tgt_idx): int64 (min(N, M),) each, sorted by pred_idx.
    Raises:
        FloatingPointError: if the cost has NaN or infinite entries (scipy's own message
            for that case, "cost matrix is infeasible", does not name the cause).
    """
    if cost.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty.clone()
    cost_np = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(cost_np).all():
        num_nan = int(np.isnan(cost_np).sum())
        num_inf = int(np.isinf(cost_np).sum())
        raise FloatingPointError(
            f"Hungarian matching got a cost matrix of shape {tuple(cost_np.shape)} with "
            f"{num_nan} NaN and {num_inf} infinite entries; the model's class or mask "
            "logits are not finite (training diverged: lower the learning rate, enable "
            "gradient clipping, or check the inputs)."
        )
    rows, cols = linear_sum_assignment(cost_np)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets, per image.

    ``forward(outputs, targets)``:
        outputs: {"pred_logits": (B, N, C+1), "pred_masks": (B, N, h, w) mask logits}.
        targets: list of B dicts with "labels" int64 (M,) and "masks" (M, H, W) bool/float
            at the padded input resolution (H, W may be a multiple of h, w).
    Returns a list of B tuples (pred_idx, tgt_idx), int64 tensors of length min(N, M) on
    the CPU; (empty, empty) for images without targets.
    """

    @configurable
    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 112 * 112,
        cost_activation: float = 0.0,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all matching costs are zero")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.cost_activation = cost_activation

    @classmethod
    def from_config(cls, cfg):
        ia = cfg.MODEL.IAUNET
        return {
            "cost_class": ia.CLASS_WEIGHT,
            "cost_mask": ia.MASK_WEIGHT,
            "cost_dice": ia.DICE_WEIGHT,
            "num_points": ia.TRAIN_NUM_POINTS,
            "cost_activation": plus_options(cfg)["ACTIVATION_COST"],
        }

    def image_cost(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        tgt_labels: torch.Tensor,
        tgt_masks: torch.Tensor,
    ) -> torch.Tensor:
        """Cost matrix of one image.

        Args:
            pred_logits: (N, C+1); pred_masks: (N, h, w) logits;
            tgt_labels: int64 (M,); tgt_masks: (M, H, W), M >= 1.
        Returns:
            (N, M) float32 cost, on pred_logits' device.
        """
        device = pred_masks.device
        height, width = tgt_masks.shape[-2:]
        # One set of points for the whole image: every pair is compared on the same pixels.
        index, coords = sample_pixel_centers(self.num_points, height, width, device=device)
        # (1, N, h, w) sampled at (1, P, 2) -> (1, N, P): the queries act as channels.
        pred_points = sample_logits_at(pred_masks[None].float(), coords[None])[0]
        tgt_points = tgt_masks.flatten(1)[:, index.to(tgt_masks.device)].to(device, torch.float32)
        return compute_cost_matrix(
            pred_logits,
            pred_points,
            tgt_labels.to(device),
            tgt_points,
            self.cost_class,
            self.cost_mask,
            self.cost_dice,
        )

    @staticmethod
    def activation_cost(maps: List[torch.Tensor], tgt_masks: torch.Tensor) -> torch.Tensor:
        """Mean over levels of -log(mass of each query's activation map inside each target).

        Args:
            maps: list over levels of (N, h_l, w_l) maps of one image, each summing to 1.
            tgt_masks: (M, H, W) targets at the padded input size (a multiple of h_l, w_l).
        Returns:
            (N, M) float32 cost.
        """
        targets = tgt_masks[:, None].float()
        cost = 0.0
        for level_maps in maps:
            # Exact average pooling: the share of each map pixel covered by the target.
            cover = F.adaptive_avg_pool2d(targets, level_maps.shape[-2:]).flatten(1)  # (M, hw)
            mass = level_maps.float().flatten(1) @ cover.to(level_maps.device).T  # (N, M)
            cost = cost - torch.log(mass.clamp(min=1e-6))
        return cost / len(maps)

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        pred_logits = outputs["pred_logits"]
        pred_masks = outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(
                f"HungarianMatcher: {len(targets)} targets for a batch of {pred_logits.shape[0]}"
            )
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.image_cost(pred_logits[b], pred_masks[b], labels, target["masks"])
            if self.cost_activation > 0 and outputs.get("activation_maps"):
                cost = cost + self.cost_activation * self.activation_cost(
                    [maps[b] for maps in outputs["activation_maps"]], target["masks"]
                ).to(cost.device)
            indices.append(linear_assignment(cost))
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}, "
            f"cost_activation={self.cost_activation}"
        )
