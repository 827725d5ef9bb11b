"""IAUNet set criterion: perfect vs wrong predictions, empty images, aux outputs, weights."""
import pytest
import torch

import iaunet_d2.compat  # noqa: F401
from iaunet_d2.modeling.criterion import (
    IAUNET_CRITERION_REGISTRY,
    IAUNetSetCriterion,
    build_criterion,
)
from iaunet_d2.modeling.matcher import HungarianMatcher

NUM_CLASSES = 2
NUM_QUERIES = 6
SIZE = 32


def _criterion(**overrides):
    kwargs = dict(
        num_classes=NUM_CLASSES,
        matcher=HungarianMatcher(cost_class=1.0, cost_mask=5.0, cost_dice=2.0, num_points=256),
        class_weight=1.0,
        mask_weight=5.0,
        dice_weight=2.0,
        no_object_weight=0.1,
        num_points=256,
    )
    kwargs.update(overrides)
    return IAUNetSetCriterion(**kwargs)


def _targets():
    """Two images: 3 and 2 rectangles at SIZE x SIZE."""
    targets = []
    for boxes, labels in (
        ([(2, 2, 10, 12), (14, 4, 30, 9), (5, 18, 20, 30)], [0, 1, 0]),
        ([(0, 0, 16, 16), (20, 20, 31, 27)], [1, 1]),
    ):
        masks = torch.zeros(len(boxes), SIZE, SIZE, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            masks[k, y0:y1, x0:x1] = True
        targets.append({"labels": torch.tensor(labels), "masks": masks})
    return targets


def _empty_target():
    return {
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.bool),
    }


def _perfect_outputs(targets, mask_res=SIZE):
    """Query 2k+1 predicts target k exactly; the other queries predict no-object."""
    batch = len(targets)
    logits = torch.full((batch, NUM_QUERIES, NUM_CLASSES + 1), -20.0)
    logits[..., NUM_CLASSES] = 20.0
    masks = torch.full((batch, NUM_QUERIES, mask_res, mask_res), -20.0)
    for b, t in enumerate(targets):
        for k, (label, mask) in enumerate(zip(t["labels"], t["masks"])):
            q = 2 * k + 1
            logits[b, q] = -20.0
            logits[b, q, label] = 20.0
            masks[b, q] = torch.where(mask, 20.0, -20.0)
    return {"pred_logits": logits, "pred_masks": masks}


