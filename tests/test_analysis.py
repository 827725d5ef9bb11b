"""Parameter / FLOP counting utilities and the analyze_model CLI."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import iaunet_d2  # noqa: F401  (registers the models)
from iaunet_d2.utils.analysis import (
    PAPER_UNCOUNTED_MODULES,
    count_flops,
    count_parameters,
    flatten_outputs,
    full_test_workload,
    paper_convention_flops,
)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyModel(nn.Module):
    """Detectron2-style model: list of {"image": (3, H, W)} -> list of output dicts."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, batched_inputs):
        x = torch.stack([d["image"] for d in batched_inputs])
        feat = self.conv(x)
        logits = self.head(feat.mean(dim=(2, 3)))
        return [{"sem_seg": feat[0], "logits": logits[0]}]


class AttentionModel(nn.Module):
    """Runs fused attention and baddbmm on fixed shapes; no parameters."""

    def forward(self, batched_inputs):
        x = batched_inputs[0]["image"]
        q = x.new_ones(1, 2, 5, 4)
        k = x.new_ones(1, 2, 7, 4)
        v = x.new_ones(1, 2, 7, 3)
        out = F.scaled_dot_product_attention(q, k, v)  # 2 * 5 * 7 * (4 + 3) MACs
        b = torch.baddbmm(x.new_zeros(3, 5, 6), x.new_ones(3, 5, 2), x.new_ones(3, 2, 6))
        return [{"a": out, "b": b + x.sum()}]  # baddbmm: 3 * 5 * 2 * 6 MACs


def test_count_parameters_exact():
    counts = count_parameters(TinyModel())
    conv = 3 * 3 * 3 * 8 + 8
    head = 8 * 4 + 4
    assert dict(counts) == {"total": conv + head, "conv": conv, "head": head}
    assert list(counts)[0] == "total"
    counts = count_parameters(TinyModel(), submodules=("no.such",))
    assert list(counts) == ["total", "conv", "head", "no.such"] and counts["no.such"] == 0


def test_count_parameters_own_and_shared():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = self.a  # same module twice: counted once in total
            self.scale = nn.Parameter(torch.ones(3))

    counts = count_parameters(Shared())
    assert counts["total"] == 6 + 3
    assert counts["(other)"] == 3


def test_count_flops_exact():
    h, w = 16, 12
    total, per_module, unsupported = count_flops(TinyModel(), h, w)
    conv_macs = h * w * 8 * 3 * 3 * 3  # output elements x (cin * k * k); bias not counted
    head_macs = 8 * 4
    assert total == 2 * (conv_macs + head_macs)
    assert per_module["conv"] == 2 * conv_macs
    assert per_module["head"] == 2 * head_macs
    assert per_module["(other)"] == 0
    assert unsupported["aten::mean"] == 1


def test_count_flops_attention_handles():
    total, _, unsupported = count_flops(AttentionModel(), 4, 4)
    assert total == 0  # fvcore's plain count (the paper's convention) skips both
    assert unsupported["aten::scaled_dot_product_attention"] == 1
    assert unsupported["aten::baddbmm"] == 1
    total, _, unsupported = count_flops(AttentionModel(), 4, 4, count_attention=True)
    assert total == 2 * (2 * 5 * 7 * (4 + 3) + 3 * 5 * 2 * 6)
    assert "aten::scaled_dot_product_attention" not in unsupported
    assert "aten::baddbmm" not in unsupported


def test_flatten_outputs_instances():
    from detectron2.structures import Boxes, Instances

    inst = Instances((4, 4))
    inst.pred_boxes = Boxes(torch.zeros(2, 4))
    inst.scores = torch.ones(2)
    flat = flatten_outputs([{"instances": inst, "meta": "x"}])
    assert len(flat) == 2 and all(torch.is_tensor(t) for t in flat)


