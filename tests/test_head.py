"""IAUNet's head, checkpoints of the layout before it, and the retired width keys."""
import os
from collections import OrderedDict

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from iaunet_test_utils import small_iaunet_cfg, synthetic_batch

import iaunet_d2.config.build as defaults
from iaunet_d2.config import build_config
from iaunet_d2.engine import AtomicCheckpointer, WeightsMismatchError
from iaunet_d2.config import ConfigError
from iaunet_d2.modeling.meta_arch import upgrade_state_dict

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = os.path.join(_ROOT, "configs", "demo", "iaunet_R18_small.yaml")


def _old_layout(state):
    """``state`` in the layout of IAUNet version 1: the decoders at the top, no head."""
    def old(name):
        return name[len("head."):] if name.startswith("head.") else name

    renamed = OrderedDict((old(k), v) for k, v in state.items())
    renamed._metadata = OrderedDict((old(k), dict(v)) for k, v in state._metadata.items())
    renamed._metadata[""]["version"] = 1
    return renamed


def _outputs(model, batch):
    with torch.no_grad():
        images = model.preprocess_image(batch)
        return model.head(model.backbone(images.tensor))


class _RecordingCheckpointer(DetectionCheckpointer):
    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("plus", [None, True], ids=["paper", "plus"])
def test_a_checkpoint_of_the_layout_without_head_loads_and_predicts_the_same(tmp_path, plus):
    cfg = small_iaunet_cfg(plus=plus)
    torch.manual_seed(0)
    trained = build_model(cfg).eval()
    state = trained.state_dict()
    assert state._metadata[""]["version"] == 2
    assert all(k.startswith(("backbone.", "head.", "pixel_")) for k in state)
    old = _old_layout(state)
    assert any(k.startswith("pixel_decoder.") for k in old)
    path = str(tmp_path / "old.pth")
    torch.save({"model": old}, path)
    batch = synthetic_batch([(64, 64)], [2])
    expected = _outputs(trained, batch)

    for seed, load in ((1, "atomic"), (2, "detectron2"), (3, "load_state_dict")):
        torch.manual_seed(seed)
        model = build_model(cfg).eval()
        if load == "atomic":
            checkpointer = AtomicCheckpointer(model)
            checkpointer.load_weights(path, strict=True)
            incompatible = checkpointer.last_incompatible
        elif load == "detectron2":
            checkpointer = _RecordingCheckpointer(model)
            checkpointer.load(path)
            incompatible = checkpointer.incompatible
        else:
            incompatible = model.load_state_dict(torch.load(path, weights_only=False)["model"])
        assert not incompatible.missing_keys and not incompatible.unexpected_keys, load
        got = _outputs(model, batch)
        for key in ("pred_logits", "pred_masks"):
            assert torch.equal(got[key], expected[key]), (load, key)
        with torch.no_grad():
            assert torch.equal(model(batch)[0]["instances"].pred_masks,
                               trained(batch)[0]["instances"].pred_masks)


def test_an_old_layout_checkpoint_of_other_widths_is_refused_by_name(tmp_path):
    """The checkpointer renames before it compares shapes: the mismatch is reported
    under today's names instead of failing inside load_state_dict."""
    torch.manual_seed(0)
    other = build_model(small_iaunet_cfg(CONV_DIM=64)).eval()
    path = str(tmp_path / "wide.pth")
    torch.save({"model": _old_layout(other.state_dict())}, path)
    model = build_model(small_iaunet_cfg()).eval()
    with pytest.raises(WeightsMismatchError, match=r"with another shape \(e\.g\. head\."):
        AtomicCheckpointer(model).load_weights(path, strict=True)


def test_upgrade_state_dict_renames_only_old_versions():
    state = OrderedDict([("backbone.w", 1), ("pixel_decoder.a", 2), ("transformer_decoder.b", 3),
                         ("pixel_mean", 4)])
    state._metadata = OrderedDict([("", {"version": 1}), ("transformer_decoder", {"version": 2})])
    assert upgrade_state_dict(state, "", version=1) == 2
    assert list(state) == ["backbone.w", "pixel_mean", "head.pixel_decoder.a",
                           "head.transformer_decoder.b"]
    assert state._metadata["head.transformer_decoder"] == {"version": 2}
    current = {"head.pixel_decoder.a": 2, "pixel_decoder_extra": 5}
    assert upgrade_state_dict(dict(current), "", version=2) == 0
    wrapped = {"module.pixel_decoder.a": 1}
    assert upgrade_state_dict(wrapped, "module.", version=None) == 1
    assert list(wrapped) == ["module.head.pixel_decoder.a"]