def test_perfect_prediction_has_near_zero_losses():
    targets = _targets()
    losses = _criterion()(_perfect_outputs(targets), targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    assert losses["loss_mask"].item() < 1e-3
    assert losses["loss_dice"].item() < 1e-3
    assert losses["loss_ce"].item() < 1e-3


def test_wrong_prediction_has_larger_losses():
    targets = _targets()
    good = _criterion()(_perfect_outputs(targets), targets)
    wrong_outputs = _perfect_outputs(targets)
    # Shift every predicted mask and swap class evidence.
    wrong_outputs["pred_masks"] = torch.roll(
        wrong_outputs["pred_masks"], shifts=(7, 9), dims=(2, 3)
    )
    wrong_outputs["pred_logits"] = wrong_outputs["pred_logits"].flip(-1)
    wrong = _criterion()(wrong_outputs, targets)
    for key in good:
        assert wrong[key].item() > good[key].item() + 0.5, key


def test_quarter_resolution_predictions_are_supported():
    """Masks at 1/4 resolution, targets at full resolution: good beats bad."""
    targets = _targets()
    low = _perfect_outputs(targets)
    low["pred_masks"] = torch.nn.functional.avg_pool2d(low["pred_masks"], 4)
    losses_good = _criterion()(low, targets)
    bad = {"pred_logits": low["pred_logits"], "pred_masks": -low["pred_masks"]}
    losses_bad = _criterion()(bad, targets)
    assert torch.isfinite(torch.stack(list(losses_good.values()))).all()
    assert losses_good["loss_mask"] < losses_bad["loss_mask"]
    assert losses_good["loss_dice"] < losses_bad["loss_dice"]


def test_zero_target_images():
    empty = _empty_target()
    logits = torch.randn(2, NUM_QUERIES, NUM_CLASSES + 1, requires_grad=True)
    masks = torch.randn(2, NUM_QUERIES, 8, 8, requires_grad=True)
    losses = _criterion()({"pred_logits": logits, "pred_masks": masks}, [empty, empty])
    assert losses["loss_ce"].item() > 0
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert masks.grad is not None and torch.count_nonzero(masks.grad) == 0
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_mixed_batch_with_an_empty_image():
    targets = _targets()
    targets[1] = _empty_target()
    outputs = _perfect_outputs(targets)
    outputs = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    losses = _criterion()(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # The empty image's masks get no mask-loss gradient.
    assert torch.count_nonzero(outputs["pred_masks"].grad[1]) == 0


def test_no_object_targets_for_unmatched_queries():
    """An empty image whose queries all predict no-object has a tiny class loss."""
    empty = _empty_target()
    logits = torch.full((1, NUM_QUERIES, NUM_CLASSES + 1), -20.0)
    logits[..., -1] = 20.0
    masks = torch.zeros(1, NUM_QUERIES, 8, 8)
    losses = _criterion()({"pred_logits": logits, "pred_masks": masks}, [empty])
    assert losses["loss_ce"].item() < 1e-6
    logits[..., -1] = -20.0
    logits[..., 0] = 20.0
    masks = torch.zeros(1, NUM_QUERIES, 8, 8)
    losses = _criterion()({"pred_logits": logits, "pred_masks": masks}, [empty])
    assert losses["loss_ce"].item() > 10


def test_aux_outputs_get_suffixed_keys():
    targets = _targets()
    outputs = _perfect_outputs(targets)
    low = {k: v.clone() for k, v in outputs.items()}
    low["pred_masks"] = torch.nn.functional.avg_pool2d(low["pred_masks"], 2)
    outputs["aux_outputs"] = [low, {k: v.clone() for k, v in outputs.items()}]
    losses = _criterion()(outputs, targets)
    names = ("loss_ce", "loss_mask", "loss_dice")
    expected = {f"{name}{suffix}" for name in names for suffix in ("", "_0", "_1")}
    assert set(losses) == expected
    assert losses["loss_dice_1"].item() < 1e-3


def test_weights_are_applied():
    torch.manual_seed(1)
    targets = _targets()
    outputs = {
        "pred_logits": torch.randn(2, NUM_QUERIES, NUM_CLASSES + 1),
        "pred_masks": torch.randn(2, NUM_QUERIES, 8, 8),
    }
    torch.manual_seed(5)
    base = _criterion()(outputs, targets)
    torch.manual_seed(5)
    doubled = _criterion(dice_weight=4.0, mask_weight=10.0, class_weight=2.0)(outputs, targets)
    for key in ("loss_ce", "loss_mask", "loss_dice"):
        assert doubled[key].item() == pytest.approx(2 * base[key].item(), rel=1e-5)


def test_uniform_sampling_option():
    targets = _targets()
    losses = _criterion(importance_sample_ratio=0.0)(_perfect_outputs(targets), targets)
    assert losses["loss_mask"].item() < 1e-3 and losses["loss_dice"].item() < 1e-3


def test_empty_weight_buffer():
    crit = _criterion(no_object_weight=0.25)
    assert "empty_weight" in dict(crit.named_buffers())
    assert crit.empty_weight.tolist() == [1.0, 1.0, 0.25]


def test_build_from_config():
    from detectron2.config import get_cfg

    from iaunet_d2.config import add_iaunet_config

    cfg = get_cfg()
    add_iaunet_config(cfg)
    assert "IAUNetSetCriterion" in IAUNET_CRITERION_REGISTRY
    crit = build_criterion(cfg)
    assert isinstance(crit, IAUNetSetCriterion)
    assert crit.empty_weight.tolist() == pytest.approx([1.0, 0.1])
    assert (crit.class_weight, crit.dice_weight, crit.mask_weight) == (1.0, 2.0, 5.0)
    assert crit.num_points == 12544 and crit.matcher.num_points == 12544
