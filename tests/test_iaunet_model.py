"""IAUNet model core: pixel decoder, transformer decoder, head and meta-architecture."""
import math

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Instances

from iaunet_test_utils import small_iaunet_cfg, small_transformer_decoder, synthetic_batch

from iaunet_d2.modeling import IAUNet, IAUNetHead
from iaunet_d2.modeling.pixel_decoder import (
    IAUNetPixelDecoder,
    SqueezeExcitation,
    UpBlock,
    build_pixel_decoder,
    coordinate_channels,
)
from iaunet_d2.modeling.transformer_decoder import (
    IAUNetTransformerDecoder,
    InstanceActivation,
    PositionEmbeddingSine,
)

STRIDES = [32, 16, 8, 4]


def _padded(size, div=32):
    return tuple(int(math.ceil(s / div) * div) for s in size)


def _build(cfg, train=True):
    model = build_model(cfg)
    model.train(train)
    return model


# ------------------------------------------------------------------ building blocks


def test_components_build_from_config():
    cfg = small_iaunet_cfg()
    backbone = build_backbone(cfg)
    pixel_decoder = build_pixel_decoder(cfg, backbone.output_shape())
    assert isinstance(pixel_decoder, IAUNetPixelDecoder)
    assert pixel_decoder.in_features == ["res5", "res4", "res3", "res2"]
    assert pixel_decoder.in_strides == STRIDES
    decoder = small_transformer_decoder(cfg)
    assert isinstance(decoder, IAUNetTransformerDecoder)
    assert len(decoder.layers) == len(decoder.ia_layers) == 4
    model = build_model(cfg)
    assert isinstance(model, IAUNet)


def test_head_builds_the_transformer_decoder_at_the_pixel_decoder_widths():
    cfg = small_iaunet_cfg(CONV_DIM=64, MASK_DIM=24)
    head = IAUNetHead(cfg, build_backbone(cfg).output_shape())
    assert (head.pixel_decoder.conv_dim, head.pixel_decoder.mask_dim) == (64, 24)
    decoder = head.transformer_decoder
    assert decoder.hidden_dim == 64 and decoder.mask_dim == 24
    assert decoder.ia_layers[0].conv.in_channels == 64
    assert decoder.kernel_embed.out_features == 24
    model = build_model(cfg)
    assert isinstance(model.head, IAUNetHead)
    children = [name for name, _ in model.head.named_children()]
    assert children == ["pixel_decoder", "transformer_decoder"]


def test_coordinate_channels():
    coords = coordinate_channels(torch.zeros(2, 5, 3, 4))
    assert coords.shape == (2, 2, 3, 4)
    assert torch.allclose(coords[0, 0, 0], torch.linspace(-1, 1, 4))  # x varies along W
    assert torch.allclose(coords[0, 1, :, 0], torch.linspace(-1, 1, 3))  # y along H


def test_up_block_and_se_shapes():
    x = torch.randn(2, 10, 6, 7)
    assert UpBlock(10, 8).shortcut is not None
    assert UpBlock(8, 8).shortcut is None
    assert UpBlock(10, 8)(x).shape == (2, 8, 6, 7)
    se = SqueezeExcitation(10)
    assert se.reduce.out_channels == 5
    assert se(x).shape == x.shape


