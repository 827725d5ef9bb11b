"""Mask2Former baseline: deformable sampling, masked attention, shapes, training, inference."""
import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from iaunet_d2 import add_iaunet_config
from iaunet_d2.modeling.mask2former import (
    MaskedAttentionDecoder,
    MSDeformAttnPixelDecoder,
    MultiScaleDeformableAttention,
    attention_mask_from_predictions,
    deformable_sample,
    topk_instance_inference,
)
from iaunet_d2.modeling.mask2former.transformer_decoder import MaskedCrossAttentionLayer

from iaunet_test_utils import small_resnet18_cfg, synthetic_batch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_mask2former_cfg():
    """ResNet-18, 32-wide decoders, 1 encoder layer, 9 decoder layers, 6 queries."""
    cfg = small_resnet18_cfg("Mask2Former")
    m2f = cfg.MODEL.MASK2FORMER
    m2f.CONV_DIM = 32
    m2f.MASK_DIM = 16
    m2f.HIDDEN_DIM = 32
    m2f.NHEADS = 4
    m2f.ENC_LAYERS = 1
    m2f.ENC_DIM_FEEDFORWARD = 64
    m2f.DIM_FEEDFORWARD = 64
    m2f.NUM_QUERIES = 6
    m2f.TRAIN_NUM_POINTS = 256
    cfg.TEST.DETECTIONS_PER_IMAGE = 6
    return cfg


