"""Mask2Former meta-architecture, the query-based baseline of the IAUNet paper.

backbone -> deformable-attention pixel decoder -> masked-attention transformer decoder,
trained with IAUNet's matcher and criterion (same losses and point sampling) under
Mask2Former's weights, and evaluated with Mask2Former's top-k instance inference.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from ..criterion import IAUNetSetCriterion
from ..matcher import HungarianMatcher
from ..meta_arch import SetPredictionModel
from ..postprocessing import masks_to_boxes
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedAttentionDecoder

__all__ = ["Mask2Former", "topk_instance_inference"]


def topk_instance_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    padded_size: Tuple[int, int],
    topk: int = 100,
    mask_thresh: float = 0.5,
) -> Instances:
    """Mask2Former's instance inference for one image.

    Class probabilities are a softmax without the no-object column; the ``topk`` best
    (query, class) pairs are kept; their mask logits are upsampled to the padded input,
    cropped to the image and resized to the output size; mask = probability >
    ``mask_thresh``; score = class probability x mean probability inside the mask.
    No score threshold and no NMS.

    Args:
        pred_logits: (N, K+1) class logits, last column = no-object.
        pred_masks: (N, h, w) mask logits on the padded grid.
        image_size: (h_img, w_img) of the image inside the padded input.
        output_size: (H_out, W_out) the results are reported at.
        padded_size: (H_pad, W_pad) of the padded input.
    Returns:
        Instances(output_size) with pred_masks bool (k, H_out, W_out), scores (k,) by
        decreasing score, pred_classes int64 (k,), pred_boxes from the masks and
        pred_query_idx int64 (k,), k = min(topk, N*K).
    """
    num_queries, num_classes = pred_logits.shape[0], pred_logits.shape[1] - 1
    prob = pred_logits.float().softmax(-1)[:, :-1]  # (N, K)
    k = max(0, min(int(topk), num_queries * num_classes))
    class_scores, flat = prob.flatten().topk(k)
    query = torch.div(flat, num_classes, rounding_mode="floor")
    labels = flat - query * num_classes

    h_img, w_img = int(image_size[0]), int(image_size[1])
    out_h, out_w = int(output_size[0]), int(output_size[1])
    logits = F.interpolate(pred_masks[query][None].float(), size=tuple(int(s) for s in padded_size),
                           mode="bilinear", align_corners=False)[:, :, :h_img, :w_img]
    if (out_h, out_w) != (h_img, w_img):
        logits = F.interpolate(logits, size=(out_h, out_w), mode="bilinear", align_corners=False)
    probs = logits[0].sigmoid()
    masks = probs > mask_thresh
    area = masks.flatten(1).sum(1, dtype=torch.float32)
    maskness = (probs * masks).flatten(1).sum(1) / (area + 1e-6)
    scores = class_scores * maskness

    order = scores.argsort(descending=True)
    result = Instances((out_h, out_w))
    result.pred_masks = masks[order]
    result.scores = scores[order]
    result.pred_classes = labels[order]
    result.pred_boxes = Boxes(masks_to_boxes(result.pred_masks))
    result.pred_query_idx = query[order]
    return result


@META_ARCH_REGISTRY.register()
class Mask2Former(SetPredictionModel):
    """Mask2Former for instance segmentation.

    Input and output formats are IAUNet's (see ``IAUNet``): training returns the dict
    of weighted losses (``loss_ce``, ``loss_mask``, ``loss_dice``, and the same with
    suffixes ``_0``..``_{DEC_LAYERS-1}`` for the auxiliary predictions); inference
    returns one ``{"instances": Instances}`` per image at its ``"height"`` x
    ``"width"`` (default: the image size).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        criterion: nn.Module,
        pixel_mean,
        pixel_std,
        size_divisibility: int = 32,
        test_topk: int = 100,
        mask_thresh: float = 0.5,
    ):
        super().__init__(backbone, pixel_mean, pixel_std, size_divisibility)
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.criterion = criterion
        self.test_topk = test_topk
        self.mask_thresh = mask_thresh

    @classmethod
    def from_config(cls, cfg):
        m2f = cfg.MODEL.MASK2FORMER
        backbone = build_backbone(cfg)
        pixel_decoder = MSDeformAttnPixelDecoder(cfg, backbone.output_shape())
        matcher = HungarianMatcher(
            cost_class=m2f.CLASS_WEIGHT,
            cost_mask=m2f.MASK_WEIGHT,
            cost_dice=m2f.DICE_WEIGHT,
            num_points=m2f.TRAIN_NUM_POINTS,
        )
        criterion = IAUNetSetCriterion(
            num_classes=m2f.NUM_CLASSES,
            matcher=matcher,
            class_weight=m2f.CLASS_WEIGHT,
            mask_weight=m2f.MASK_WEIGHT,
            dice_weight=m2f.DICE_WEIGHT,
            no_object_weight=m2f.NO_OBJECT_WEIGHT,
            num_points=m2f.TRAIN_NUM_POINTS,
            oversample_ratio=m2f.OVERSAMPLE_RATIO,
            importance_sample_ratio=m2f.IMPORTANCE_SAMPLE_RATIO,
        )
        return {
            "backbone": backbone,
            "pixel_decoder": pixel_decoder,
            "transformer_decoder": MaskedAttentionDecoder(cfg, in_channels=m2f.CONV_DIM),
            "criterion": criterion,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": m2f.SIZE_DIVISIBILITY,
            "test_topk": cfg.TEST.DETECTIONS_PER_IMAGE,
            "mask_thresh": m2f.TEST.MASK_THRESH,
        }

    def forward(self, batched_inputs: List[Dict]):
        """See the class docstring for inputs and outputs."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        mask_features, multi_scale = self.pixel_decoder(features)
        outputs = self.transformer_decoder(multi_scale, mask_features)
        if self.training:
            return self.criterion(outputs, self.prepare_targets(batched_inputs, images))
        return self.inference(outputs, batched_inputs, images)

    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """One ``{"instances": Instances}`` per image (``topk_instance_inference``)."""
        padded_size = tuple(images.tensor.shape[-2:])
        results = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            output_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            results.append({"instances": topk_instance_inference(
                outputs["pred_logits"][i], outputs["pred_masks"][i], tuple(image_size),
                output_size, padded_size, self.test_topk, self.mask_thresh,
            )})
        return results
