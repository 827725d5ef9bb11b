"""Per-query mask heads: the dynamic head against a per-query reference MLP, its
coordinates, and the decoder wired with it."""
import pytest
import torch
from detectron2.modeling import build_model

from iaunet_test_utils import small_iaunet_cfg, synthetic_batch

from iaunet_d2.modeling.transformer_decoder.instance_activation import map_centroids
from iaunet_d2.modeling.transformer_decoder.mask_heads import DynamicMaskHead, pixel_centres


def test_pixel_centres_are_row_major_in_the_unit_square():
    grid = pixel_centres((2, 4), torch.zeros(1))
    # x = 0.125, 0.375, 0.625, 0.875 on both rows; y = 0.25 then 0.75.
    assert torch.allclose(grid[0], torch.tensor([0.125, 0.375, 0.625, 0.875] * 2))
    assert torch.allclose(grid[1], torch.tensor([0.25] * 4 + [0.75] * 4))


def test_map_centroids_of_one_hot_and_split_maps():
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 3] = 1.0  # row 1, column 3
    maps[0, 1, 0, 0] = 0.5
    maps[0, 1, 2, 2] = 0.5
    centres = map_centroids(maps)
    assert torch.allclose(centres[0, 0], torch.tensor([0.875, 0.375]))
    assert torch.allclose(centres[0, 1], torch.tensor([0.375, 0.375]))


def _reference_masks(head, queries, mask_features, centres):
    """The same MLP, one query at a time with explicit weight matrices."""
    b, n = queries.shape[:2]
    h, w = mask_features.shape[-2:]
    feats = head.project(mask_features)
    out = torch.empty(b, n, h, w)
    for i in range(b):
        for q in range(n):
            params = head.controller(queries[i, q])
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
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
        masks = head(queries, mask_features, centres)
        expected = _reference_masks(head, queries, mask_features, centres)
    assert masks.shape == (2, 5, 6, 7)
    assert torch.allclose(masks, expected, atol=1e-5)
    # (C + 2) * C + C per hidden layer, C + 1 for the output layer.
    assert head.num_params == {1: (4 + 2) + 1, 3: 6 * 4 + 4 + 4 * 4 + 4 + 4 + 1}[layers]


def test_dynamic_head_rejects_empty_layers():
    with pytest.raises(ValueError, match="layers >= 1"):
        DynamicMaskHead(hidden_dim=8, mask_dim=8, channels=4, num_layers=0)


def test_decoder_with_dynamic_head_predicts_masks_and_learns_from_them():
    cfg = small_iaunet_cfg(MASK_HEAD="dynamic", DYNAMIC_MASK_CHANNELS=4, DYNAMIC_MASK_LAYERS=2,
                           DYNAMIC_MASK_UPSAMPLE=1)
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


def test_unknown_mask_head_is_a_config_error():
    with pytest.raises(ValueError, match="MODEL.IAUNET.MASK_HEAD"):
        build_model(small_iaunet_cfg(MASK_HEAD="conv"))


def test_upsampled_dynamic_head_predicts_on_the_finer_grid():
    torch.manual_seed(0)
    head = DynamicMaskHead(hidden_dim=16, mask_dim=12, channels=4, num_layers=2, upsample=2)
    queries = torch.randn(1, 3, 16)
    mask_features = torch.randn(1, 12, 5, 6)
    centres = torch.rand(1, 3, 2)
    with torch.no_grad():
        masks = head(queries, mask_features, centres)
        # The reference MLP on the bilinearly upsampled features gives the same masks:
        # projecting (1x1 conv) and bilinear upsampling commute.
        fine = torch.nn.functional.interpolate(mask_features, scale_factor=2, mode="bilinear",
                                               align_corners=False)
        head.upsample = 1
        expected = head(queries, fine, centres)
    assert masks.shape == (1, 3, 10, 12)
    assert torch.allclose(masks, expected, atol=1e-5)
    with pytest.raises(ValueError, match="upsampling must be >= 1"):
        DynamicMaskHead(hidden_dim=8, mask_dim=8, upsample=0)


def test_a_linear_head_checkpoint_loads_into_a_dynamic_head_model_as_trained(tmp_path):
    """A checkpoint of version 3 (linear kernels) loads strictly into a model built with
    the dynamic head, which switches back to the linear head it was trained with."""
    from iaunet_d2.engine import AtomicCheckpointer
    from iaunet_test_utils import synthetic_batch as batch_of

    torch.manual_seed(0)
    old = build_model(small_iaunet_cfg(MASK_HEAD="linear")).eval()
    state = old.state_dict()
    state._metadata["head.transformer_decoder"]["version"] = 3
    path = tmp_path / "linear.pth"
    torch.save({"model": state}, path)
    new = build_model(small_iaunet_cfg(MASK_HEAD="dynamic")).eval()
    AtomicCheckpointer(new).load_weights(str(path))
    decoder = new.head.transformer_decoder
    assert decoder.dynamic_mask is None and decoder.kernel_embed is not None
    images = batch_of([(64, 64)], [2])
    with torch.no_grad():
        outs = [m.head(m.backbone(m.preprocess_image(images).tensor)) for m in (old, new)]
    assert torch.allclose(outs[0]["pred_masks"], outs[1]["pred_masks"], atol=1e-5)