def test_pixel_decoder_standalone_shapes():
    cfg = small_iaunet_cfg()
    backbone = build_backbone(cfg)
    pixel_decoder = build_pixel_decoder(cfg, backbone.output_shape())
    features = backbone(torch.randn(2, 3, 64, 96))
    mask_features, levels = pixel_decoder(features)
    assert mask_features.shape == (2, 16, 16, 24)
    for level, stride in zip(levels, STRIDES):
        for t in level:
            assert t.shape == (2, 32, 64 // stride, 96 // stride)


def test_instance_activation():
    ia = InstanceActivation(8, num_queries=5, prior_prob=0.01)
    assert torch.allclose(ia.conv.bias, torch.full((5,), -math.log(99.0)))
    assert ia.conv.weight.std() < 0.02
    x = torch.randn(2, 8, 6, 7)
    queries, maps = ia(x)
    assert queries.shape == (2, 5, 8) and maps.shape == (2, 5, 6, 7)
    assert torch.allclose(maps.sum((2, 3)), torch.ones(2, 5), atol=1e-5)
    # Queries are the maps' weighted averages of the features.
    expected = torch.einsum("bnhw,bchw->bnc", maps, x)
    assert torch.allclose(queries, expected, atol=1e-5)


def test_sine_position_embedding():
    pe = PositionEmbeddingSine(num_pos_feats=8, temperature=10000, normalize=True)
    pos = pe(torch.zeros(3, 1, 4, 5))
    assert pos.shape == (3, 16, 4, 5)
    assert torch.equal(pos[0], pos[2])
    assert pos.abs().max() <= 1.0
    ys = torch.arange(1, 5, dtype=torch.float32) / 4 * 2 * math.pi
    xs = torch.arange(1, 6, dtype=torch.float32) / 5 * 2 * math.pi
    # y block first: channel 0 = sin(y), 1 = cos(y), 2 = sin(y / 10000^(2/8)), ...
    assert torch.allclose(pos[0, 0, :, 0], ys.sin(), atol=1e-5)
    assert torch.allclose(pos[0, 1, :, 3], ys.cos(), atol=1e-5)
    assert torch.allclose(pos[0, 2, :, 1], (ys / 10000 ** (2 / 8)).sin(), atol=1e-5)
    assert torch.allclose(pos[0, 8, 2, :], xs.sin(), atol=1e-5)
    assert torch.allclose(pos[0, 9, 0, :], xs.cos(), atol=1e-5)
    # The y block does not depend on x and vice versa.
    assert torch.equal(pos[:, :8, :, 0], pos[:, :8, :, 4])
    assert torch.equal(pos[:, 8:, 0], pos[:, 8:, 3])


# ------------------------------------------------------------------ decoder outputs


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("size", [(64, 64), (72, 100)])
@pytest.mark.parametrize("plus", [None, True], ids=["paper", "plus"])
def test_decoder_output_shapes(size, train, plus):
    cfg = small_iaunet_cfg(plus=plus)
    scale = 2 if plus else 4  # IAUNet+'s dynamic head upsamples the 1/4 features 2x
    model = _build(cfg, train)
    batch = synthetic_batch([size, size], [2, 1])
    hp, wp = _padded(size)
    with torch.set_grad_enabled(train):
        images = model.preprocess_image(batch)
        assert tuple(images.tensor.shape) == (2, 3, hp, wp)
        out = model.head(model.backbone(images.tensor))
    assert out["pred_logits"].shape == (2, 6, 2)
    assert out["pred_masks"].shape == (2, 6, hp // scale, wp // scale)
    assert len(out["activation_maps"]) == 4
    for maps, stride in zip(out["activation_maps"], STRIDES):
        assert maps.shape == (2, 6, hp // stride, wp // stride)
        assert torch.allclose(maps.sum((2, 3)), torch.ones(2, 6), atol=1e-4)
        assert (maps >= 0).all()
    # Auxiliary predictions are made for the losses only, i.e. in training.
    assert len(out["aux_outputs"]) == (3 if plus and train else 0)
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 6, 2)
        assert aux["pred_masks"].shape == (2, 6, hp // scale, wp // scale)


# ------------------------------------------------------------------ training


def _assert_every_parameter_has_gradient(model):
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name} got no gradient"
        if name.startswith("head.transformer_decoder.ia_layers.") and name.endswith("conv.bias"):
            # A per-map constant cancels in the softmax over pixels: its gradient is
            # zero up to rounding (it is still in the graph, which is what DDP needs).
            assert p.grad.abs().max() < 1e-4, name
            continue
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("plus", [None, True], ids=["paper", "plus"])
def test_gradients_reach_every_parameter(plus):
    cfg = small_iaunet_cfg(plus=plus)
    model = _build(cfg, train=True)
    losses = model(synthetic_batch([(64, 64), (64, 64)], [3, 2]))
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(losses)
    if plus:
        assert "loss_ce_0" in losses and "loss_dice_2" in losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    _assert_every_parameter_has_gradient(model)


@pytest.mark.parametrize(
    "overrides",
    [{"BRANCH_FUSION": "concat"}, {"BRIDGE": True}, {"PRE_NORM": True},
     {"BRANCH_FUSION": "concat", "BRIDGE": True, "plus": True}],
)
def test_variants_train_and_infer(overrides):
    cfg = small_iaunet_cfg(**overrides)
    model = _build(cfg, train=True)
    if overrides.get("BRIDGE"):
        assert model.head.pixel_decoder.bridge is not None
    if overrides.get("BRANCH_FUSION") == "concat":
        # Levels after the first take [main ; previous branch] = 2 * CONV_DIM channels.
        assert model.head.pixel_decoder.mask_branches[1][0].in_channels == 64
        assert model.head.pixel_decoder.inst_branches[1][0].in_channels == 66
    losses = model(synthetic_batch([(64, 64), (72, 100)], [2, 3]))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    _assert_every_parameter_has_gradient(model)
    model.eval()
    with torch.no_grad():
        results = model(synthetic_batch([(72, 100)], [0]))
    assert results[0]["instances"].image_size == (72, 100)


def test_image_without_instances_trains():
    model = _build(small_iaunet_cfg(), train=True)
    batch = synthetic_batch([(64, 64), (64, 64)], [0, 3])
    assert len(batch[0]["instances"]) == 0
    targets = model.prepare_targets(batch, model.preprocess_image(batch))
    assert targets[0]["masks"].shape == (0, 64, 64) and targets[0]["labels"].dtype == torch.int64
    losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # All images empty also works.
    losses = model(synthetic_batch([(64, 64)], [0]))
    assert all(torch.isfinite(v) for v in losses.values())


def test_targets_are_padded_to_batch_size():
    model = _build(small_iaunet_cfg(), train=True)
    batch = synthetic_batch([(64, 64), (72, 100)], [2, 3])
    targets = model.prepare_targets(batch, model.preprocess_image(batch))
    assert targets[0]["masks"].shape == (2, 96, 128)
    assert targets[1]["masks"].shape == (3, 96, 128)
    assert targets[0]["masks"].dtype == torch.float32
    gt = batch[0]["instances"].gt_masks.tensor
    assert torch.equal(targets[0]["masks"][:, :64, :64].bool(), gt)
    assert targets[0]["masks"][:, 64:].sum() == 0 and targets[0]["masks"][:, :, 64:].sum() == 0


# ------------------------------------------------------------------ inference


def test_inference_returns_instances_at_original_size():
    cfg = small_iaunet_cfg()
    cfg.MODEL.IAUNET.TEST.SCORE_THRESH = 0.0  # a random model: keep whatever it finds
    model = _build(cfg, train=False)
    batch = synthetic_batch([(72, 100), (64, 64)], [2, 2], output_sizes=[(144, 200), (50, 40)])
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 2
    for result, (h, w) in zip(results, [(144, 200), (50, 40)]):
        inst = result["instances"]
        assert isinstance(inst, Instances)
        assert inst.image_size == (h, w)
        assert "activation_maps" not in result
        masks = inst.pred_masks
        assert masks.dtype == torch.bool and masks.shape[1:] == (h, w)
        assert 0 < len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
        assert inst.scores.shape == inst.pred_classes.shape == inst.pred_query_idx.shape
        boxes = inst.pred_boxes.tensor
        for mask, box in zip(masks, boxes):
            if not mask.any():
                assert (box == 0).all()
                continue
            ys, xs = torch.nonzero(mask, as_tuple=True)
            expected = torch.tensor(
                [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32
            )
            assert torch.equal(box, expected)


def test_inference_activation_maps_on_request():
    model = _build(small_iaunet_cfg(), train=False)
    assert model.return_activation_maps is False
    model.return_activation_maps = True
    with torch.no_grad():
        results = model(synthetic_batch([(72, 100)], [0]))
    maps = results[0]["activation_maps"]
    assert len(maps) == 4
    # Padded input 96 x 128; the image covers ceil(72 / s) x ceil(100 / s) of each level.
    for m, stride in zip(maps, STRIDES):
        assert m.device.type == "cpu"
        assert m.shape == (6, math.ceil(72 / stride), math.ceil(100 / stride))
        assert (m.sum((1, 2)) <= 1 + 1e-4).all()


def test_pixel_mean_std_are_buffers():
    model = build_model(small_iaunet_cfg())
    buffers = dict(model.named_buffers())
    assert "pixel_mean" in buffers and "pixel_std" in buffers
    state = model.state_dict()
    assert "pixel_mean" in state and "pixel_std" in state
    assert "pixel_mean" not in dict(model.named_parameters())
    model.to(torch.float64)
    assert model.pixel_mean.dtype == torch.float64
    if torch.cuda.is_available():
        model.to(torch.float32).cuda()
        assert model.pixel_mean.is_cuda and model.device.type == "cuda"