def test_mask_rcnn_counts():
    from detectron2.modeling import build_model
    from iaunet_d2.config import build_config

    cfg = build_config(os.path.join(_ROOT, "configs", "demo", "mask_rcnn_R50.yaml"),
                       ["MODEL.DEVICE", "cpu"], prepare_data=False)
    model = build_model(cfg)
    params = count_parameters(model)
    assert list(params) == ["total", "backbone", "proposal_generator", "roi_heads"]
    assert abs(params["total"] / 1e6 - 43.97) < 0.05  # paper: 44M
    total, per_module, _ = count_flops(model, 64, 64)
    assert total > 0 and per_module["backbone"] > 0


def _run_cli(capsys, *args):
    from iaunet_d2.apps import analyze_model

    assert analyze_model.main(list(args)) == 0
    return capsys.readouterr()


def test_cli_markdown_table(capsys):
    cfg = os.path.join(_ROOT, "configs", "demo", "iaunet_R18_small.yaml")
    out = _run_cli(capsys, "--config-file", cfg, "--input-size", "64", "64", "--per-module").out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["config", "model", "params (M)", "GFLOPs"]
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row[1] == "IAUNet R18"
    assert float(row[2]) > 0 and float(row[3]) > 0
    modules = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")[2:]]
               for line in lines if "iaunet_R18_small" in line}
    assert {"backbone", "head", "head.pixel_decoder", "head.transformer_decoder"} <= set(modules)
    # The head's rows are followed by its two decoders, which add up to it.
    names = list(modules)
    assert names[names.index("head") + 1:names.index("head") + 3] == [
        "head.pixel_decoder", "head.transformer_decoder"]
    parts = [float(modules[n][0]) for n in ("head.pixel_decoder", "head.transformer_decoder")]
    assert sum(parts) == pytest.approx(float(modules["head"][0]), abs=0.011)
    assert "not counted" in out


def test_cli_csv(capsys):
    cfg = os.path.join(_ROOT, "configs", "demo", "iaunet_R18_small.yaml")
    res = _run_cli(capsys, "--config-file", cfg, "--input-size", "64", "64", "--format", "csv",
                   "MODEL.IAUNET.NUM_QUERIES", "10")
    lines = res.out.strip().splitlines()
    assert lines[0] == ("config,model,params (M),GFLOPs,GFLOPs paper conv.,paper params (M),"
                        "paper GFLOPs,params vs paper,GFLOPs vs paper")
    assert len(lines) == 2
    assert "not counted" in res.err


# ResNet-18 FPN R-CNNs with 30 proposals and 4 detections: cheap at 64x64.
_SMALL_RCNN = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18",
               "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
               "TEST.DETECTIONS_PER_IMAGE", "4"]


