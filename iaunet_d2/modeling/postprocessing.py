"""IAUNet inference: turn N query predictions into Detectron2 ``Instances``.

Procedure (DESIGN.md, "Inference"; paper section 7):

1. class probabilities = softmax over C+1 logits, no-object column dropped;
2. (query, class) candidates: at most N of them, best class probabilities first (a
   vectorized top-k over N*C; with one class this is every query);
3. mask logits upsampled to the padded input size, cropped to the resized image;
4. maskness = mean mask probability over the pixels with p > mask_thresh (0 if none);
   score = class probability * maskness; scores below score_thresh dropped;
   empty masks and masks covering the whole image are dropped too;
5. class-aware mask NMS at nms_iou, keep the best max_detections;
6. mask probabilities resized (bilinear) to the output size and binarized at mask_thresh;
   boxes are the masks' extents.

Mask NMS runs on the binarized masks subsampled to at most ``NMS_MAX_SIDE`` pixels per
side (every s-th pixel): for a 512 px input that is every 2nd pixel, a 4x cheaper IoU
matrix, while a 20 px cell still keeps ~100 samples, so near-duplicate decisions at
IoU 0.8 barely change.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, Instances

__all__ = [
    "NMS_MAX_SIDE",
    "mask_iou_matrix",
    "mask_nms",
    "masks_to_boxes",
    "predictions_to_instances",
]

# Longest side of the masks on which mask NMS computes IoUs.
NMS_MAX_SIDE = 256


def mask_iou_matrix(masks: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of binary masks.

    Args:
        masks: (K, H, W) bool or float (values > 0 count as foreground).
    Returns:
        float32 (K, K) IoU; 0 where both masks are empty.
    """
    fg = masks if masks.dtype == torch.bool else masks > 0
    flat = fg.flatten(1).to(torch.float32)
    intersection = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1.0), torch.zeros_like(union))


