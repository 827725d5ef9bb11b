"""Swin Transformer backbone for Detectron2, built on timm's Swin implementation.

The backbone returns the four Swin stages as Detectron2 feature maps:

    name  stride  channels (Swin-T/S)  channels (Swin-B)
    res2   4       96                   128
    res3   8      192                   256
    res4  16      384                   512
    res5  32      768                  1024

Inputs of any size are accepted: the image is zero-padded on the right and bottom to a
multiple of 32 first, so an input of shape (N, 3, H, W) gives maps of shape
(N, C_i, ceil(H / 32) * 32 / s_i, ceil(W / 32) * 32 / s_i). Detectron2 meta-architectures
already pad their batches to ``size_divisibility`` (32), in which case this is a no-op.

Windows are never shrunk to the feature size: a map smaller than the window (for
example the 2x2 stage-4 map of a 64x64 input with window 7) is zero-padded to one
window inside each block, as the detection version of Swin does, so small test inputs
work. Every second block is shifted at every stage whatever the input size
(timm's ``always_partition``), because the image size at inference is not known when
the model is built.
"""
import logging
import os
import re
from collections import OrderedDict

import numpy as np
import timm
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...io.weights import UnsafeWeightsError, read_weights_file

__all__ = ["SwinBackbone", "build_swin_backbone", "load_swin_state_dict", "convert_swin_state_dict"]

logger = logging.getLogger(__name__)

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
_PREFIXES_TO_STRIP = ("module.", "backbone.", "body.")


