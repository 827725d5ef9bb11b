"""IAUNet+'s dynamic mask head against a per-query reference MLP, the location frame
it shares with the anchors (isotropic: the same at any aspect ratio), and the decoder
wired with it."""
import pytest
import torch
from detectron2.modeling import build_model

from iaunet_test_utils import small_iaunet_cfg, synthetic_batch

from iaunet_d2.modeling.transformer_decoder.instance_activation import (
    anchor_location_bias,
    map_centroids,
    pixel_centres,
)
from iaunet_d2.modeling.transformer_decoder.mask_heads import DynamicMaskHead


def test_pixel_centres_are_row_major_with_one_step_on_both_axes():
    grid = pixel_centres((2, 4), 0.25, torch.zeros(1))
    # x = 0.125, 0.375, 0.625, 0.875 on both rows; y = 0.125 then 0.375 (not 0.25/0.75:
    # a pixel is as tall as it is wide whatever the grid's shape).
    assert torch.allclose(grid[0], torch.tensor([0.125, 0.375, 0.625, 0.875] * 2))
    assert torch.allclose(grid[1], torch.tensor([0.125] * 4 + [0.375] * 4))


def test_map_centroids_of_one_hot_and_split_maps():
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 3] = 1.0  # row 1, column 3
    maps[0, 1, 0, 0] = 0.5
    maps[0, 1, 2, 2] = 0.5
    centres = map_centroids(maps, 0.25)
    assert torch.allclose(centres[0, 0], torch.tensor([0.875, 0.375]))
    assert torch.allclose(centres[0, 1], torch.tensor([0.375, 0.375]))


def _reference_masks(head, queries, mask_features, centres, step):
    """The same MLP, one query at a time with explicit weight matrices."""
    b, n = queries.shape[:2]
    h, w = mask_features.shape[-2:]
    feats = head.project(mask_features)
    out = torch.empty(b, n, h, w)
    for i in range(b):
        for q in range(n):
            params = head.controller(queries[i, q])
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) * step, (torch.arange(w) + 0.5) * step,
                                    indexing="ij")
            offsets = torch.stack([xs - centres[i, q, 0], ys - centres[i, q, 1]])  # (2, h, w)
            x = torch.cat([feats[i].flatten(1), offsets.flatten(1) * head.coord_scale])
            start = 0
            for k, (fan_in, fan_out) in enumerate(head.shapes):
                weight = params[start:start + fan_in * fan_out].view(fan_out, fan_in)
                start += fan_in * fan_out
                bias = params[start:start + fan_out]
                start += fan_out
                x = weight @ x + bias[:, None]
                if k < len(head.shapes) - 1:
                    x = x.clamp(min=0)
            out[i, q] = x.view(h, w)
    return out


@pytest.mark.parametrize("layers", [1, 3])
def test_dynamic_head_matches_a_per_query_mlp(layers):
    torch.manual_seed(0)
    head = DynamicMaskHead(hidden_dim=16, mask_dim=12, channels=4, num_layers=layers, coord_scale=3.0)
    queries = torch.randn(2, 5, 16)
    mask_features = torch.randn(2, 12, 6, 7)
    centres = torch.rand(2, 5, 2)
    with torch.no_grad():
        masks = head(queries, mask_features, centres, 1 / 7)
        expected = _reference_masks(head, queries, mask_features, centres, 1 / 7)
    assert masks.shape == (2, 5, 6, 7)
    assert torch.allclose(masks, expected, atol=1e-5)
    # (C + 2) * C + C per hidden layer, C + 1 for the output layer.
    assert head.num_params == {1: (4 + 2) + 1, 3: 6 * 4 + 4 + 4 * 4 + 4 + 4 + 1}[layers]


def test_dynamic_head_rejects_empty_layers():
    with pytest.raises(ValueError, match="layers >= 1"):
        DynamicMaskHead(hidden_dim=8, mask_dim=8, channels=4, num_layers=0)