def _small_rcnn(name, opts=()):
    from detectron2.modeling import build_model
    from iaunet_d2.config import build_config

    cfg = build_config(os.path.join(_ROOT, "configs", "demo", name), _SMALL_RCNN + list(opts),
                       prepare_data=False)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def test_full_test_workload_fixes_the_box_counts():
    _, model = _small_rcnn("mask_rcnn_R50.yaml")
    # Regressions that push every box out of the image: nothing survives normally.
    with torch.no_grad():
        model.proposal_generator.rpn_head.anchor_deltas.bias.fill_(50.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image = torch.rand(3, 64, 64) * 255
    inputs = [{"image": image, "height": 64, "width": 64}]
    with torch.no_grad():
        assert len(model(inputs)[0]["instances"]) == 0
        with full_test_workload(model) as switched:
            assert switched
            images = model.preprocess_image(inputs)
            proposals, _ = model.proposal_generator(images, model.backbone(images.tensor))
            assert len(proposals[0]) == 30  # POST_NMS_TOPK_TEST
            assert len(model(inputs)[0]["instances"]) == 4  # TEST.DETECTIONS_PER_IMAGE
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.proposal_generator.nms_thresh == 0.7
    assert model.roi_heads.box_predictor.test_score_thresh == 0.05
    assert model.roi_heads.box_predictor.test_nms_thresh == 0.5

    class NotRCNN(nn.Module):
        pass

    with full_test_workload(NotRCNN()) as switched:
        assert not switched


def test_rcnn_head_flops_scale_with_the_fixed_counts():
    per_head = {}
    for detections in (2, 4):
        _, model = _small_rcnn("mask_rcnn_R50.yaml", ["TEST.DETECTIONS_PER_IMAGE", str(detections)])
        _, per_module, _ = count_flops(
            model, 64, 64, submodules=("roi_heads.box_head", "roi_heads.mask_head"))
        per_head[detections] = per_module
    # Box head: two FC layers (256*7*7 -> 1024 -> 1024) on each of the 30 proposals.
    assert per_head[4]["roi_heads.box_head"] == 2 * 30 * (256 * 7 * 7 * 1024 + 1024 * 1024)
    assert per_head[2]["roi_heads.box_head"] == per_head[4]["roi_heads.box_head"]
    # Mask head: the same work for every detection.
    assert per_head[4]["roi_heads.mask_head"] == 2 * per_head[2]["roi_heads.mask_head"] > 0


def test_paper_convention_flops():
    per_module = {"roi_heads.mask_head.point_head": 40}
    assert paper_convention_flops("IAUNet", 300, {}) == 300.0
    assert paper_convention_flops("GeneralizedRCNN", 100, {n: 0 for n in PAPER_UNCOUNTED_MODULES}) == 50.0
    assert paper_convention_flops("GeneralizedRCNN", 140, per_module) == 50.0
    with pytest.raises(ValueError, match="PAPER_UNCOUNTED_MODULES"):
        paper_convention_flops("GeneralizedRCNN", 140, {})


def test_pointrend_point_head_counted_separately():
    _, model = _small_rcnn("pointrend_R50.yaml")
    total, per_module, _ = count_flops(model, 64, 64, submodules=PAPER_UNCOUNTED_MODULES)
    point_head = per_module["roi_heads.mask_head.point_head"]
    assert 0 < point_head < per_module["roi_heads"]
    assert paper_convention_flops("GeneralizedRCNN", total, per_module) == (total - point_head) / 2


@pytest.mark.parametrize("name,paper_gflops", [("mask_rcnn_R50.yaml", 115.0),
                                               ("pointrend_R50.yaml", 66.3)])
def test_rcnn_flops_reproduce_the_paper(name, paper_gflops):
    """The paper's Table 1-2 R-CNN FLOPs at 512x512 (about 5 s each on 2 cores)."""
    from detectron2.modeling import build_model
    from iaunet_d2.config import build_config

    cfg = build_config(os.path.join(_ROOT, "configs", "revvity25", name),
                       ["MODEL.DEVICE", "cpu"], prepare_data=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    total, per_module, _ = count_flops(model, 512, 512, submodules=PAPER_UNCOUNTED_MODULES)
    gflops = paper_convention_flops(cfg.MODEL.META_ARCHITECTURE, total, per_module) / 1e9
    assert abs(gflops - paper_gflops) / paper_gflops < 0.05, gflops


def test_full_test_workload_iaunet_drops_the_score_threshold():
    from detectron2.modeling import build_model
    from iaunet_d2.config import build_config

    cfg = build_config(os.path.join(_ROOT, "configs", "demo", "iaunet_R18_small.yaml"),
                       ["MODEL.DEVICE", "cpu", "MODEL.IAUNET.NUM_QUERIES", "12",
                        "TEST.DETECTIONS_PER_IMAGE", "9", "MODEL.IAUNET.TEST.SCORE_THRESH", "0.99",
                        "MODEL.IAUNET.TEST.NMS_IOU", "1.0"], prepare_data=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64}]
    with torch.no_grad():
        assert len(model(inputs)[0]["instances"]) == 0  # nothing scores 0.99
        with full_test_workload(model) as switched:
            assert switched
            assert len(model(inputs)[0]["instances"]) == 9
    assert (model.score_thresh, model.nms_iou) == (cfg.MODEL.IAUNET.TEST.SCORE_THRESH,
                                                   cfg.MODEL.IAUNET.TEST.NMS_IOU)