class SwinBackbone(Backbone):
    """A timm Swin Transformer (``features_only``) as a Detectron2 backbone.

    Args:
        timm_name: timm model name, e.g. ``"swin_small_patch4_window7_224"``.
        out_features: subset of ``("res2", "res3", "res4", "res5")`` to return.
        drop_path_rate: stochastic depth rate of the deepest block (timm's schedule
            grows it linearly over the blocks).
        weights: optional path to a Swin state dict (timm, torchvision or original
            Microsoft layout) to initialise from; ``""`` trains from scratch.

    ``forward(x)`` takes a float tensor of shape (N, 3, H, W) and returns a dict of
    NCHW tensors keyed by ``out_features`` (shapes in the module docstring).
    """

    def __init__(self, timm_name, out_features=_STAGE_NAMES, drop_path_rate=0.0, weights=""):
        super().__init__()
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in _STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(
                f"Swin backbone OUT_FEATURES must be a non-empty subset of {list(_STAGE_NAMES)}, "
                f"got {out_features}"
            )
        # Keep the requested order canonical (shallow to deep), as Detectron2 expects.
        self._out_features = [f for f in _STAGE_NAMES if f in out_features]
        out_indices = tuple(_STAGE_NAMES.index(f) for f in self._out_features)

        self.body = timm.create_model(
            timm_name,
            pretrained=False,  # weights come from `weights` (no downloads)
            features_only=True,
            strict_img_size=False,
            always_partition=True,
            drop_path_rate=drop_path_rate,
            out_indices=out_indices,
        )
        channels = self.body.feature_info.channels()
        strides = self.body.feature_info.reduction()
        self._out_feature_channels = dict(zip(self._out_features, channels))
        self._out_feature_strides = dict(zip(self._out_features, strides))
        self._divisibility = 32

        self.load_report = None
        if weights:
            self.load_report = load_swin_state_dict(self.body, weights)

    @property
    def size_divisibility(self):
        return self._divisibility

    def forward(self, x):
        """
        Args:
            x: (N, 3, H, W) normalized images.
        Returns:
            dict name -> (N, C, Hp / stride, Wp / stride) with Hp, Wp = H, W rounded up
            to a multiple of 32.
        """
        if x.dim() != 4:
            raise ValueError(
                f"SwinBackbone expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        d = self._divisibility
        pad_h, pad_w = (d - h % d) % d, (d - w % d) % d
        if pad_h or pad_w:
            # timm's patch embedding requires sizes divisible by the patch size (4);
            # padding to 32 also keeps every stage an exact stride of the input.
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.body(x)  # list of (N, H/s, W/s, C), timm's NHWC layout
        return {
            name: f.permute(0, 3, 1, 2).contiguous() for name, f in zip(self._out_features, feats)
        }

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_swin_backbone(cfg, input_shape):
    """Detectron2 backbone builder for ``MODEL.BACKBONE.NAME: "build_swin_backbone"``.

    Reads ``MODEL.SWIN.{TIMM_NAME, DROP_PATH_RATE, OUT_FEATURES, WEIGHTS}``.
    ``input_shape`` must have 3 channels (timm's Swin patch embedding).
    """
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(
            f"build_swin_backbone supports 3-channel inputs only, got {input_shape.channels}"
        )
    return SwinBackbone(
        timm_name=cfg.MODEL.SWIN.TIMM_NAME,
        out_features=cfg.MODEL.SWIN.OUT_FEATURES,
        drop_path_rate=cfg.MODEL.SWIN.DROP_PATH_RATE,
        weights=cfg.MODEL.SWIN.WEIGHTS,
    )


# ----------------------------------------------------------------------------- weights


def _read_checkpoint(path):
    """Read a checkpoint file into a flat dict name -> tensor; raise naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.SWIN.WEIGHTS: file not found: {path!r}")
    try:
        obj = read_weights_file(path)
    except UnsafeWeightsError as e:
        raise RuntimeError(f"MODEL.SWIN.WEIGHTS: {e}") from None
    except Exception as e:  # noqa: BLE001  (whatever a file that is no checkpoint raises)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RuntimeError(
            f"MODEL.SWIN.WEIGHTS: cannot read {path!r} as a PyTorch (.pth) or pickle (.pkl) "
            f"checkpoint ({type(e).__name__}: {first})"
        ) from None
    # Unwrap the usual containers: {"model": ...}, {"state_dict": ...}, {"module": ...}.
    for _ in range(3):
        if isinstance(obj, dict):
            for key in ("model", "state_dict", "module"):
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
    if not isinstance(obj, dict):
        raise RuntimeError(
            f"MODEL.SWIN.WEIGHTS: {path!r} does not contain a state dict "
            f"(found a {type(obj).__name__})"
        )
    state = OrderedDict()
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if isinstance(k, str) and torch.is_tensor(v):
            state[k] = v
    return state


def _torchvision_to_timm(key):
    """Rename one torchvision Swin (v1) key to timm's layout; None drops the key.

    torchvision's ``features`` is [patch-embed, stage1, merge, stage2, merge, stage3,
    merge, stage4]; timm puts each merge at the start of the following stage.
    """
    m = re.match(r"features\.(\d+)\.(.*)$", key)
    if m is None:
        return key  # "norm.*", "head.*": dropped later
    idx, rest = int(m.group(1)), m.group(2)
    if idx == 0:
        rest = {"0.weight": "proj.weight", "0.bias": "proj.bias",
                "2.weight": "norm.weight", "2.bias": "norm.bias"}.get(rest)
        return None if rest is None else f"patch_embed.{rest}"
    if idx % 2 == 0:  # patch merging before stage idx // 2
        return f"layers.{idx // 2}.downsample.{rest}"
    rest = rest.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
    return f"layers.{(idx - 1) // 2}.blocks.{rest}"


def convert_swin_state_dict(state):
    """Map a Swin state dict to the key names of timm's ``features_only`` model.

    Accepts timm, torchvision (``features.*``), original Microsoft Swin (patch merging
    stored at the end of a stage) and Detectron2-wrapped (``backbone.``/``module.``
    prefixes) layouts. Drops the classifier, the final norm and non-persistent buffers.

    Args:
        state: dict name -> tensor.
    Returns:
        OrderedDict name -> tensor with names like ``layers_0.blocks.0.attn.qkv.weight``.
    """
    stripped = OrderedDict()
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES_TO_STRIP:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        stripped[k] = v

    if any(k.startswith("features.") for k in stripped):
        renamed = OrderedDict()
        for k, v in stripped.items():
            new = _torchvision_to_timm(k)
            if new is not None:
                renamed[new] = v
        stripped = renamed
    elif "layers.0.downsample.reduction.weight" in stripped:
        # Original layout: stage i ends with the merge that timm runs at stage i+1.
        stripped = OrderedDict(
            (re.sub(r"^layers\.(\d+)\.downsample",
                    lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k), v)
            for k, v in stripped.items()
        )

    out = OrderedDict()
    for k, v in stripped.items():
        if k.startswith(("head.", "norm.")) or "relative_position_index" in k or "attn_mask" in k:
            continue
        # timm's FeatureListNet flattens "layers.i" into the module name "layers_i".
        k = re.sub(r"^layers\.(\d+)\.", r"layers_\1.", k)
        out[k] = v
    return out


def load_swin_state_dict(model, path):
    """Load Swin weights from ``path`` into a timm ``features_only`` Swin model.

    Tensors whose shape differs from the model's (another window size or width) are
    skipped and reported. Raises ``RuntimeError`` naming the file when it cannot be read
    or when no tensor matches the model.

    Returns:
        dict with lists "loaded", "missing", "unexpected", "shape_mismatch".
    """
    raw = _read_checkpoint(path)
    state = convert_swin_state_dict(raw)
    own = model.state_dict()
    loadable, mismatched, unexpected = OrderedDict(), [], []
    for k, v in state.items():
        if k not in own:
            unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            loadable[k] = v.to(own[k].dtype)
    if not loadable:
        raise RuntimeError(
            f"MODEL.SWIN.WEIGHTS: no tensor in {path!r} matches the Swin backbone "
            f"({len(raw)} tensors read, e.g. {list(raw)[:3]}; "
            f"model expects e.g. {list(own)[:3]})"
        )
    model.load_state_dict(loadable, strict=False)
    missing = [k for k in own if k not in loadable]
    report = {
        "loaded": list(loadable),
        "missing": missing,
        "unexpected": unexpected,
        "shape_mismatch": mismatched,
    }
    logger.info("Loaded %d/%d Swin tensors from %s", len(loadable), len(own), path)
    if missing:
        logger.warning("Swin weights %s: %d tensors missing (kept random init): %s",
                       path, len(missing), ", ".join(missing))
    if unexpected:
        logger.warning("Swin weights %s: %d unexpected tensors ignored: %s",
                       path, len(unexpected), ", ".join(unexpected))
    if mismatched:
        logger.warning("Swin weights %s: %d tensors skipped for shape mismatch: %s",
                       path, len(mismatched), "; ".join(mismatched))
    return report
