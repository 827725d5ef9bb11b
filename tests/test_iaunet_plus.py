"""IAUNet+ (MODEL.IAUNET.PLUS), the project's variant of the paper's IAUNet: each
addition's behaviour, what stays off in the paper's model, and the config errors."""
import math

import pytest
import torch
from detectron2.modeling import build_model

from iaunet_test_utils import small_iaunet_cfg, small_transformer_decoder, synthetic_batch

from iaunet_d2.config import ConfigError, build_config
from iaunet_d2.modeling.criterion import IAUNetSetCriterion
from iaunet_d2.modeling.transformer_decoder.instance_activation import (
    anchor_location_bias,
    halton_points,
    map_centroids,
)
from iaunet_d2.solver import build_optimizer

from train_utils import DEMO_MASK_RCNN, REPO_ROOT

DEMO_IAUNET = f"{REPO_ROOT}/configs/demo/iaunet_R50.yaml"


def _decoder_outputs(cfg, train=True, size=(64, 64)):
    model = build_model(cfg)
    model.train(train)
    batch = synthetic_batch([size, size], [2, 1])
    with torch.set_grad_enabled(train):
        images = model.preprocess_image(batch)
        out = model.head(model.backbone(images.tensor))
    return model, out


def test_the_paper_model_has_none_of_the_additions():
    decoder = small_transformer_decoder(small_iaunet_cfg())
    assert decoder.anchors is None and decoder.query_content is None
    assert decoder.mask_pe is None and decoder.dynamic_mask is None
    assert decoder.kernel_embed is not None and not decoder.deep_supervision
    model = build_model(small_iaunet_cfg())
    assert model.criterion.activation_map_weight == 0
    assert model.criterion.matcher.cost_activation == 0
    losses = model.train()(synthetic_batch([(64, 64)], [2]))
    assert sorted(losses) == ["loss_ce", "loss_dice", "loss_mask"]


def test_plus_keys_without_enabled_are_refused():
    cfg = small_iaunet_cfg()
    cfg.MODEL.IAUNET.PLUS.ANCHOR_SIGMA = 0.35
    with pytest.raises(ValueError, match=r"PLUS.ANCHOR_SIGMA is set \(0.35\) but "
                                         r"MODEL.IAUNET.PLUS.ENABLED is False"):
        build_model(cfg)


@pytest.mark.parametrize("key, message", [
    ("MODEL.IAUNET.MASK_HEAD", "MODEL.IAUNET.MASK_HEAD was moved to MODEL.IAUNET.PLUS"),
    ("MODEL.IAUNET.DEEP_SUPERVISION", "MODEL.IAUNET.DEEP_SUPERVISION was moved to MODEL.IAUNET.PLUS"),
    ("MODEL.IAUNET.CENTER_PRIOR", "MODEL.IAUNET.CENTER_PRIOR was removed"),
])
def test_removed_keys_say_where_their_option_went(key, message):
    with pytest.raises(ConfigError, match=message):
        build_config(DEMO_IAUNET, [key, "True"], prepare_data=False)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="MASK_FEATURE_POS needs MASK_DIM divisible by 4"):
        small_transformer_decoder(small_iaunet_cfg(MASK_DIM=18, plus={"MASK_FEATURE_POS": True}))
    with pytest.raises(ValueError, match="ANCHOR_SIGMA must be > 0"):
        small_transformer_decoder(small_iaunet_cfg(plus={"ANCHOR_SIGMA": 0.0}))


def test_deep_supervision_predicts_from_every_level():
    model, out = _decoder_outputs(small_iaunet_cfg(plus={"DEEP_SUPERVISION": True}))
    assert len(out["aux_outputs"]) == 3  # 4 levels, the last is the main output
    for aux in out["aux_outputs"]:
        assert aux["pred_masks"].shape == out["pred_masks"].shape
        assert len(aux["activation_maps"]) == 1
    losses = model(synthetic_batch([(64, 64)], [2]))
    assert {"loss_mask_0", "loss_dice_2", "loss_ce_1"} <= set(losses)
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(synthetic_batch([(64, 64)], [1]))
        out = model.head(model.backbone(images.tensor))
    assert out["aux_outputs"] == []  # evaluation needs no auxiliary predictions


def test_content_embedding_is_added_to_every_level_ia_queries():
    plain = dict(MASK_FEATURE_POS=False, ANCHOR_POINTS=False, DYNAMIC_MASK_HEAD=False,
                 HEAD_INIT_STD=0.0)
    torch.manual_seed(0)
    with_content = build_model(small_iaunet_cfg(plus=dict(plain, QUERY_CONTENT_EMBED=True))).eval()
    without = build_model(small_iaunet_cfg()).eval()
    assert with_content.head.transformer_decoder.query_content.weight.shape == (6, 32)
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
    plain = dict(MASK_FEATURE_POS=False, DYNAMIC_MASK_HEAD=False, ANCHOR_POINTS=False)
    decoder = small_transformer_decoder(small_iaunet_cfg(plus=dict(plain, HEAD_INIT_STD=0.01)))
    for layer in (decoder.class_embed, decoder.kernel_embed):
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.2)
        assert torch.count_nonzero(layer.bias) == 0
    torch.manual_seed(0)
    _, small = _decoder_outputs(small_iaunet_cfg(plus=dict(plain, HEAD_INIT_STD=0.01)), False)
    torch.manual_seed(0)
    _, default = _decoder_outputs(small_iaunet_cfg(plus=dict(plain, HEAD_INIT_STD=0.0)), False)
    assert small["pred_masks"].abs().mean() < 0.2 * default["pred_masks"].abs().mean()