def test_decoder_with_dynamic_head_predicts_masks_and_learns_from_them():
    cfg = small_iaunet_cfg(plus={"DYNAMIC_MASK_CHANNELS": 4, "DYNAMIC_MASK_LAYERS": 2,
                                 "DYNAMIC_MASK_UPSAMPLE": 1})
    model = build_model(cfg)
    decoder = model.head.transformer_decoder
    assert decoder.kernel_embed is None and decoder.dynamic_mask is not None
    model.train()
    losses = model(synthetic_batch([(64, 64), (64, 64)], [2, 1]))
    sum(losses.values()).backward()
    grad = decoder.dynamic_mask.controller.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(synthetic_batch([(64, 64)], [1]))
        out = model.head(model.backbone(images.tensor))
    assert out["pred_masks"].shape[-2:] == (16, 16)


def test_upsampled_dynamic_head_predicts_on_the_finer_grid():
    torch.manual_seed(0)
    head = DynamicMaskHead(hidden_dim=16, mask_dim=12, channels=4, num_layers=2, upsample=2)
    queries = torch.randn(1, 3, 16)
    mask_features = torch.randn(1, 12, 5, 6)
    centres = torch.rand(1, 3, 2)
    with torch.no_grad():
        masks = head(queries, mask_features, centres, 0.1)
        # The reference MLP on the bilinearly upsampled features gives the same masks:
        # projecting (1x1 conv) and bilinear upsampling commute.
        fine = torch.nn.functional.interpolate(mask_features, scale_factor=2, mode="bilinear",
                                               align_corners=False)
        head.upsample = 1
        expected = head(queries, fine, centres, 0.05)
    assert masks.shape == (1, 3, 10, 12)
    assert torch.allclose(masks, expected, atol=1e-5)
    with pytest.raises(ValueError, match="upsampling must be >= 1"):
        DynamicMaskHead(hidden_dim=8, mask_dim=8, upsample=0)


@pytest.mark.parametrize("upsample", [1, 2])
def test_the_same_cell_gets_the_same_mask_in_a_square_and_a_wide_image(upsample):
    """A 256 x 256 image and the same image padded to 256 x 384 (IMAGE_SIZE 256, mask
    features at stride 4: 64 x 64 and 64 x 96): the same query centred on the same cell
    gives the same mask logits over the cell's image, because offsets are measured in
    one unit on both axes (a per-axis normalisation would stretch x by 1.5)."""
    torch.manual_seed(0)
    head = DynamicMaskHead(hidden_dim=16, mask_dim=12, channels=4, num_layers=3, upsample=upsample)
    queries = torch.randn(1, 4, 16)
    square = torch.randn(1, 12, 64, 64)
    wide = torch.nn.functional.pad(square, (0, 32))  # zero padding on the right
    centres = torch.tensor([[[0.3, 0.6], [0.9, 0.1], [0.5, 0.5], [0.05, 0.95]]])
    step = 4 / 256
    with torch.no_grad():
        a = head(queries, square, centres, step)
        b = head(queries, wide, centres, step)
    inner = 64 * upsample - upsample  # bilinear upsampling reads one column past the edge
    assert b.shape[-1] == 96 * upsample
    assert torch.allclose(a[..., :inner], b[..., :inner], atol=1e-5)


def test_the_anchor_prior_and_centroids_are_the_same_in_a_square_and_a_wide_image():
    anchors = torch.tensor([[0.3, 0.6], [0.8, 0.2]])
    step = 16 / 256  # a stride-16 level of IMAGE_SIZE 256: 16 x 16 and 16 x 24 maps
    square = anchor_location_bias(anchors, (16, 16), step, sigma=0.1)
    wide = anchor_location_bias(anchors, (16, 24), step, sigma=0.1)
    assert torch.equal(square, wide[..., :16])
    maps = torch.softmax(square.flatten(1), -1).view(1, 2, 16, 16)
    padded = torch.nn.functional.pad(maps, (0, 8))
    assert torch.allclose(map_centroids(maps, step), map_centroids(padded, step))
    # The prior is round: one pixel right or down of the anchor costs the same.
    peak = anchor_location_bias(torch.tensor([[4.5 * step, 6.5 * step]]), (16, 24), step, 0.1)[0]
    assert peak[6, 5].item() == pytest.approx(peak[7, 4].item())