def _reference_sample(value, shapes, locations, weights):
    """Explicit loops: bilinear reads (pixel centres at (i+0.5)/size, zero outside),
    weighted by the attention weights. Same shapes as ``deformable_sample``."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, queries, heads, dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(points):
                        x = float(locations[b, q, m, lvl, p, 0]) * w - 0.5
                        y = float(locations[b, q, m, lvl, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        read = torch.zeros(dim, dtype=value.dtype)
                        for xi in (x0, x0 + 1):
                            for yi in (y0, y0 + 1):
                                if 0 <= xi < w and 0 <= yi < h:
                                    bilinear = (1 - abs(x - xi)) * (1 - abs(y - yi))
                                    read += bilinear * value[b, starts[lvl] + yi * w + xi, m]
                        out[b, q, m] += weights[b, q, m, lvl, p] * read
    return out.flatten(2)


def test_deformable_sample_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 5), (1, 1)]
    batch, heads, dim, queries, points = 2, 2, 3, 4, 3
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, dim, generator=gen, dtype=torch.float64)
    # Partly outside [0, 1]: those reads must fall off to zero, as with zero padding.
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=gen,
                           dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=gen, dtype=torch.float64)
    got = deformable_sample(value, shapes, locations, weights)
    assert got.shape == (batch, queries, heads * dim)
    torch.testing.assert_close(got, _reference_sample(value, shapes, locations, weights))


def test_deformable_attention_module_samples_at_reference_plus_offsets():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=8, num_heads=2, num_levels=2, num_points=2).double()
    with torch.no_grad():  # non-trivial offsets and weights
        for p in (attn.sampling_offsets.weight, attn.attention_weights.weight,
                  attn.attention_weights.bias):
            p.normal_()
    shapes = [(4, 3), (2, 2)]
    total = sum(h * w for h, w in shapes)
    query = torch.randn(1, 5, 8, dtype=torch.float64)
    value = torch.randn(1, total, 8, dtype=torch.float64)
    reference = torch.rand(5, 2, dtype=torch.float64)
    with torch.no_grad():
        got = attn(query, reference, value, shapes)
        offsets = attn.sampling_offsets(query).view(1, 5, 2, 2, 2, 2)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)  # (x, y)
        locations = reference[None, :, None, None, None, :] + offsets / normalizer[:, None, :]
        weights = attn.attention_weights(query).view(1, 5, 2, 4).softmax(-1).view(1, 5, 2, 2, 2)
        v = attn.value_proj(value).view(1, total, 2, 4)
        expected = attn.output_proj(_reference_sample(v, shapes, locations, weights))
    torch.testing.assert_close(got, expected)


def test_all_masked_query_attends_everywhere():
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[0, 1, :2, :2] = 5.0  # query 1: foreground top-left quarter at 4x4
    logits[0, 2, 0, 0] = 5.0
    mask = attention_mask_from_predictions(logits, (2, 2))
    assert mask.shape == (1, 3, 4)
    assert not mask[0, 0].any()  # all background -> nothing masked
    assert mask[0, 1].tolist() == [False, True, True, True]

    torch.manual_seed(0)
    layer = MaskedCrossAttentionLayer(d_model=8, nhead=2).eval()
    x, pos = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    memory, memory_pos = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    masked = layer(x, memory, pos, memory_pos, mask)
    unmasked = layer(x, memory, pos, memory_pos, None)
    assert torch.isfinite(masked).all()
    torch.testing.assert_close(masked[0, 0], unmasked[0, 0])
    assert not torch.allclose(masked[0, 1], unmasked[0, 1])
    # Query 1 sees only pixel 0: the same as attending to that pixel alone.
    alone = layer(x[:, 1:2], memory[:, :1], pos[:, 1:2], memory_pos[:, :1], None)
    torch.testing.assert_close(masked[0, 1], alone[0, 0])


def test_decoder_output_shapes():
    cfg = small_mask2former_cfg()
    model = build_model(cfg)
    images = torch.randn(2, 3, 64, 96)
    features = model.backbone(images)
    assert isinstance(model.pixel_decoder, MSDeformAttnPixelDecoder)
    assert isinstance(model.transformer_decoder, MaskedAttentionDecoder)
    mask_features, multi_scale = model.pixel_decoder(features)
    assert mask_features.shape == (2, 16, 16, 24)
    assert [tuple(f.shape) for f in multi_scale] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    out = model.transformer_decoder(multi_scale, mask_features)
    assert out["pred_logits"].shape == (2, 6, 2)
    assert out["pred_masks"].shape == (2, 6, 16, 24)
    assert len(out["aux_outputs"]) == 9
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 6, 2)
        assert aux["pred_masks"].shape == (2, 6, 16, 24)


def test_trains_two_iterations_with_aux_losses():
    cfg = small_mask2former_cfg()
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = synthetic_batch([(64, 64), (48, 64)], [3, 0], seed=1)
    for _ in range(2):
        losses = model(batch)
        suffixes = [""] + [f"_{i}" for i in range(9)]
        expected = {f"loss_{k}{s}" for k in ("ce", "mask", "dice") for s in suffixes}
        assert set(losses) == expected
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        # DDP without find_unused_parameters needs a gradient for every parameter.
        assert [n for n, p in model.named_parameters() if p.grad is None] == []
        optimizer.step()


def test_inference_returns_instances_at_input_size():
    cfg = small_mask2former_cfg()
    model = build_model(cfg).eval()
    batch = synthetic_batch([(64, 48), (40, 64)], [2, 1], output_sizes=[(100, 75), (40, 64)])
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 2
    for result, size in zip(results, [(100, 75), (40, 64)]):
        inst = result["instances"]
        assert inst.image_size == size
        assert len(inst) == 6  # top-k = min(DETECTIONS_PER_IMAGE, queries x classes)
        assert inst.pred_masks.dtype == torch.bool
        assert inst.pred_masks.shape == (6,) + size
        assert inst.pred_boxes.tensor.shape == (6, 4)
        assert (inst.scores[:-1] >= inst.scores[1:]).all()


def test_topk_inference_scoring_by_hand():
    # 3 queries, 2 classes (+ no-object); softmax probabilities set through log().
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.05, 0.05, 0.9]])
    # Masks at the padded resolution itself (no resampling): query 0 left half at
    # logit 2, query 1 one pixel at logit 1, query 2 nothing.
    masks = torch.full((3, 4, 4), -3.0)
    masks[0, :, :2] = 2.0
    masks[1, 0, 3] = 1.0
    inst = topk_instance_inference(probs.log(), masks, image_size=(4, 4), output_size=(4, 4),
                                   padded_size=(4, 4), topk=3)
    s2, s1 = torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(1.0))
    # The 3 best (query, class) pairs: (1, 1) 0.7, (0, 0) 0.6, (0, 1) 0.3.
    expected = {(1, 1): 0.7 * s1, (0, 0): 0.6 * s2, (0, 1): 0.3 * s2}
    got = {(int(q), int(c)): float(s)
           for q, c, s in zip(inst.pred_query_idx, inst.pred_classes, inst.scores)}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), rel=1e-5)
    assert inst.scores.tolist() == sorted(inst.scores.tolist(), reverse=True)
    first = inst.pred_masks[0]
    assert first[:, :2].all() and not first[:, 2:].any()
    assert inst.pred_boxes.tensor[0].tolist() == [0.0, 0.0, 2.0, 4.0]
    # Crop to the image inside the padding, then resize to the output size.
    inst = topk_instance_inference(probs.log(), masks, image_size=(4, 2), output_size=(8, 4),
                                   padded_size=(4, 4), topk=10)
    assert len(inst) == 6 and inst.pred_masks.shape == (6, 8, 4)
    assert inst.pred_masks[inst.pred_query_idx == 0].all()


@pytest.mark.parametrize("name", ["mask2former_R50", "mask2former_R101", "mask2former_swin_S",
                                  "mask2former_swin_B"])
def test_revvity25_configs_merge(name):
    cfg = get_cfg()
    add_iaunet_config(cfg)
    cfg.merge_from_file(os.path.join(_ROOT, "configs", "revvity25", f"{name}.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "Mask2Former"
    assert cfg.DATASETS.TRAIN == ("revvity25_train",)
    assert cfg.MODEL.MASK2FORMER.DEC_LAYERS == 9 and cfg.MODEL.MASK2FORMER.NUM_QUERIES == 100
    assert cfg.OUTPUT_DIR == f"output/revvity25/{name}"


_DATASET_FOLDERS = ["revvity25", "livecell", "livecell_crop", "evican2_easy", "evican2_medium",
                    "evican2_difficult", "neurips22"]


@pytest.mark.parametrize("folder", _DATASET_FOLDERS)
@pytest.mark.parametrize("variant", ["R50", "R101", "swin_S", "swin_B"])
def test_every_dataset_has_the_four_mask2former_configs(folder, variant):
    """Same data and solver as the dataset's IAUNet config; only the model differs."""
    from detectron2.data import DatasetCatalog

    def load(name):
        cfg = get_cfg()
        add_iaunet_config(cfg)
        cfg.merge_from_file(os.path.join(_ROOT, "configs", folder, f"{name}.yaml"))
        return cfg

    m2f, iaunet = load(f"mask2former_{variant}"), load(f"iaunet_{variant}")
    assert m2f.MODEL.META_ARCHITECTURE == "Mask2Former"
    assert m2f.OUTPUT_DIR == f"output/{folder}/mask2former_{variant}"
    for key in ("DATASETS", "INPUT", "SOLVER", "DATALOADER"):
        assert m2f[key] == iaunet[key], key
    assert m2f.MODEL.BACKBONE.NAME == iaunet.MODEL.BACKBONE.NAME
    assert m2f.MODEL.MASK2FORMER.NUM_QUERIES == iaunet.MODEL.IAUNET.NUM_QUERIES
    assert m2f.TEST.DETECTIONS_PER_IMAGE >= m2f.MODEL.MASK2FORMER.NUM_QUERIES
    assert set(m2f.DATASETS.TRAIN + m2f.DATASETS.TEST) <= set(DatasetCatalog.list())
