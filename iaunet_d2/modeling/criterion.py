"""Set-prediction losses of IAUNet: Hungarian matching, then class and mask losses.

Losses (paper section 7 / DESIGN.md, "Matching and losses"), all returned already
multiplied by their weights:

* ``loss_ce``: cross-entropy over C+1 classes for every query; unmatched queries target
  the no-object class, whose weight is ``no_object_weight`` (buffer ``empty_weight``).
* ``loss_mask``: sigmoid BCE on the matched masks.
* ``loss_dice``: dice loss on the matched masks.

Mask losses are evaluated on ``num_points`` points per matched mask, chosen among the
pixel centres of the target grid (see ``matcher.py`` for why pixel centres) with
PointRend-style importance sampling: ``oversample_ratio * num_points`` random candidates,
the ``importance_sample_ratio`` most uncertain ones (logit closest to 0) plus uniform
ones. Cells are small and densely packed, so most of the signal is at their borders,
where uniform points are rare; the uniform share keeps the interior supervised. Setting
``importance_sample_ratio=0`` gives plain uniform sampling.

With ``activation_map_weight > 0`` (``loss_activation``; IAUNet+ only), each matched query's IA
activation maps are also pulled into its target mask: -log of the map's mass inside the
mask (the mask average-pooled to the map's resolution), averaged over levels. The paper
trains the maps only through the final masks; this gives them a direct signal.

Both mask losses are summed over matched masks and divided by the number of target masks
in the whole (distributed) batch, clamped to at least 1.
"""
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.utils import comm
from detectron2.utils.registry import Registry

from .iaunet_plus import plus_options
from .losses import dice_loss, sample_points_with_importance, sigmoid_bce_loss
from .matcher import HungarianMatcher, pixel_index_to_coords, sample_logits_at

__all__ = ["IAUNET_CRITERION_REGISTRY", "build_criterion", "IAUNetSetCriterion"]

IAUNET_CRITERION_REGISTRY = Registry("IAUNET_CRITERION")
IAUNET_CRITERION_REGISTRY.__doc__ = """
Registry for IAUNet training criteria. A registered class is built as ``cls(cfg)`` (use
``@configurable``) and maps ``forward(outputs, targets)`` to a dict of weighted losses.
"""


def build_criterion(cfg) -> nn.Module:
    """Build the criterion named by ``cfg.MODEL.IAUNET.CRITERION_NAME``."""
    name = cfg.MODEL.IAUNET.CRITERION_NAME
    return IAUNET_CRITERION_REGISTRY.get(name)(cfg)