# ------------------------------------------------------------------ retired config keys


@pytest.fixture
def warnings(monkeypatch):
    said = []
    monkeypatch.setattr(defaults.logger, "warning", lambda msg, *args: said.append(msg % args))
    return said


def _old_yaml(tmp_path, **iaunet):
    lines = [f'_BASE_: "{SMALL}"', "MODEL:", "  IAUNET:"]
    lines += [f"    {k}: {v}" for k, v in iaunet.items()]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_retired_keys_of_a_saved_config_are_dropped_with_one_warning(tmp_path, warnings):
    path = _old_yaml(tmp_path, HIDDEN_DIM=128, CONV_DIM=128, IA_PRIOR_PROB=0.01)
    cfg = build_config(path, prepare_data=False)
    assert cfg.MODEL.IAUNET.CONV_DIM == 128
    assert "HIDDEN_DIM" not in cfg.MODEL.IAUNET and "IA_PRIOR_PROB" not in cfg.MODEL.IAUNET
    assert len(warnings) == 1
    assert "retired" in warnings[0] and path in warnings[0]
    assert "MODEL.IAUNET.HIDDEN_DIM" in warnings[0] and "MODEL.IAUNET.IA_PRIOR_PROB" in warnings[0]
    # The file's width may still be overridden.
    wider = build_config(path, ["MODEL.IAUNET.CONV_DIM", "64"], prepare_data=False)
    assert wider.MODEL.IAUNET.CONV_DIM == 64


def test_a_retired_width_that_differs_is_refused(tmp_path, warnings):
    path = _old_yaml(tmp_path, HIDDEN_DIM=64, CONV_DIM=128)
    with pytest.raises(ConfigError) as info:
        build_config(path, prepare_data=False)
    message = str(info.value)
    assert "\n" not in message and path in message
    assert "MODEL.IAUNET.HIDDEN_DIM" in message and "MODEL.IAUNET.CONV_DIM sets the width" in message
    assert warnings == []


def test_retired_keys_in_overrides(warnings):
    cfg = build_config(SMALL, ["MODEL.IAUNET.HIDDEN_DIM", "128", "MODEL.IAUNET.IA_PRIOR_PROB", "0.5"],
                       prepare_data=False)
    assert "HIDDEN_DIM" not in cfg.MODEL.IAUNET and "IA_PRIOR_PROB" not in cfg.MODEL.IAUNET
    assert len(warnings) == 1 and "retired" in warnings[0]
    cfg = build_config(SMALL, ["MODEL.IAUNET.CONV_DIM", "64", "MODEL.IAUNET.HIDDEN_DIM", "64"],
                       prepare_data=False)
    assert cfg.MODEL.IAUNET.CONV_DIM == 64
    with pytest.raises(ConfigError, match=r"iaunet_R18_small\.yaml.*CONV_DIM sets the width"):
        build_config(SMALL, ["MODEL.IAUNET.HIDDEN_DIM", "64"], prepare_data=False)
    with pytest.raises(ConfigError, match="NOT_A_KEY"):  # other unknown keys stay errors
        build_config(SMALL, ["MODEL.IAUNET.NOT_A_KEY", "1"], prepare_data=False)


def test_head_refuses_decoders_with_different_level_counts():
    from iaunet_d2.modeling.head import IAUNetHead
    from iaunet_d2.modeling.pixel_decoder import build_pixel_decoder
    from iaunet_d2.modeling.transformer_decoder import build_transformer_decoder

    cfg = small_iaunet_cfg()
    model = build_model(cfg)
    pixel_decoder = build_pixel_decoder(cfg, model.backbone.output_shape())
    three_levels = small_iaunet_cfg()
    three_levels.MODEL.IAUNET.IN_FEATURES = ["res3", "res4", "res5"]
    decoder = build_transformer_decoder(three_levels, in_channels=pixel_decoder.conv_dim,
                                        mask_dim=pixel_decoder.mask_dim, level_strides=[32, 16, 8])
    with pytest.raises(ValueError, match="pixel decoder has 4 levels, transformer decoder 3"):
        IAUNetHead(pixel_decoder=pixel_decoder, transformer_decoder=decoder)
