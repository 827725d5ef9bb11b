"""PointRend's mask head on training batches with no cell (every crop empty)."""
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.projects.point_rend.roi_heads import PointRendROIHeads
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from iaunet_d2.config import build_config
from iaunet_d2.modeling.point_rend import EmptySafePointRendROIHeads

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pointrend(path):
    cfg = build_config(os.path.join(_ROOT, "configs", path), ["MODEL.DEVICE", "cpu"],
                       prepare_data=False)
    torch.manual_seed(0)
    return build_model(cfg).train()


def _no_foreground(size):
    empty = Instances((size, size))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    empty.gt_masks = BitMasks(torch.zeros(0, size, size, dtype=torch.bool))
    return empty


@pytest.mark.parametrize("path", ["realcells/pointrend_R18.yaml", "demo/pointrend_R50.yaml",
                                  "revvity25/pointrend_R50.yaml"])
def test_pointrend_configs_use_the_empty_safe_heads(path):
    cfg = build_config(os.path.join(_ROOT, "configs", path), prepare_data=False)
    assert cfg.MODEL.ROI_HEADS.NAME == "EmptySafePointRendROIHeads"


def test_batch_without_foreground_gives_zero_mask_losses_and_gradients():
    model = _pointrend("realcells/pointrend_R18.yaml")
    heads = model.roi_heads
    assert isinstance(heads, EmptySafePointRendROIHeads)
    features = model.backbone(torch.rand(2, 3, 64, 64) * 255)
    batch = [_no_foreground(64), _no_foreground(64)]

    # Detectron2's own heads stop training on this batch.
    with pytest.raises(ValueError, match="non-empty list"):
        PointRendROIHeads._forward_mask(heads, features, batch)

    losses = heads._forward_mask(features, batch)
    assert set(losses) == {"loss_mask", "loss_mask_point"}
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in heads.mask_head.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)


def test_whole_model_trains_on_an_image_without_cells():
    model = _pointrend("realcells/pointrend_R18.yaml")
    image = Instances((64, 64))
    image.gt_boxes = Boxes(torch.zeros(0, 4))
    image.gt_classes = torch.zeros(0, dtype=torch.int64)
    image.gt_masks = BitMasks(torch.zeros(0, 64, 64, dtype=torch.bool))
    inputs = [{"image": torch.rand(3, 64, 64) * 255, "instances": image, "height": 64,
               "width": 64}]
    with EventStorage():
        losses = model(inputs)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_mask_point"].item() == 0.0
    assert losses["loss_cls"].item() > 0.0  # every proposal is background, still learned
