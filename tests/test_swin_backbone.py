"""Swin backbone: registry entry, feature shapes/strides/channels, weight loading."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from iaunet_d2.config import add_iaunet_config
from iaunet_d2.modeling.backbone import SwinBackbone, load_swin_state_dict

TINY = "swin_tiny_patch4_window7_224"  # same layout as Swin-S with 6 instead of 18 blocks
TINY_CHANNELS = {"res2": 96, "res3": 192, "res4": 384, "res5": 768}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _cfg(name=TINY, weights=""):
    cfg = get_cfg()
    add_iaunet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_swin_backbone"
    cfg.MODEL.SWIN.TIMM_NAME = name
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.1
    cfg.MODEL.SWIN.WEIGHTS = weights
    return cfg


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone(_cfg()).eval()


def test_output_shape(backbone):
    assert isinstance(backbone, SwinBackbone)
    assert backbone.size_divisibility == 32
    shapes = backbone.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    for name, spec in shapes.items():
        assert spec.channels == TINY_CHANNELS[name]
        assert spec.stride == STRIDES[name]


@pytest.mark.parametrize("height,width", [(64, 64), (64, 96), (96, 64)])
def test_forward_shapes(backbone, height, width):
    # 64x64: the 2x2 stage-4 map is smaller than the 7x7 window.
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, height, width))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, feat in out.items():
        s = STRIDES[name]
        assert tuple(feat.shape) == (2, TINY_CHANNELS[name], height // s, width // s)
        assert torch.isfinite(feat).all()


def test_input_not_multiple_of_32_is_padded(backbone):
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 70, 50))  # padded to 96 x 64
    assert tuple(out["res2"].shape[-2:]) == (24, 16)
    assert tuple(out["res5"].shape[-2:]) == (3, 2)


def test_out_features_subset():
    cfg = _cfg()
    cfg.MODEL.SWIN.OUT_FEATURES = ["res3", "res5"]
    bb = build_backbone(cfg).eval()
    assert list(bb.output_shape()) == ["res3", "res5"]
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 64))
    assert list(out) == ["res3", "res5"]


def test_known_parameter_counts():
    # Swin-S and Swin-B as used by IAUNet (measured: 48.84M / 86.88M).
    cfg = _cfg("swin_small_patch4_window7_224")
    n = sum(p.numel() for p in build_backbone(cfg).parameters())
    assert abs(n / 1e6 - 48.84) < 0.01
    shapes = build_backbone(_cfg("swin_base_patch4_window12_384")).output_shape()
    assert [s.channels for s in shapes.values()] == [128, 256, 512, 1024]


def test_load_timm_style_weights(tmp_path):
    torch.manual_seed(1)
    src = build_backbone(_cfg()).eval()
    # Save as a Detectron2-wrapped checkpoint with timm's full-model key names.
    state = {
        "backbone." + k.replace("layers_", "layers."): v for k, v in src.body.state_dict().items()
    }
    state["backbone.head.fc.weight"] = torch.zeros(10, 768)  # classifier: ignored
    path = tmp_path / "swin_t.pth"
    torch.save({"model": state}, path)

    torch.manual_seed(2)
    dst = build_backbone(_cfg(weights=str(path))).eval()
    assert dst.load_report["missing"] == []
    assert dst.load_report["unexpected"] == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = src(x), dst(x)
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_load_torchvision_weights_matches_torchvision(tmp_path, backbone):
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.swin_t().eval()
    path = tmp_path / "tv_swin_t.pth"
    torch.save(tv.state_dict(), path)
    report = load_swin_state_dict(backbone.body, str(path))
    assert report["missing"] == [] and report["unexpected"] == []
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = backbone(x)
        feats, f = [], x
        for i, layer in enumerate(tv.features):
            f = layer(f)
            if i in (1, 3, 5):
                feats.append(f.permute(0, 3, 1, 2))
    # Stages 1-3 must agree exactly. Stage 4 (7x7 map, window 7) differs by design:
    # torchvision skips the shift there, this backbone always shifts.
    for name, ref in zip(["res2", "res3", "res4"], feats):
        torch.testing.assert_close(ours[name], ref, rtol=1e-4, atol=1e-4)


def test_garbage_weights_file_raises_naming_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RuntimeError, match="garbage.pth"):
        build_backbone(_cfg(weights=str(path)))


def test_unrelated_state_dict_raises_naming_file(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(RuntimeError, match="resnet.pth"):
        build_backbone(_cfg(weights=str(path)))


def test_missing_weights_file_raises_naming_file(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_backbone(_cfg(weights=str(path)))


def test_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="3-channel"):
        BACKBONE_REGISTRY.get("build_swin_backbone")(_cfg(), ShapeSpec(channels=1))
