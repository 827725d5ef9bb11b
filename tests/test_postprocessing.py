"""Mask NMS, mask boxes and predictions_to_instances."""
import pytest
import torch

import iaunet_d2.compat  # noqa: F401
from detectron2.structures import BitMasks, Instances
from iaunet_d2.modeling.postprocessing import mask_nms, masks_to_boxes, predictions_to_instances


def _reference_greedy_nms(masks, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    flat = masks.flatten(1).bool()
    kept = []
    for i in order:
        ok = True
        for j in kept:
            inter = (flat[i] & flat[j]).sum().item()
            union = (flat[i] | flat[j]).sum().item()
            if union > 0 and inter / union > threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def _rect(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_nms_removes_near_duplicate_and_keeps_distinct():
    a = _rect(32, 32, 2, 22, 2, 22)  # 400 px
    b = _rect(32, 32, 2, 22, 3, 22)  # IoU with a: 380/400 = 0.95
    c = _rect(32, 32, 24, 30, 24, 30)  # disjoint
    d = _rect(32, 32, 10, 30, 10, 30)  # overlaps a, IoU < 0.8
    masks = torch.stack([a, b, c, d])
    scores = torch.tensor([0.9, 0.95, 0.3, 0.5])
    keep = mask_nms(masks, scores, 0.8)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [1, 3, 2]  # a suppressed by the higher-scoring b, sorted by score


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_mask_nms_matches_reference_greedy(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    # Random rectangles plus jittered copies, to produce chains of suppression.
    masks = []
    for _ in range(15):
        y0, x0 = torch.randint(0, 20, (2,), generator=g).tolist()
        hh, ww = torch.randint(4, 12, (2,), generator=g).tolist()
        masks.append(_rect(32, 32, y0, y0 + hh, x0, x0 + ww))
        dy, dx = torch.randint(0, 3, (2,), generator=g).tolist()
        masks.append(_rect(32, 32, y0 + dy, y0 + hh + dy, x0 + dx, x0 + ww + dx))
    masks = torch.stack(masks)
    scores = torch.rand(len(masks), generator=g)
    expected = _reference_greedy_nms(masks, scores, threshold)
    assert mask_nms(masks, scores, threshold).tolist() == expected


def test_mask_nms_class_aware_and_empty():
    a = _rect(16, 16, 0, 8, 0, 8)
    masks = torch.stack([a, a])
    scores = torch.tensor([0.9, 0.8])
    assert mask_nms(masks, scores, 0.5).tolist() == [0]
    assert mask_nms(masks, scores, 0.5, classes=torch.tensor([0, 1])).tolist() == [0, 1]
    keep = mask_nms(torch.zeros(0, 16, 16, dtype=torch.bool), torch.zeros(0), 0.5)
    assert keep.numel() == 0 and keep.dtype == torch.int64


def test_masks_to_boxes_matches_bitmasks():
    empty = torch.zeros(20, 30, dtype=torch.bool)
    masks = torch.stack([_rect(20, 30, 3, 9, 5, 17), empty, _rect(20, 30, 0, 20, 29, 30)])
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[5, 3, 17, 9], [0, 0, 0, 0], [29, 0, 30, 20]]
    assert torch.equal(boxes, BitMasks(masks).get_bounding_boxes().tensor)


def _predictions(num_queries=8, num_classes=1, low=(16, 16)):
    """Query q: rectangle mask q with class evidence decreasing in q; odd queries no-object."""
    h, w = low
    logits = torch.full((num_queries, num_classes + 1), -10.0)
    masks = torch.full((num_queries, h, w), -10.0)
    for q in range(num_queries):
        if q % 2 == 0:
            logits[q, q % num_classes] = 6.0 - 0.5 * q
            logits[q, -1] = 0.0
        else:
            logits[q, -1] = 10.0
        y0, x0 = (q * 3) % (h - 4), (q * 5) % (w - 4)
        masks[q, y0 : y0 + 4, x0 : x0 + 4] = 10.0
    return logits, masks


def _call(logits, masks, **kw):
    args = dict(
        image_size=(64, 48), output_size=(128, 96), score_thresh=0.01, mask_thresh=0.5,
        nms_iou=0.8, max_detections=100,
    )
    args.update(kw)
    return predictions_to_instances(logits, masks, **args)


def test_predictions_to_instances_fields_and_sizes():
    logits, masks = _predictions()
    inst = _call(logits, masks)
    assert isinstance(inst, Instances)
    assert inst.image_size == (128, 96)
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == (128, 96)
    assert inst.scores.dtype == torch.float32
    assert inst.pred_classes.dtype == torch.int64 and inst.pred_query_idx.dtype == torch.int64
    # Only the even queries have class evidence; ranked by decreasing class probability.
    assert inst.pred_query_idx.tolist() == [0, 2, 4, 6]
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])
    expected_boxes = BitMasks(inst.pred_masks).get_bounding_boxes().tensor
    assert torch.equal(inst.pred_boxes.tensor, expected_boxes)
    assert inst.pred_masks.flatten(1).any(1).all()