@IAUNET_CRITERION_REGISTRY.register()
class IAUNetSetCriterion(nn.Module):
    """Hungarian-matched class, BCE and dice losses, plus the same for auxiliary outputs.

    ``forward(outputs, targets)``:
        outputs: {"pred_logits": (B, N, C+1), "pred_masks": (B, N, h, w) logits,
            optional "aux_outputs": list of dicts with the same two keys (any h, w)}.
        targets: list of B dicts with "labels" int64 (M,) and "masks" (M, H, W) bool/float
            at the padded input resolution.
    Returns a dict of scalar, already weighted losses: "loss_ce", "loss_mask",
    "loss_dice", and "loss_ce_i", "loss_mask_i", "loss_dice_i" for aux output i.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        class_weight: float = 1.0,
        mask_weight: float = 5.0,
        dice_weight: float = 2.0,
        no_object_weight: float = 0.1,
        num_points: int = 112 * 112,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        activation_map_weight: float = 0.0,
    ):
        super().__init__()
        self.activation_map_weight = activation_map_weight
        if not 0.0 <= importance_sample_ratio <= 1.0:
            raise ValueError(
                f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
            )
        if oversample_ratio < 1.0:
            raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        # Not persistent: a loss hyper-parameter, rebuilt from the config, should neither
        # be overwritten by nor required in checkpoints.
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    @classmethod
    def from_config(cls, cfg):
        ia = cfg.MODEL.IAUNET
        return {
            "num_classes": ia.NUM_CLASSES,
            "matcher": HungarianMatcher(cfg),
            "class_weight": ia.CLASS_WEIGHT,
            "mask_weight": ia.MASK_WEIGHT,
            "dice_weight": ia.DICE_WEIGHT,
            "no_object_weight": ia.NO_OBJECT_WEIGHT,
            "num_points": ia.TRAIN_NUM_POINTS,
            "activation_map_weight": plus_options(cfg)["ACTIVATION_LOSS"],
        }

    # ------------------------------------------------------------------ helpers
    def _num_masks(self, targets: List[Dict[str, torch.Tensor]], device) -> torch.Tensor:
        """Average number of target masks per worker (>= 1), as a float scalar."""
        num_masks = torch.as_tensor(
            float(sum(len(t["labels"]) for t in targets)), dtype=torch.float32, device=device
        )
        world_size = comm.get_world_size()
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
        return torch.clamp(num_masks / world_size, min=1.0)

    def loss_labels(
        self,
        pred_logits: torch.Tensor,
        targets: List[Dict[str, torch.Tensor]],
        indices: List[Tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Weighted-mean cross-entropy over all B*N queries (unweighted by class_weight).

        Args:
            pred_logits: (B, N, C+1).
        """
        batch, num_queries = pred_logits.shape[:2]
        device = pred_logits.device
        target_classes = torch.full(
            (batch, num_queries), self.num_classes, dtype=torch.int64, device=device
        )
        for b, ((pred_idx, tgt_idx), target) in enumerate(zip(indices, targets)):
            if pred_idx.numel():
                target_classes[b, pred_idx.to(device)] = target["labels"].to(device)[
                    tgt_idx.to(device)
                ]
        return F.cross_entropy(
            pred_logits.float().transpose(1, 2), target_classes, weight=self.empty_weight
        )

    def loss_masks(
        self,
        pred_masks: torch.Tensor,
        targets: List[Dict[str, torch.Tensor]],
        indices: List[Tuple[torch.Tensor, torch.Tensor]],
        num_masks: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(BCE, dice) of the matched masks (unweighted), on sampled points.

        Args:
            pred_masks: (B, N, h, w) logits.
        """
        device = pred_masks.device
        point_logits, point_targets = [], []
        for b, ((pred_idx, tgt_idx), target) in enumerate(zip(indices, targets)):
            if pred_idx.numel() == 0:
                continue
            src = pred_masks[b][pred_idx.to(device)]  # (K, h, w)
            tgt_masks = target["masks"]  # (M, H, W)
            height, width = tgt_masks.shape[-2:]
            tgt_rows = tgt_idx.to(tgt_masks.device)
            index = sample_points_with_importance(
                src.detach(),
                height,
                width,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )  # (K, P)
            coords = pixel_index_to_coords(index, height, width)
            point_logits.append(
                sample_logits_at(src[:, None].float(), coords)[:, 0]
            )
            # Read targets at the pixel centres directly (they stay exactly binary), and
            # only there: never copy K full-resolution masks.
            point_targets.append(
                tgt_masks.flatten(1)[tgt_rows[:, None], index.to(tgt_masks.device)].to(
                    device, torch.float32
                )
            )
        if not point_logits:
            # No target anywhere in this batch: a zero that still reaches every mask
            # parameter, so DDP sees a gradient for all of them.
            zero = pred_masks.sum() * 0.0
            return zero, zero.clone()
        point_logits = torch.cat(point_logits)
        point_targets = torch.cat(point_targets)
        return (
            sigmoid_bce_loss(point_logits, point_targets, num_masks),
            dice_loss(point_logits, point_targets, num_masks),
        )

    def loss_activation_maps(
        self,
        activation_maps: List[torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        indices: List[Tuple[torch.Tensor, torch.Tensor]],
        num_masks: torch.Tensor,
    ) -> torch.Tensor:
        """Mean over levels of -log(mass of a matched query's activation map inside its
        target mask), summed over matched queries and divided by ``num_masks``.

        Args:
            activation_maps: list over levels of (B, N, h_l, w_l) maps, each summing to 1.
        """
        total = activation_maps[0].sum() * 0.0  # reaches every level's maps (DDP)
        for b, ((pred_idx, tgt_idx), target) in enumerate(zip(indices, targets)):
            if pred_idx.numel() == 0:
                continue
            matched = target["masks"][tgt_idx.to(target["masks"].device)]  # (K, H, W)
            # The matcher's activation cost of the K matched pairs (the diagonal): the
            # same quantity, with gradients.
            cost = self.matcher.activation_cost(
                [maps[b][pred_idx.to(maps.device)] for maps in activation_maps], matched
            )  # (K, K)
            total = total + cost.diagonal().sum()
        return total / num_masks

    def single_output_losses(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        num_masks: torch.Tensor,
        suffix: str = "",
    ) -> Dict[str, torch.Tensor]:
        """Match one output (main or auxiliary) and return its weighted losses."""
        indices = self.matcher(outputs, targets)
        losses = {}
        # Auxiliary outputs carry their level's maps for matching; the loss is on the
        # main output's maps of every level.
        if self.activation_map_weight > 0 and not suffix and outputs.get("activation_maps"):
            losses["loss_activation" + suffix] = self.activation_map_weight * (
                self.loss_activation_maps(outputs["activation_maps"], targets, indices, num_masks)
            )
        loss_ce = self.loss_labels(outputs["pred_logits"], targets, indices)
        loss_mask, loss_dice = self.loss_masks(outputs["pred_masks"], targets, indices, num_masks)
        losses.update({
            "loss_ce" + suffix: loss_ce * self.class_weight,
            "loss_mask" + suffix: loss_mask * self.mask_weight,
            "loss_dice" + suffix: loss_dice * self.dice_weight,
        })
        return losses

    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)
        losses = self.single_output_losses(outputs, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", None) or []):
            # Each auxiliary prediction gets its own matching, as its queries differ.
            losses.update(self.single_output_losses(aux, targets, num_masks, suffix=f"_{i}"))
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, class_weight={self.class_weight}, "
            f"mask_weight={self.mask_weight}, dice_weight={self.dice_weight}, "
            f"no_object_weight={self.no_object_weight}, num_points={self.num_points}, "
            f"oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )
