"""The fast inference path (inference mode, channels-last, blocked pixel path, blocked
mask post-processing, optional autocast) gives the plain path's outputs."""
import iaunet_d2  # noqa: F401
import pytest
import torch
from detectron2.modeling import build_model

import iaunet_d2.modeling.postprocessing as postprocessing
import iaunet_d2.modeling.transformer_decoder.layers as decoder_layers
from iaunet_d2.modeling.transformer_decoder import DualPathDecoderLayer
from iaunet_d2.modeling.postprocessing import mask_iou_matrix, predictions_to_instances
from iaunet_test_utils import small_iaunet_cfg

PLAIN = {"pixel_chunk": 10 ** 9, "mask_chunk_pixels": 10 ** 12}


def _set_chunks(monkeypatch, pixel_chunk, mask_chunk_pixels):
    monkeypatch.setattr(decoder_layers, "PIXEL_CHUNK", pixel_chunk)
    monkeypatch.setattr(postprocessing, "MASK_CHUNK_PIXELS", mask_chunk_pixels)


def _model(**overrides):
    # The paper's decoder: with the 20x kernels below, no random mask of this seed is
    # empty or covers the whole image (those are never detections), so every query
    # reaches the output of both paths.
    cfg = small_iaunet_cfg(NUM_QUERIES=12)
    cfg.MODEL.IAUNET.TEST.SCORE_THRESH = 0.0  # every query reaches NMS and the output
    cfg.MODEL.IAUNET.TEST.NMS_IOU = 1.0  # nothing suppressed: all queries comparable
    cfg.TEST.DETECTIONS_PER_IMAGE = 12
    for key, value in overrides.items():
        setattr(cfg.MODEL.IAUNET.TEST, key, value)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Larger mask logits than a random init gives, so that masks are not all empty.
    with torch.no_grad():
        model.head.transformer_decoder.kernel_embed.weight.mul_(20.0)
    return model


def _inputs(size=(96, 80), out=(120, 100)):
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 255, (3, *size), generator=gen, dtype=torch.uint8)
    return [{"image": image, "height": out[0], "width": out[1]}]


def _run(model, inputs, fast, monkeypatch, pixel_chunk, mask_chunk_pixels):
    _set_chunks(monkeypatch, pixel_chunk, mask_chunk_pixels)
    model.fast_inference = fast
    with torch.no_grad():
        return model(inputs)[0]["instances"]


def _by_query(inst):
    order = torch.argsort(inst.pred_query_idx)
    return inst.pred_query_idx[order], inst.scores[order], inst.pred_masks[order]


def _assert_same_instances(a, b, score_atol=1e-4, min_iou=0.98):
    qa, sa, ma = _by_query(a)
    qb, sb, mb = _by_query(b)
    assert torch.equal(qa, qb)
    assert torch.allclose(sa, sb, atol=score_atol, rtol=1e-3)
    both = torch.cat([ma, mb])
    iou = mask_iou_matrix(both)
    k = ma.shape[0]
    diag = iou[torch.arange(k), torch.arange(k) + k]
    nonempty = ma.flatten(1).any(1) | mb.flatten(1).any(1)
    assert nonempty.any(), "test needs some non-empty masks"
    assert (diag[nonempty] >= min_iou).all(), diag


def test_fast_path_matches_plain_path(monkeypatch):
    model = _model()
    inputs = _inputs()
    plain = _run(model, inputs, False, monkeypatch, **PLAIN)
    # Tiny blocks so that both blocked code paths run several blocks.
    fast = _run(model, inputs, True, monkeypatch, 50, 3 * 96 * 96)
    assert len(plain) == len(fast) == 12
    assert fast.pred_masks.shape == plain.pred_masks.shape == (12, 120, 100)
    _assert_same_instances(plain, fast)
    assert torch.equal(plain.pred_classes[torch.argsort(plain.pred_query_idx)],
                       fast.pred_classes[torch.argsort(fast.pred_query_idx)])


def test_fast_path_uses_inference_mode_only_without_autograd(monkeypatch):
    model = _model()
    inputs = _inputs()
    model.fast_inference = True
    with torch.no_grad():
        out = model(inputs)[0]["instances"]
    assert out.scores.is_inference()
    # Eval-mode forward with autograd on (e.g. for saliency) stays differentiable.
    out = model(inputs)[0]["instances"]
    assert not out.scores.is_inference()
    assert out.scores.requires_grad


def test_channels_last_and_inference_mode_each_match(monkeypatch):
    model = _model()
    inputs = _inputs((64, 64), (64, 64))
    plain = _run(model, inputs, False, monkeypatch, **PLAIN)
    fast_unblocked = _run(model, inputs, True, monkeypatch, **PLAIN)
    _assert_same_instances(plain, fast_unblocked)


def test_blocked_pixel_path_matches_unblocked(monkeypatch):
    torch.manual_seed(0)
    layer = DualPathDecoderLayer(32, 4, 64).eval()
    queries, query_pos = torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    inst, mask, pos = torch.randn(2, 200, 32), torch.randn(2, 200, 32), torch.randn(2, 200, 32)
    with torch.no_grad():
        monkeypatch.setattr(decoder_layers, "PIXEL_CHUNK", 10 ** 9)
        ref = layer(queries, query_pos, inst, mask, pos)
        monkeypatch.setattr(decoder_layers, "PIXEL_CHUNK", 64)  # 64 + 64 + 64 + 8
        blocked = layer(queries, query_pos, inst, mask, pos)
    for a, b in zip(ref, blocked):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("out_size", [(64, 48), (90, 70)])
def test_blocked_postprocessing_matches(monkeypatch, out_size):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(10, 2, generator=gen)
    masks = torch.randn(10, 16, 16, generator=gen) * 4
    kwargs = dict(image_size=(64, 48), output_size=out_size, score_thresh=0.0, nms_iou=0.5,
                  padded_size=(64, 64))
    with torch.no_grad():
        monkeypatch.setattr(postprocessing, "MASK_CHUNK_PIXELS", 10 ** 12)
        ref = predictions_to_instances(logits, masks, **kwargs)
        monkeypatch.setattr(postprocessing, "MASK_CHUNK_PIXELS", 3 * 64 * 64)
        blocked = predictions_to_instances(logits, masks, **kwargs)
    assert torch.equal(ref.pred_query_idx, blocked.pred_query_idx)
    assert torch.allclose(ref.scores, blocked.scores, atol=1e-6)  # sum order may differ
    assert torch.equal(ref.pred_masks, blocked.pred_masks)


def test_amp_switch(monkeypatch):
    with pytest.raises(ValueError, match="AMP"):
        _model(AMP="fp8")
    model = _model(AMP="bf16")
    assert model.amp == "bf16"
    inputs = _inputs((64, 64), (64, 64))
    amp = _run(model, inputs, True, monkeypatch, **PLAIN)
    model.amp = ""
    fp32 = _run(model, inputs, True, monkeypatch, **PLAIN)
    assert amp.scores.dtype == torch.float32 and len(amp) == len(fp32)
    # bf16 keeps ~3 significant digits: scores agree loosely.
    _, s_amp, _ = _by_query(amp)
    _, s_fp32, _ = _by_query(fp32)
    assert torch.allclose(s_amp, s_fp32, atol=0.05)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_attention_layer_equals_multihead_attention(pre_norm):
    """AttentionLayer computes nn.MultiheadAttention's result from its weights (the
    heads as strided views), in training (with gradients) and in inference."""
    torch.manual_seed(0)
    layer = decoder_layers.AttentionLayer(32, 4, pre_norm=pre_norm)
    x, pos = torch.randn(2, 50, 32, requires_grad=True), torch.randn(2, 50, 32)
    memory, memory_pos = torch.randn(2, 7, 32), torch.randn(2, 7, 32)

    def reference(x, memory, pos, memory_pos):
        q = layer.norm(x) if pre_norm else x
        if memory is None:
            memory, memory_pos = q, pos
        out = layer.attn(q + pos, memory + memory_pos, memory, need_weights=False)[0]
        return x + out if pre_norm else layer.norm(x + out)

    for args in [(x, memory, pos, memory_pos), (x, None, pos, None)]:
        got, want = layer(*args), reference(*args)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        grad_got = torch.autograd.grad(got.sum(), layer.attn.in_proj_weight)[0]
        grad_want = torch.autograd.grad(want.sum(), layer.attn.in_proj_weight)[0]
        torch.testing.assert_close(grad_got, grad_want, rtol=1e-4, atol=1e-5)
        layer.eval()
        with torch.inference_mode():
            torch.testing.assert_close(layer(*args), reference(*args), rtol=1e-5, atol=1e-5)
        layer.train()


def test_refined_features_keep_standard_channels_last_strides():
    """The transformer decoder hands each level's refined mask/instance features back as
    channels-last tensors with the standard strides, batch stride included: with another
    batch stride (possible when B = 1) CPU kernels miss their channels-last path, and the
    next level's bilinear upsampling ran ~25x slower."""
    model = _model()
    model.fast_inference = True
    seen = []
    forward_level = model.head.pixel_decoder.forward_level

    def recording(level, skip, prev=None):
        if prev is not None:
            seen.append(prev)
        return forward_level(level, skip, prev)

    model.head.pixel_decoder.forward_level = recording
    with torch.no_grad():
        model(_inputs((64, 64), (64, 64)))
    assert seen, "the decoder never refined a level"
    for prev in seen:
        for features in (prev.mask, prev.inst):
            assert features.shape[0] == 1
            standard = features.contiguous(memory_format=torch.channels_last).stride()
            assert features.stride() == standard
            upsampled = torch.nn.functional.interpolate(features, scale_factor=2.0, mode="bilinear")
            assert upsampled.is_contiguous(memory_format=torch.channels_last)