def test_query_index_points_to_the_right_mask():
    logits, masks = _predictions()
    inst = _call(logits, masks, image_size=(64, 64), output_size=(64, 64))
    for k, q in enumerate(inst.pred_query_idx.tolist()):
        # The 4x upsampled query mask, thresholded, is the reported mask.
        up = torch.nn.functional.interpolate(
            masks[q][None, None], scale_factor=4, mode="bilinear", align_corners=False
        )[0, 0]
        assert torch.equal(inst.pred_masks[k], up.sigmoid() > 0.5)
        # Score = class probability * maskness.
        prob = logits[q].softmax(-1)[inst.pred_classes[k]]
        p = up.sigmoid()
        maskness = p[p > 0.5].mean()
        assert inst.scores[k].item() == pytest.approx((prob * maskness).item(), rel=1e-5)


def test_score_threshold_and_max_detections():
    logits, masks = _predictions()
    all_inst = _call(logits, masks, score_thresh=0.0)
    thresh = float(all_inst.scores[1]) - 1e-6
    inst = _call(logits, masks, score_thresh=thresh)
    assert len(inst) == 2 and torch.all(inst.scores >= thresh)
    capped = _call(logits, masks, max_detections=3)
    assert len(capped) == 3
    assert torch.allclose(capped.scores, _call(logits, masks).scores[:3])


def test_nms_inside_predictions_to_instances():
    logits, masks = _predictions()
    masks[2] = masks[0]  # duplicate of the best query, lower class score
    inst = _call(logits, masks)
    assert 2 not in inst.pred_query_idx.tolist() and 0 in inst.pred_query_idx.tolist()


def test_multi_class_topk():
    logits, masks = _predictions(num_classes=3)
    inst = _call(logits, masks)
    expected = {q: q % 3 for q in (0, 2, 4, 6)}
    assert dict(zip(inst.pred_query_idx.tolist(), inst.pred_classes.tolist())) == expected


def test_empty_result_is_valid_instances():
    logits, masks = _predictions()
    logits[:, -1] = 50.0  # every query says no-object
    inst = _call(logits, masks)
    assert len(inst) == 0 and inst.image_size == (128, 96)
    assert inst.pred_masks.shape == (0, 128, 96) and inst.pred_masks.dtype == torch.bool
    assert inst.scores.shape == (0,) and inst.pred_classes.dtype == torch.int64
    assert inst.pred_boxes.tensor.shape == (0, 4) and inst.pred_query_idx.shape == (0,)
    # Masks that never pass the threshold give maskness 0 and no instance either.
    logits, masks = _predictions()
    inst = _call(logits, torch.full_like(masks, -10.0))
    fields = {"pred_masks", "scores", "pred_classes", "pred_boxes", "pred_query_idx"}
    assert len(inst) == 0 and set(inst.get_fields()) == fields


def test_empty_and_whole_image_masks_are_never_detections():
    logits, masks = _predictions()
    masks[0] = 10.0  # query 0: the whole (64 x 48) image, best class score
    masks[2] = -10.0  # query 2: empty
    for thresh in (0.01, 0.0):  # even with no score threshold at all
        inst = _call(logits, masks, score_thresh=thresh)
        kept = inst.pred_query_idx.tolist()
        assert 0 not in kept and 2 not in kept
        assert 4 in kept and 6 in kept
        areas = inst.pred_masks.flatten(1).sum(1)
        assert (areas > 0).all() and (areas < 128 * 96).all()


def test_masks_that_vanish_at_the_output_size_are_dropped():
    logits, masks = _predictions()
    masks[4] = -10.0
    masks[4, 5, 5] = 10.0  # a one-pixel blob at 1/4: a few pixels at the input size
    assert 4 in _call(logits, masks, image_size=(64, 64), output_size=(64, 64)).pred_query_idx
    inst = _call(logits, masks, image_size=(64, 64), output_size=(8, 8))
    assert 4 not in inst.pred_query_idx.tolist()
    assert inst.pred_masks.flatten(1).any(1).all()
    assert len(inst.scores) == len(inst.pred_query_idx) == len(inst.pred_boxes)
