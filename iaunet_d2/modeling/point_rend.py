"""PointRend's ROI heads, made safe for training batches without a single cell.

Detectron2's PointRend mask head labels its training points with ``torch.cat`` over the
images that have foreground proposals, so a batch in which no image has one (every crop
empty: sparse scenes, scale jitter, ``DATALOADER.FILTER_EMPTY_ANNOTATIONS False``) stops
training with ``torch.cat(): expected a non-empty list of Tensors``. Mask R-CNN's mask
head returns a zero loss there; these heads do the same and are otherwise Detectron2's.
"""
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.projects.point_rend.roi_heads import PointRendROIHeads

__all__ = ["EmptySafePointRendROIHeads"]


@ROI_HEADS_REGISTRY.register()
class EmptySafePointRendROIHeads(PointRendROIHeads):
    """``PointRendROIHeads`` with zero mask losses for a batch without foreground proposals.

    Same parameters, state-dict keys and inference as Detectron2's heads; select them with
    ``MODEL.ROI_HEADS.NAME: "EmptySafePointRendROIHeads"``.
    """

    def _forward_mask(self, features, instances):
        if self.training and self.mask_on:
            foreground, _ = select_foreground_proposals(instances, self.num_classes)
            if sum(len(x) for x in foreground) == 0:
                # A zero that still reaches every mask-head parameter, so DDP sees none unused.
                zero = sum(p.sum() for p in self.mask_head.parameters()) * 0.0
                losses = {"loss_mask": zero}
                if self.mask_head.mask_point_on:
                    losses["loss_mask_point"] = zero
                return losses
        return super()._forward_mask(features, instances)
