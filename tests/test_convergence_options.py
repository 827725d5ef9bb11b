"""The IAUNet options that speed up learning: model, criterion and optimizer behaviour."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from iaunet_test_utils import small_iaunet_cfg, small_transformer_decoder, synthetic_batch

from iaunet_d2.config import build_config
from iaunet_d2.modeling.criterion import IAUNetSetCriterion
from iaunet_d2.modeling.losses import dice_loss, sigmoid_bce_loss
from iaunet_d2.solver import build_optimizer

from train_utils import DEMO_MASK_RCNN


def _decoder_outputs(cfg, train=True, size=(64, 64)):
    model = build_model(cfg)
    model.train(train)
    batch = synthetic_batch([size, size], [2, 1])
    with torch.set_grad_enabled(train):
        images = model.preprocess_image(batch)
        out = model.head(model.backbone(images.tensor))
    return model, out


@pytest.mark.parametrize("layers_per_level", [0, 2])
def test_deep_supervision_predicts_after_every_decoder_layer(layers_per_level):
    cfg = small_iaunet_cfg(DEEP_SUPERVISION=True, QUERY_LAYERS_PER_LEVEL=layers_per_level)
    model, out = _decoder_outputs(cfg)
    # 4 dual-path layers + 4 * k query layers; the last one is the main output.
    assert len(out["aux_outputs"]) == 4 + 4 * layers_per_level - 1
    assert len(model.head.transformer_decoder.query_layers) == 4 * layers_per_level
    for aux in out["aux_outputs"]:
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    # Evaluation needs no auxiliary predictions.
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(synthetic_batch([(64, 64)], [1]))
        out = model.head(model.backbone(images.tensor))
    assert out["aux_outputs"] == []


def test_final_aux_masks_use_the_shared_mask_features():
    """With AUX_MASK_FEATURES final an auxiliary mask is a kernel applied to the final
    1/4 mask features, so it is sharp: its logits vary at the finest scale, while
    level-0 "level" masks are upsampled 1/32 maps (8x8 blocks of near-constant value)."""
    torch.manual_seed(0)
    linear = dict(DEEP_SUPERVISION=True, MASK_HEAD="linear")
    final_cfg = small_iaunet_cfg(AUX_MASK_FEATURES="final", **linear)
    level_cfg = small_iaunet_cfg(AUX_MASK_FEATURES="level", **linear)
    _, final_out = _decoder_outputs(final_cfg)
    torch.manual_seed(0)
    _, level_out = _decoder_outputs(level_cfg)

    def roughness(masks):  # mean absolute difference of neighbouring logits
        return (masks[..., 1:] - masks[..., :-1]).abs().mean().item()

    final_level0 = final_out["aux_outputs"][0]["pred_masks"]
    level_level0 = level_out["aux_outputs"][0]["pred_masks"]
    assert roughness(final_level0) > 3 * roughness(level_level0)


def test_bad_aux_mask_features_and_negative_layer_count_are_refused():
    with pytest.raises(ValueError, match="AUX_MASK_FEATURES"):
        small_transformer_decoder(small_iaunet_cfg(AUX_MASK_FEATURES="coarse"))
    with pytest.raises(ValueError, match="QUERY_LAYERS_PER_LEVEL"):
        small_transformer_decoder(small_iaunet_cfg(QUERY_LAYERS_PER_LEVEL=-1))
    with pytest.raises(ValueError, match="MASK_FEATURE_POS"):
        small_transformer_decoder(small_iaunet_cfg(MASK_DIM=18, MASK_FEATURE_POS=True))


def test_content_embedding_is_added_to_every_level_ia_queries():
    torch.manual_seed(0)
    with_content = build_model(small_iaunet_cfg(QUERY_CONTENT_EMBED=True)).eval()
    without = build_model(small_iaunet_cfg(QUERY_CONTENT_EMBED=False)).eval()
    assert with_content.head.transformer_decoder.query_content.weight.shape == (6, 32)
    assert without.head.transformer_decoder.query_content is None
    missing, unexpected = without.load_state_dict(with_content.state_dict(), strict=False)
    assert not missing and unexpected == ["head.transformer_decoder.query_content.weight"]
    batch = synthetic_batch([(64, 64)], [2])

    def masks(model):
        with torch.no_grad():
            images = model.preprocess_image(batch)
            return model.head(model.backbone(images.tensor))["pred_masks"]

    assert not torch.allclose(masks(with_content), masks(without), atol=1e-4)
    # A zero embedding is exactly the paper's IA queries.
    with torch.no_grad():
        with_content.head.transformer_decoder.query_content.weight.zero_()
    assert torch.allclose(masks(with_content), masks(without), atol=1e-5)


def test_head_init_std_starts_masks_undecided():
    cfg = small_iaunet_cfg(HEAD_INIT_STD=0.01, MASK_HEAD="linear")
    decoder = small_transformer_decoder(cfg)
    for layer in (decoder.class_embed, decoder.kernel_embed):
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.2)
        assert torch.count_nonzero(layer.bias) == 0
    # Initial mask logits: near 0 (undecided), not PyTorch's default init's large values.
    torch.manual_seed(0)
    # The kernels' dot product only.
    plain = dict(MASK_FEATURE_POS=False, CENTER_PRIOR=False, MASK_HEAD="linear", ANCHOR_SIGMA=1.0)
    _, small = _decoder_outputs(small_iaunet_cfg(HEAD_INIT_STD=0.01, **plain), False)
    torch.manual_seed(0)
    _, default = _decoder_outputs(small_iaunet_cfg(HEAD_INIT_STD=0.0, **plain), False)
    assert small["pred_masks"].abs().mean() < 0.2 * default["pred_masks"].abs().mean()


def test_mask_feature_pos_adds_the_unnormalised_sine_embedding():
    cfg = small_iaunet_cfg(MASK_DIM=32, MASK_FEATURE_POS=True, MASK_HEAD="linear")
    torch.manual_seed(0)
    model, out = _decoder_outputs(cfg, train=False)
    decoder = model.head.transformer_decoder
    assert decoder.mask_pe is not None and not decoder.mask_pe.normalize
    # Same weights without the option: the kernels' dot product differs by exactly
    # kernels . pos.
    decoder.mask_pe = None
    with torch.no_grad():
        images = model.preprocess_image(synthetic_batch([(64, 64), (64, 64)], [2, 1]))
        plain = decoder(model.backbone(images.tensor), model.head.pixel_decoder)
    assert not torch.allclose(plain["pred_masks"], out["pred_masks"])
    assert torch.equal(plain["pred_logits"], out["pred_logits"])


# ------------------------------------------------------------------ criterion


def _criterion(**kwargs):
    from iaunet_d2.modeling.matcher import HungarianMatcher

    cfg = small_iaunet_cfg()
    return IAUNetSetCriterion(
        num_classes=1, matcher=HungarianMatcher(cfg), num_points=256, **kwargs
    )


def test_dense_mask_loss_equals_a_direct_computation_on_every_pixel():
    torch.manual_seed(1)
    criterion = _criterion(mask_loss="dense")
    pred = torch.randn(1, 3, 8, 8)
    targets = [{"labels": torch.zeros(2, dtype=torch.int64),
                "masks": (torch.rand(2, 32, 32) > 0.5).float()}]
    indices = [(torch.tensor([2, 0]), torch.tensor([1, 0]))]
    num_masks = torch.tensor(2.0)
    bce, dice = criterion.loss_masks(pred, targets, indices, num_masks)

    up = F.interpolate(pred[0, [2, 0]][:, None], size=(32, 32), mode="bilinear",
                       align_corners=False)[:, 0].flatten(1)
    tgt = targets[0]["masks"][[1, 0]].flatten(1)
    expected_bce = sum(F.binary_cross_entropy_with_logits(up[k], tgt[k]) for k in range(2)) / 2
    prob = up.sigmoid()
    expected_dice = sum(
        1 - (2 * (prob[k] * tgt[k]).sum() + 1) / (prob[k].sum() + tgt[k].sum() + 1) for k in range(2)
    ) / 2
    assert bce.item() == pytest.approx(expected_bce.item(), rel=1e-5)
    assert dice.item() == pytest.approx(expected_dice.item(), rel=1e-5)
    assert bce.item() == pytest.approx(sigmoid_bce_loss(up, tgt, num_masks).item(), rel=1e-6)
    assert dice.item() == pytest.approx(dice_loss(up, tgt, num_masks).item(), rel=1e-6)


def test_activation_map_loss_is_minus_log_mass_inside_the_target():
    criterion = _criterion(activation_map_weight=1.0)
    masks = torch.zeros(1, 32, 32)
    masks[0, :16, :16] = 1.0  # the top-left quarter
    targets = [{"labels": torch.zeros(1, dtype=torch.int64), "masks": masks}]
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    uniform = torch.full((1, 2, 4, 4), 1 / 16)
    inside = torch.zeros(1, 2, 4, 4)
    inside[0, 1, 0, 0] = 1.0
    num_masks = torch.tensor(1.0)
    loss_uniform = criterion.loss_activation_maps([uniform], targets, indices, num_masks)
    loss_inside = criterion.loss_activation_maps([uniform, inside], targets, indices, num_masks)
    assert loss_uniform.item() == pytest.approx(-math.log(0.25), rel=1e-5)
    # Mean over levels: (-log 0.25 + -log 1) / 2.
    assert loss_inside.item() == pytest.approx(-math.log(0.25) / 2, rel=1e-5)


def test_activation_map_loss_trains_with_the_model():
    cfg = small_iaunet_cfg(ACTIVATION_MAP_WEIGHT=0.5)
    model = build_model(cfg)
    model.train()
    losses = model(synthetic_batch([(64, 64), (64, 64)], [3, 2]))
    assert losses["loss_activation"].item() > 0
    sum(losses.values()).backward()
    ia_conv = model.head.transformer_decoder.ia_layers[0].conv.weight
    assert ia_conv.grad.abs().sum() > 0


# ------------------------------------------------------------------ optimizer


def test_embeddings_and_norms_get_their_own_weight_decay():
    cfg = build_config(DEMO_MASK_RCNN, ["SOLVER.WEIGHT_DECAY", "0.05", "SOLVER.WEIGHT_DECAY_EMBED",
                                        "0.0", "SOLVER.WEIGHT_DECAY_NORM", "0.01",
                                        "SOLVER.BACKBONE_MULTIPLIER", "0.1",
                                        "SOLVER.BASE_LR", "0.01"], prepare_data=False)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
            self.queries = torch.nn.Embedding(4, 3)
            self.head = torch.nn.Linear(3, 1)

    net = Net()
    optimizer = build_optimizer(cfg, net)
    hyper = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups
             for p in g["params"]}
    assert len(hyper) == len(list(net.parameters()))
    assert hyper[id(net.queries.weight)] == pytest.approx((0.01, 0.0))
    assert hyper[id(net.head.weight)] == pytest.approx((0.01, 0.05))
    assert hyper[id(net.backbone[0].weight)] == pytest.approx((0.001, 0.05))
    assert hyper[id(net.backbone[1].weight)] == pytest.approx((0.001, 0.01))


def test_dense_targets_mark_foreground_and_the_border_between_touching_cells():
    masks = torch.zeros(2, 8, 8)
    masks[0, 2:6, 0:4] = 1.0  # two 4x4 squares side by side, touching at x = 3 | 4
    masks[1, 2:6, 4:8] = 1.0
    target = IAUNetSetCriterion.dense_targets([{"masks": masks}], (8, 8))[0]
    fg, border = target
    assert torch.equal(fg, masks.amax(0))
    # Every pixel of a square but its 2x2 (left) / 2x2 (right) interior... borders include
    # the image edge side and the shared edge, so both columns 3 and 4 are border.
    assert border[2:6, 3].eq(1).all() and border[2:6, 4].eq(1).all()
    assert border[3:5, 1:3].eq(0).all() and border[3:5, 5:7].eq(0).all()
    assert border[0:2].eq(0).all() and border[6:].eq(0).all()
    # Average pooling to 1/4 gives coverage fractions.
    pooled = IAUNetSetCriterion.dense_targets([{"masks": masks}], (2, 2))[0]
    assert pooled[0].tolist() == [[0.5, 0.5], [0.5, 0.5]]


def test_dense_loss_trains_with_the_model_and_is_absent_at_inference():
    cfg = small_iaunet_cfg(DENSE_WEIGHT=1.0)
    model = build_model(cfg)
    model.train()
    losses = model(synthetic_batch([(64, 64), (64, 64)], [3, 0]))
    assert 0.3 < losses["loss_dense"].item() < 2.0
    sum(losses.values()).backward()
    assert model.head.transformer_decoder.dense_head.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(synthetic_batch([(64, 64)], [1]))
        out = model.head(model.backbone(images.tensor))
    assert "pred_dense" not in out


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_checkpoint_of_an_earlier_decoder_loads_and_predicts_as_trained(tmp_path, version):
    """Checkpoints of earlier decoder versions load strictly into a model built with
    today's defaults and give the same masks: version 1 (the paper's decoder: no content
    embedding, no mask positional features), 2 (no anchor points, no center prior) and
    3 (anchors with the then default width 1.0, center prior on), all linear heads."""
    torch.manual_seed(0)
    if version == 3:
        earlier = dict(ANCHOR_POINTS=True, ANCHOR_SIGMA=1.0, CENTER_PRIOR=True)
    else:
        earlier = dict(ANCHOR_POINTS=False, CENTER_PRIOR=False)
    earlier.update(MASK_DIM=32, MASK_HEAD="linear")
    if version == 1:
        earlier.update(QUERY_CONTENT_EMBED=False, MASK_FEATURE_POS=False)
    old = build_model(small_iaunet_cfg(**earlier)).eval()
    state = old.state_dict()
    state.pop("head.transformer_decoder.anchor_sigma", None)  # not saved before version 4
    state._metadata["head.transformer_decoder"]["version"] = version
    path = tmp_path / "old.pth"
    torch.save({"model": state}, path)

    new = build_model(small_iaunet_cfg(MASK_DIM=32)).eval()
    decoder = new.head.transformer_decoder
    assert decoder.mask_pe is not None and decoder.anchors is not None
    assert decoder.center_scale is None and decoder.dynamic_mask is not None
    assert float(decoder.anchor_sigma) == pytest.approx(0.5 / math.sqrt(6))
    from iaunet_d2.engine import AtomicCheckpointer

    AtomicCheckpointer(new).load_weights(str(path))  # strict: raises on any mismatch
    assert decoder.dynamic_mask is None and decoder.kernel_embed is not None
    assert (decoder.anchors is None) == (version < 3)
    assert (decoder.center_scale is None) == (version < 3)
    if version == 3:
        assert float(decoder.anchor_sigma) == pytest.approx(1.0 / math.sqrt(6))
    assert (decoder.mask_pe is None) == (version == 1)
    if version == 1:
        assert torch.count_nonzero(decoder.query_content.weight) == 0
    batch = synthetic_batch([(64, 64)], [2])
    with torch.no_grad():
        outs = [m.head(m.backbone(m.preprocess_image(batch).tensor))
                for m in (old, new)]
    assert torch.allclose(outs[0]["pred_masks"], outs[1]["pred_masks"], atol=1e-5)
    # Today's checkpoints carry version 4 and the anchor width.
    saved = new.state_dict()
    assert saved._metadata["head.transformer_decoder"]["version"] == 4
    assert ("head.transformer_decoder.anchor_sigma" in saved) == (version == 3)


def test_centroid_distance_is_measured_from_each_map_centre_of_mass():
    from iaunet_d2.modeling.transformer_decoder.instance_activation import centroid_distance2

    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 2] = 1.0  # a point: pixel centre (y, x) = (-0.25, 0.25) on a 4x4 grid
    maps[0, 1, :, :2] = 1 / 8  # the left half: centroid (0, -0.5)
    d2 = centroid_distance2(maps, (8, 8))
    assert d2.shape == (1, 2, 8, 8)
    # On the 8x8 grid, pixel centres are at (i + 0.5) / 8 * 2 - 1.
    ys = (torch.arange(8) + 0.5) / 4 - 1
    assert torch.allclose(d2[0, 0], (ys[:, None] + 0.25) ** 2 + (ys[None, :] - 0.25) ** 2)
    assert torch.allclose(d2[0, 1], ys[:, None] ** 2 + (ys[None, :] + 0.5) ** 2)


def test_center_prior_lowers_logits_away_from_the_activation_centroid():
    torch.manual_seed(0)
    cfg = small_iaunet_cfg(CENTER_PRIOR=True, DEEP_SUPERVISION=True, MASK_HEAD="linear")
    model, out = _decoder_outputs(cfg)
    decoder = model.head.transformer_decoder
    assert decoder.center_scale is not None
    losses_model = build_model(cfg).train()
    losses = losses_model(synthetic_batch([(64, 64), (64, 64)], [3, 2]))
    sum(losses.values()).backward()
    assert losses_model.head.transformer_decoder.center_scale.bias.grad.abs() > 0
    # A strong prior: masks fall off with the distance from the centroid.
    with torch.no_grad():
        decoder.center_scale.bias.fill_(5.0)
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(synthetic_batch([(64, 64)], [1]))
        strong = decoder(model.backbone(images.tensor), model.head.pixel_decoder)
    maps = strong["activation_maps"][-1][0]  # (N, 16, 16)
    masks = strong["pred_masks"][0]
    for q in range(masks.shape[0]):
        peak = masks[q].flatten().argmax()
        # The best pixel of each mask lies within 3 pixels (1/4 grid) of its map's centroid.
        from iaunet_d2.modeling.transformer_decoder.instance_activation import centroid_distance2

        d2 = centroid_distance2(maps[q][None, None], (16, 16))[0, 0]
        assert d2.flatten()[peak] <= (3 * 2 / 16) ** 2


# ------------------------------------------------------------------ anchor points


def test_halton_points_cover_the_square_without_repeats():
    from iaunet_d2.modeling.transformer_decoder.instance_activation import halton_points

    points = halton_points(50)
    assert points.shape == (50, 2)
    assert torch.allclose(points[:3], torch.tensor([[0.5, 1 / 3], [0.25, 2 / 3], [0.75, 1 / 9]]))
    assert ((points > 0) & (points < 1)).all()
    assert torch.cdist(points, points).add(torch.eye(50)).min() > 0.03
    # Every quarter of the square holds about a quarter of the points.
    quarters = (points[:, 0] > 0.5).long() * 2 + (points[:, 1] > 0.5).long()
    assert torch.bincount(quarters, minlength=4).min() >= 10


def test_anchor_location_bias_peaks_at_the_anchor():
    from iaunet_d2.modeling.transformer_decoder.instance_activation import anchor_location_bias

    anchors = torch.tensor([[1.5 / 16, 2.5 / 8], [0.9, 0.1]])
    bias = anchor_location_bias(anchors, (8, 16), sigma=0.1)
    assert bias.shape == (2, 8, 16)
    # Anchor 0 sits on the pixel centre (row 2, column 1) of an 8 x 16 grid.
    assert bias[0].flatten().argmax() == 2 * 16 + 1 and bias[0, 2, 1] == 0
    # One pixel to the right is 1/16 away: -(1/16)^2 / (2 * 0.01).
    assert bias[0, 2, 2].item() == pytest.approx(-(1 / 16) ** 2 / 0.02)
    row, col = divmod(int(bias[1].flatten().argmax()), 16)
    assert (row, col) == (0, 14)


def test_anchor_points_start_each_query_from_its_own_region():
    """Without anchors all initial activation maps are near-uniform, so the N queries
    are near-equal global averages; with anchors each map is centred on its anchor."""
    from iaunet_d2.modeling.transformer_decoder.instance_activation import centroid_distance2

    def first_level_maps(anchor_points):
        torch.manual_seed(0)
        # A narrow prior (0.2 of the anchor spacing), so that the image border does not
        # pull the centroids inwards.
        cfg = small_iaunet_cfg(ANCHOR_POINTS=anchor_points, ANCHOR_SIGMA=0.2)
        _, out = _decoder_outputs(cfg)
        return out["activation_maps"][-1][0].detach()  # (N, 16, 16), finest level

    plain, anchored = first_level_maps(False), first_level_maps(True)
    assert plain.amax((1, 2)).max() < 2.0 / plain[0].numel()  # near-uniform
    decoder = small_transformer_decoder(small_iaunet_cfg(ANCHOR_POINTS=True))
    anchors = decoder.anchors.weight.detach() * 2 - 1  # to the [-1, 1] centroid frame
    d2 = centroid_distance2(anchored[None], (1, 1))[0, :, 0, 0]  # from the image centre
    # Each map's centroid is its anchor: distance from the centre = the anchor's.
    assert torch.allclose(d2, anchors.pow(2).sum(1), atol=0.05)
    # The maps of different queries overlap little (uniform maps overlap fully).
    overlap = lambda m: (m.flatten(1) @ m.flatten(1).T).fill_diagonal_(0).sum() / (  # noqa: E731
        m.flatten(1).pow(2).sum() * (m.shape[0] - 1))
    assert overlap(anchored) < 0.5 * overlap(plain)


def test_activation_cost_matches_each_target_to_the_map_inside_it():
    from iaunet_d2.modeling.matcher import HungarianMatcher

    # Three queries' maps (one level, 4 x 4): on the right half, the top left pixel, the
    # bottom row. Two targets at 8 x 8: the bottom left quarter and the right half.
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0, :, 2:] = 1 / 8
    maps[0, 1, 0, 0] = 1.0
    maps[0, 2, 3, :] = 1 / 4
    masks = torch.zeros(2, 8, 8)
    masks[0, 4:, :4] = 1
    masks[1, :, 4:] = 1
    cost = HungarianMatcher.activation_cost([maps[0]], masks)
    expected_mass = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.5, 0.5]])
    assert torch.allclose(cost, -torch.log(expected_mass.clamp(min=1e-6)))

    # With equal class and mask predictions the activation cost alone decides.
    outputs = {
        "pred_logits": torch.zeros(1, 3, 2),
        "pred_masks": torch.zeros(1, 3, 2, 2),
        "activation_maps": [maps],
    }
    targets = [{"labels": torch.zeros(2, dtype=torch.int64), "masks": masks}]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=64,
                               cost_activation=1.0)
    (pred_idx, tgt_idx), = matcher(outputs, targets)
    assert dict(zip(pred_idx.tolist(), tgt_idx.tolist())) == {0: 1, 2: 0}


# ------------------------------------------------------------------ centre head


def test_mask_centroids_are_the_centres_of_mass():
    from iaunet_d2.modeling.matcher import mask_centroids

    masks = torch.zeros(3, 8, 16)
    masks[0, 2:4, 4:8] = 1  # rows 2-3, columns 4-7
    masks[1, :, :] = 1
    centres = mask_centroids(masks)
    assert torch.allclose(centres[0], torch.tensor([6 / 16, 3 / 8]))
    assert torch.allclose(centres[1], torch.tensor([0.5, 0.5]))
    assert torch.allclose(centres[2], torch.tensor([0.5, 0.5]))  # empty: the centre


def test_center_head_starts_at_the_anchors_and_learns_the_centroids():
    torch.manual_seed(0)
    cfg = small_iaunet_cfg(ANCHOR_POINTS=True, CENTER_WEIGHT=5.0, DEEP_SUPERVISION=True)
    model, out = _decoder_outputs(cfg)
    anchors = model.head.transformer_decoder.anchors.weight
    assert torch.allclose(out["pred_centers"][0], anchors, atol=1e-5)
    assert all("pred_centers" in aux for aux in out["aux_outputs"])

    criterion = model.criterion
    assert criterion.matcher.cost_center == 5.0
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 40:56, 8:24] = True  # centroid (16 / 64, 48 / 64)
    targets = [{"labels": torch.zeros(1, dtype=torch.int64), "masks": masks}]
    pred = torch.full((1, 6, 2), 0.5, requires_grad=True)
    with torch.no_grad():
        pred[0, 3] = torch.tensor([0.3, 0.7])
    indices = [(torch.tensor([3]), torch.tensor([0]))]
    loss = criterion.loss_centers(pred, targets, indices, torch.tensor(1.0))
    assert loss.item() == pytest.approx(0.05 + 0.05, abs=1e-6)
    loss.backward()
    assert torch.equal(pred.grad[0, 3], torch.tensor([1.0, -1.0]))
    assert torch.count_nonzero(pred.grad[0, :3]) == 0
    # Matching by centre alone picks the query nearest to the centroid.
    outputs = {"pred_logits": torch.zeros(1, 6, 2), "pred_masks": torch.zeros(1, 6, 16, 16),
               "pred_centers": pred.detach()}
    (pred_idx, tgt_idx), = criterion.matcher(outputs, targets)
    assert pred_idx.tolist() == [3] and tgt_idx.tolist() == [0]


def test_center_prior_follows_the_predicted_centres():
    from iaunet_d2.modeling.transformer_decoder.instance_activation import point_distance2

    points = torch.tensor([[[0.25, 0.75]]])
    d2 = point_distance2(points, (4, 4))
    # Pixel (row 3, column 0) of a 4 x 4 grid has centre (0.125, 0.875), 0.125 away from
    # the point on both axes: (2 * 0.125)^2 * 2 in the [-1, 1] frame.
    assert d2.shape == (1, 1, 4, 4)
    assert d2[0, 0, 3, 0].item() == pytest.approx(2 * 0.25 ** 2)
    assert d2[0, 0].flatten().argmin() in (2 * 4 + 0, 2 * 4 + 1, 3 * 4 + 0, 3 * 4 + 1)


# ------------------------------------------------------------------ IoU-aware classes


def test_iou_aware_class_targets_are_the_matched_mask_ious():
    criterion = _criterion(iou_aware_class=True)
    pred = torch.full((1, 3, 4, 4), -5.0)
    pred[0, 0, :2, :2] = 5.0  # 4 pixels, covering the target's 2
    pred[0, 2, :, :2] = 5.0  # 8 pixels, covering the target's 2
    masks = torch.zeros(1, 8, 8)
    masks[0, :4, 2:4] = 1  # at 4 x 4: rows 0-1, column 1
    masks = masks.repeat(2, 1, 1)
    targets = [{"labels": torch.zeros(2, dtype=torch.int64), "masks": masks}]
    indices = [(torch.tensor([0, 2]), torch.tensor([0, 1]))]
    ious = criterion.matched_mask_ious(pred, targets, indices)
    assert torch.allclose(ious[0], torch.tensor([2 / 4, 2 / 8]))

    logits = torch.randn(1, 3, 2)
    # IoU 1 everywhere: exactly the hard-label cross-entropy.
    ones = [torch.ones(2)]
    hard = criterion.loss_labels(logits, targets, indices)
    assert criterion.loss_labels(logits, targets, indices, ones).item() == pytest.approx(hard.item())
    # Soft targets: query 0 is a cell with probability 1/2, query 2 with 1/4, the rest
    # "no object" (whose weight is 0.1); the unmatched query 1 is "no object".
    log_p = F.log_softmax(logits[0], -1)
    w = criterion.empty_weight
    t = torch.tensor([[0.5, 0.5], [0.0, 1.0], [0.25, 0.75]]) * w
    expected = -(t * log_p).sum() / t.sum()
    assert criterion.loss_labels(logits, targets, indices, ious).item() == pytest.approx(
        expected.item(), rel=1e-5)
