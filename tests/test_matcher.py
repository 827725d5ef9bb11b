"""Hungarian matcher: optimality against brute force, empty targets, shared points."""
import itertools

import pytest
import torch

import iaunet_d2.compat  # noqa: F401
from iaunet_d2.modeling import matcher as matcher_mod
from iaunet_d2.modeling.matcher import (
    HungarianMatcher,
    compute_cost_matrix,
    linear_assignment,
    pixel_index_to_coords,
)


def _brute_force_min_cost(cost):
    """Minimum total cost over all injective maps targets -> predictions."""
    num_preds, num_tgts = cost.shape
    best = float("inf")
    for preds in itertools.permutations(range(num_preds), num_tgts):
        total = sum(cost[p, t].item() for t, p in enumerate(preds))
        best = min(best, total)
    return best


def _random_problem(seed, num_queries, num_targets, num_classes=2, num_points=64):
    g = torch.Generator().manual_seed(seed)
    pred_logits = torch.randn(num_queries, num_classes + 1, generator=g) * 3
    pred_points = torch.randn(num_queries, num_points, generator=g) * 4
    labels = torch.randint(num_classes, (num_targets,), generator=g)
    tgt_points = (torch.rand(num_targets, num_points, generator=g) > 0.5).float()
    return pred_logits, pred_points, labels, tgt_points


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_targets", range(0, 5))
def test_assignment_is_optimal(seed, num_targets):
    num_queries = 5
    pred_logits, pred_points, labels, tgt_points = _random_problem(seed, num_queries, num_targets)
    cost = compute_cost_matrix(pred_logits, pred_points, labels, tgt_points, 1.0, 5.0, 2.0)
    assert cost.shape == (num_queries, num_targets)
    pred_idx, tgt_idx = linear_assignment(cost)
    assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64
    assert len(pred_idx) == len(tgt_idx) == num_targets
    # One-to-one: every target once, every prediction at most once.
    assert sorted(tgt_idx.tolist()) == list(range(num_targets))
    assert len(set(pred_idx.tolist())) == num_targets
    total = cost[pred_idx, tgt_idx].sum().item() if num_targets else 0.0
    expected = _brute_force_min_cost(cost) if num_targets else 0.0
    assert total == pytest.approx(expected, abs=1e-5)


def test_cost_matrix_terms_match_definitions():
    pred_logits, pred_points, labels, tgt_points = _random_problem(3, 4, 3, num_points=32)
    prob = pred_logits.softmax(-1)
    cost = compute_cost_matrix(pred_logits, pred_points, labels, tgt_points, 1.0, 5.0, 2.0)
    for i in range(4):
        for j in range(3):
            x, t = pred_points[i], tgt_points[j]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t)
            p = x.sigmoid()
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            ref = -prob[i, labels[j]] + 5.0 * bce + 2.0 * dice
            assert cost[i, j].item() == pytest.approx(ref.item(), abs=1e-5)


def test_matcher_finds_the_right_queries():
    """Targets are copies of some queries' masks at 4x resolution: matched back to them."""
    torch.manual_seed(0)
    num_queries, h, w = 6, 8, 8
    low = torch.zeros(num_queries, h, w)
    for q in range(num_queries):
        low[q, q : q + 2, q : q + 3] = 1.0
    pred_masks = (low * 2 - 1) * 20  # logits
    pred_logits = torch.full((1, num_queries, 2), -5.0)
    pred_logits[0, :, 0] = 5.0
    chosen = torch.tensor([4, 1, 3])
    tgt_masks = low[chosen].repeat_interleave(4, 1).repeat_interleave(4, 2).bool()
    targets = [{"labels": torch.zeros(3, dtype=torch.int64), "masks": tgt_masks}]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=5.0, cost_dice=2.0, num_points=256)
    outputs = {"pred_logits": pred_logits, "pred_masks": pred_masks[None]}
    ((pred_idx, tgt_idx),) = matcher(outputs, targets)
    assert pred_idx[torch.argsort(tgt_idx)].tolist() == chosen.tolist()


def test_empty_targets_give_empty_indices():
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=5.0, cost_dice=2.0, num_points=32)
    outputs = {"pred_logits": torch.randn(2, 5, 2), "pred_masks": torch.randn(2, 5, 4, 4)}
    targets = [
        {
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 16, 16, dtype=torch.bool),
        },
        {"labels": torch.zeros(2, dtype=torch.int64), "masks": torch.rand(2, 16, 16) > 0.5},
    ]
    indices = matcher(outputs, targets)
    assert len(indices) == 2
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert indices[0][0].dtype == torch.int64
    assert len(indices[1][0]) == 2


def test_points_are_shared_by_predictions_and_targets(monkeypatch):
    """The cost the matcher uses equals the cost computed by hand on its own points."""
    seen = {}
    original = matcher_mod.sample_pixel_centers

    def recording(*args, **kwargs):
        index, coords = original(*args, **kwargs)
        seen["index"], seen["coords"] = index, coords
        return index, coords

    monkeypatch.setattr(matcher_mod, "sample_pixel_centers", recording)
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=5.0, cost_dice=2.0, num_points=50)
    pred_logits = torch.randn(5, 2)
    pred_masks = torch.randn(5, 4, 4)
    tgt_masks = torch.rand(3, 16, 16) > 0.5
    labels = torch.zeros(3, dtype=torch.int64)
    cost = matcher.image_cost(pred_logits, pred_masks, labels, tgt_masks)
    index = seen["index"]
    assert index.shape == (50,)
    # Targets at the pixels, predictions = the 4x bilinear upsampling at the same pixels.
    up = torch.nn.functional.interpolate(
        pred_masks[None], scale_factor=4, mode="bilinear", align_corners=False
    )[0]
    ref = compute_cost_matrix(
        pred_logits, up.flatten(1)[:, index], labels, tgt_masks.flatten(1)[:, index].float(),
        1.0, 5.0, 2.0,
    )
    assert torch.allclose(cost, ref, atol=1e-4)
    coords = pixel_index_to_coords(index, 16, 16)
    assert torch.all((coords > 0) & (coords < 1))


def test_non_finite_cost_raises_clear_error():
    cost = torch.tensor([[0.0, float("nan")], [1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(FloatingPointError, match="NaN"):
        linear_assignment(cost)
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=5.0, cost_dice=2.0, num_points=16)
    outputs = {
        "pred_logits": torch.randn(1, 3, 2),
        "pred_masks": torch.full((1, 3, 4, 4), float("nan")),
    }
    targets = [{"labels": torch.zeros(1, dtype=torch.int64), "masks": torch.ones(1, 16, 16)}]
    with pytest.raises(FloatingPointError, match="not finite"):
        matcher(outputs, targets)


def test_from_config():
    from detectron2.config import get_cfg

    from iaunet_d2.config import add_iaunet_config

    cfg = get_cfg()
    add_iaunet_config(cfg)
    m = HungarianMatcher(cfg)
    assert (m.cost_class, m.cost_dice, m.cost_mask, m.num_points) == (1.0, 2.0, 5.0, 12544)