def test_mask_feature_pos_adds_the_unnormalised_sine_embedding():
    cfg = small_iaunet_cfg(MASK_DIM=32, plus={"DYNAMIC_MASK_HEAD": False})
    torch.manual_seed(0)
    model, out = _decoder_outputs(cfg, train=False)
    decoder = model.head.transformer_decoder
    assert decoder.mask_pe is not None and not decoder.mask_pe.normalize
    decoder.mask_pe = None
    with torch.no_grad():
        images = model.preprocess_image(synthetic_batch([(64, 64), (64, 64)], [2, 1]))
        plain = decoder(model.backbone(images.tensor), model.head.pixel_decoder)
    assert not torch.allclose(plain["pred_masks"], out["pred_masks"])
    assert torch.equal(plain["pred_logits"], out["pred_logits"])


# ------------------------------------------------------------------ criterion


def test_activation_map_loss_is_minus_log_mass_inside_the_target():
    from iaunet_d2.modeling.matcher import HungarianMatcher

    criterion = IAUNetSetCriterion(num_classes=1, matcher=HungarianMatcher(small_iaunet_cfg()),
                                   num_points=256, activation_map_weight=1.0)
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
    model = build_model(small_iaunet_cfg(plus={"ACTIVATION_LOSS": 0.5}))
    model.train()
    losses = model(synthetic_batch([(64, 64), (64, 64)], [3, 2]))
    assert losses["loss_activation"].item() > 0
    sum(losses.values()).backward()
    assert model.head.transformer_decoder.ia_layers[0].conv.weight.grad.abs().sum() > 0


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
    outputs = {"pred_logits": torch.zeros(1, 3, 2), "pred_masks": torch.zeros(1, 3, 2, 2),
               "activation_maps": [maps]}
    targets = [{"labels": torch.zeros(2, dtype=torch.int64), "masks": masks}]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=64,
                               cost_activation=1.0)
    (pred_idx, tgt_idx), = matcher(outputs, targets)
    assert dict(zip(pred_idx.tolist(), tgt_idx.tolist())) == {0: 1, 2: 0}


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


def test_pretrained_backbones_train_at_the_pretrained_multiplier(tmp_path):
    weights = tmp_path / "R-50.pkl"
    weights.write_bytes(b"")
    scratch = build_config(DEMO_IAUNET, [], prepare_data=False)
    tuned = build_config(DEMO_IAUNET, ["MODEL.WEIGHTS", str(weights)], prepare_data=False)
    assert scratch.SOLVER.BACKBONE_MULTIPLIER == 1.0
    assert tuned.SOLVER.BACKBONE_MULTIPLIER == 0.1
    assert tuned.MODEL.RESNETS.NORM == "FrozenBN"


# ------------------------------------------------------------------ anchor points


def test_halton_points_cover_the_square_without_repeats():
    points = halton_points(50)
    assert points.shape == (50, 2)
    assert torch.allclose(points[:3], torch.tensor([[0.5, 1 / 3], [0.25, 2 / 3], [0.75, 1 / 9]]))
    assert ((points > 0) & (points < 1)).all()
    assert torch.cdist(points, points).add(torch.eye(50)).min() > 0.03
    quarters = (points[:, 0] > 0.5).long() * 2 + (points[:, 1] > 0.5).long()
    assert torch.bincount(quarters, minlength=4).min() >= 10


def test_anchor_location_bias_peaks_at_the_anchor_in_isotropic_units():
    # A 8 x 16 map whose pixels are 1/16 of the reference size on both axes.
    anchors = torch.tensor([[1.5 / 16, 2.5 / 16], [0.9, 0.1]])
    bias = anchor_location_bias(anchors, (8, 16), 1 / 16, sigma=0.1)
    assert bias.shape == (2, 8, 16)
    # Anchor 0 sits on the pixel centre (row 2, column 1).
    assert bias[0].flatten().argmax() == 2 * 16 + 1 and bias[0, 2, 1] == 0
    # One pixel to the right or one down is the same 1/16 away: -(1/16)^2 / (2 * 0.01).
    assert bias[0, 2, 2].item() == pytest.approx(-(1 / 16) ** 2 / 0.02)
    assert bias[0, 3, 1].item() == pytest.approx(-(1 / 16) ** 2 / 0.02)
    row, col = divmod(int(bias[1].flatten().argmax()), 16)
    assert (row, col) == (1, 14)


def test_anchor_points_start_each_query_from_its_own_region():
    """Without anchors all initial activation maps are near-uniform; with anchors each
    map is centred on its anchor (in the isotropic frame: 64 px images, IMAGE_SIZE 64)."""
    def finest_maps(plus):
        torch.manual_seed(0)
        cfg = small_iaunet_cfg(plus=plus)
        cfg.INPUT.IMAGE_SIZE = 64
        model, out = _decoder_outputs(cfg)
        return model, out["activation_maps"][-1][0].detach()  # (N, 16, 16), stride 4

    _, plain = finest_maps(None)
    model, anchored = finest_maps({"ANCHOR_SIGMA": 0.2})
    assert plain.amax((1, 2)).max() < 2.0 / plain[0].numel()  # near-uniform
    anchors = model.head.transformer_decoder.anchors.weight.detach()
    centroids = map_centroids(anchored[None], 4 / 64)[0]
    assert torch.allclose(centroids, anchors, atol=0.03)
    overlap = lambda m: (m.flatten(1) @ m.flatten(1).T).fill_diagonal_(0).sum() / (  # noqa: E731
        m.flatten(1).pow(2).sum() * (m.shape[0] - 1))
    assert overlap(anchored) < 0.5 * overlap(plain)