def mask_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    classes: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Greedy non-maximum suppression of masks.

    A mask is kept when no higher-scoring kept mask (of the same class, if ``classes``
    is given) overlaps it with IoU > ``iou_threshold``.

    Args:
        masks: (K, H, W) bool or float (values > 0 are foreground).
        scores: (K,).
        iou_threshold: suppression threshold.
        classes: optional int64 (K,); masks of different classes never suppress each other.
    Returns:
        int64 (K',) indices of the kept masks, by decreasing score.
    """
    num = masks.shape[0]
    if num == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = mask_iou_matrix(masks[order])
    # suppresses[j, i]: the better-ranked mask j would suppress mask i.
    suppresses = torch.triu(iou > iou_threshold, diagonal=1)
    if classes is not None:
        ranked = classes[order]
        suppresses &= ranked[:, None] == ranked[None, :]
    # Greedy NMS is the unique solution of keep[i] = not any_j<i(keep[j] & suppresses[j, i])
    # (keep[i] depends only on earlier entries). Iterating the equation from "all kept"
    # fixes at least one more leading entry per round, and a round without change has
    # reached that unique solution: rounds = longest suppression chain, not K.
    keep = torch.ones(num, dtype=torch.bool, device=masks.device)
    suppress_f = suppresses.to(torch.float32)
    for _ in range(num):
        new_keep = (keep.to(torch.float32) @ suppress_f) == 0
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep.to(order.device)]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes around binary masks, Detectron2's convention (as ``BitMasks``).

    Args:
        masks: (K, H, W) bool (or values > 0 as foreground).
    Returns:
        float32 (K, 4) XYXY boxes ``[x_min, y_min, x_max + 1, y_max + 1]`` in pixels;
        all zeros for empty masks.
    """
    num, height, width = masks.shape
    if num == 0:
        return torch.zeros(0, 4, dtype=torch.float32, device=masks.device)
    # uint8 max-reductions: several times faster than bool any() / comparisons on CPU.
    # (A reinterpreting view(torch.uint8) would avoid the copy but cannot be traced.)
    fg = (masks if masks.dtype == torch.bool else masks > 0).to(torch.uint8)
    cols = fg.amax(dim=1) > 0  # (K, W)
    rows = fg.amax(dim=2) > 0  # (K, H)
    x_range = torch.arange(width, device=masks.device)
    y_range = torch.arange(height, device=masks.device)
    # Min over foreground positions: others are pushed past the end (max: before start).
    x0 = torch.where(cols, x_range, width).amin(dim=1)
    x1 = torch.where(cols, x_range, -1).amax(dim=1) + 1
    y0 = torch.where(rows, y_range, height).amin(dim=1)
    y1 = torch.where(rows, y_range, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    nonempty = cols.any(dim=1)
    return boxes * nonempty[:, None]


# Full-resolution pixels per block in ``_foreground_and_maskness``: 32 masks of 512 x 512
# (32 MiB fp32), i.e. 4 blocks for 100 queries: the blocks avoid a (K, H, W) product
# tensor, and few blocks keep the op count low (ops stall on a busy shared CPU).
MASK_CHUNK_PIXELS = 32 * 512 * 512


def _mask_probs(mask_logits: torch.Tensor, padded_size, image_size) -> torch.Tensor:
    """(K, h, w) low-resolution logits -> (K, h_img, w_img) fp32 probabilities: bilinear
    upsampling to the padded input size, crop to the image, sigmoid."""
    logits = F.interpolate(
        mask_logits[None].float(), size=tuple(padded_size), mode="bilinear", align_corners=False
    )[0, :, : image_size[0], : image_size[1]]
    return logits.sigmoid_()  # in place: the logits are not needed


def _foreground_and_maskness(mask_logits: torch.Tensor, padded_size, image_size, mask_thresh):
    """Binary masks (K, h_img, w_img) bool, maskness (K,) fp32 and foreground pixel counts
    (K,) fp32 of low-res mask logits.

    maskness = mean probability over the pixels with probability > mask_thresh (0 if
    none). Without autograd the masks are processed in blocks of MASK_CHUNK_PIXELS
    full-resolution pixels, so the probabilities are never stored for all K at once.
    """
    num = mask_logits.shape[0]
    pixels = max(1, int(padded_size[0]) * int(padded_size[1]))
    chunk = num if torch.is_grad_enabled() else max(1, MASK_CHUNK_PIXELS // pixels)
    foreground = torch.empty((num, int(image_size[0]), int(image_size[1])), dtype=torch.bool,
                             device=mask_logits.device)
    maskness = torch.empty(num, dtype=torch.float32, device=mask_logits.device)
    area = torch.empty(num, dtype=torch.float32, device=mask_logits.device)
    for start in range(0, num, chunk):
        end = min(start + chunk, num)
        probs = _mask_probs(mask_logits[start:end], padded_size, image_size)
        fg = probs > mask_thresh
        foreground[start:end] = fg
        # Probabilities outside the mask zeroed (in place when nothing needs probs for a
        # backward pass); counting in fp32 avoids an int64 copy of the block (exact up
        # to 2^24 pixels per mask).
        threshold = F.threshold if torch.is_grad_enabled() else F.threshold_
        fg_probs = threshold(probs, mask_thresh, 0.0)
        count = fg.flatten(1).sum(1, dtype=torch.float32)
        maskness[start:end] = fg_probs.flatten(1).sum(1) / count.clamp(min=1)
        area[start:end] = count
    return foreground, maskness, area


def _empty_instances(output_size, device) -> Instances:
    height, width = output_size
    result = Instances((height, width))
    result.pred_masks = torch.zeros(0, height, width, dtype=torch.bool, device=device)
    result.scores = torch.zeros(0, dtype=torch.float32, device=device)
    result.pred_classes = torch.zeros(0, dtype=torch.int64, device=device)
    result.pred_boxes = Boxes(torch.zeros(0, 4, dtype=torch.float32, device=device))
    result.pred_query_idx = torch.zeros(0, dtype=torch.int64, device=device)
    return result


def predictions_to_instances(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    score_thresh: float = 0.01,
    mask_thresh: float = 0.5,
    nms_iou: float = 0.8,
    max_detections: int = 100,
    padded_size: Optional[Tuple[int, int]] = None,
) -> Instances:
    """Post-process one image's query predictions.

    Args:
        pred_logits: (N, C+1) class logits, last column = no-object.
        pred_masks: (N, h, w) mask logits on the (1/4-resolution) padded grid.
        image_size: (h_img, w_img), the resized image inside the padded input.
        output_size: (H_out, W_out), the size the results are reported at.
        score_thresh: drop (query, class) pairs scoring below this.
        mask_thresh: mask probability threshold (maskness and binarization).
        nms_iou: mask NMS IoU threshold (IoU > nms_iou is suppressed).
        max_detections: keep at most this many instances.
        padded_size: (H_pad, W_pad) padded input size; default 4 * (h, w).
    Returns:
        Instances(image_size=output_size) with ``pred_masks`` bool (K, H_out, W_out),
        ``scores`` float32 (K,) decreasing, ``pred_classes`` int64 (K,), ``pred_boxes``
        Boxes (K, 4) from the masks, ``pred_query_idx`` int64 (K,) producing query.
    """
    device = pred_masks.device
    num_queries, num_classes = pred_logits.shape[0], pred_logits.shape[1] - 1
    h_img, w_img = int(image_size[0]), int(image_size[1])
    out_h, out_w = int(output_size[0]), int(output_size[1])
    if padded_size is None:
        padded_size = (4 * pred_masks.shape[-2], 4 * pred_masks.shape[-1])
    if max_detections <= 0 or num_queries == 0 or num_classes <= 0:
        return _empty_instances((out_h, out_w), device)

    class_prob = pred_logits.float().softmax(-1)[:, :-1]  # (N, C)
    # Candidates over all (query, class) pairs; maskness <= 1, so a pair whose class
    # probability is already below the threshold cannot pass and never gets its mask
    # upsampled.
    flat_prob = class_prob.flatten()
    num_candidates = min(num_queries, flat_prob.numel())
    cand_prob, cand_flat = flat_prob.topk(num_candidates)
    passing = cand_prob >= score_thresh
    cand_prob, cand_flat = cand_prob[passing], cand_flat[passing]
    if cand_flat.numel() == 0:
        return _empty_instances((out_h, out_w), device)
    cand_query = torch.div(cand_flat, num_classes, rounding_mode="floor")
    cand_class = cand_flat - cand_query * num_classes

    # Masks once per distinct query (a query may be a candidate for several classes).
    queries, cand_to_query = torch.unique(cand_query, return_inverse=True)
    foreground, maskness, area = _foreground_and_maskness(
        pred_masks[queries], tuple(padded_size), (h_img, w_img), mask_thresh
    )

    scores = cand_prob * maskness[cand_to_query]
    passing = scores >= score_thresh
    if not torch.jit.is_tracing():
        # An empty mask or one covering the whole image is never a cell (an untrained
        # model predicts both), whatever its class score. Not while tracing for a FLOP
        # count at full load: a random model's masks can all be such, and an output
        # that no longer depends on the input would make the trace drop the network.
        passing &= ((area > 0) & (area < h_img * w_img))[cand_to_query]
    if not passing.any():
        return _empty_instances((out_h, out_w), device)
    scores, cand_query, cand_class, cand_to_query = (
        scores[passing], cand_query[passing], cand_class[passing], cand_to_query[passing]
    )

    stride = max(1, math.ceil(max(h_img, w_img) / NMS_MAX_SIDE))
    nms_masks = foreground[:, ::stride, ::stride][cand_to_query]
    keep = mask_nms(nms_masks, scores, nms_iou, classes=cand_class)[:max_detections]
    scores, cand_query, cand_class, cand_to_query = (
        scores[keep], cand_query[keep], cand_class[keep], cand_to_query[keep]
    )

    if (out_h, out_w) == (h_img, w_img):
        out_masks = foreground[cand_to_query]
    else:
        # Bilinear on probabilities, then threshold: smoother borders than resizing masks.
        # The probabilities of the kept masks only are recomputed (same ops, same values).
        probs = _mask_probs(pred_masks[queries[cand_to_query]], tuple(padded_size), (h_img, w_img))
        out_probs = F.interpolate(
            probs[None], size=(out_h, out_w), mode="bilinear", align_corners=False
        )[0]
        out_masks = out_probs > mask_thresh
        # A mask of a few pixels can vanish when reduced to a smaller output size.
        visible = out_masks.flatten(1).any(1)
        if not visible.all():
            out_masks, scores, cand_class, cand_query = (
                out_masks[visible], scores[visible], cand_class[visible], cand_query[visible]
            )

    result = Instances((out_h, out_w))
    result.pred_masks = out_masks
    result.scores = scores
    result.pred_classes = cand_class
    result.pred_boxes = Boxes(masks_to_boxes(out_masks))
    result.pred_query_idx = cand_query
    return result
