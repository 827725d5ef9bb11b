"""IAUNet's U-Net-like pixel decoder.

The decoder runs coarse to fine (stride 32 -> 4). At every level it produces three
feature maps of ``conv_dim`` channels:

* main features ``X``: an up-block over ``cat[coords, up(X_prev), skip]``;
* mask features ``Xm``: mask branch over ``fuse(X, up(Xm'_prev))``;
* instance features ``Xi``: instance branch over ``cat[coords, fuse(X, up(Xi'_prev))]``;

where ``Xm'_prev`` / ``Xi'_prev`` are the previous level's features *after* the
transformer decoder refined them. Because of that interleaving the decoder is driven
level by level from outside (``IAUNetTransformerDecoder`` calls
``forward_features`` once, then ``forward_level`` per level, then ``mask_features``).
``forward`` runs the same steps without any refinement, for standalone use.
"""
from typing import Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from fvcore.nn import weight_init
from torch import nn

from .build import IAUNET_PIXEL_DECODER_REGISTRY

__all__ = [
    "IAUNetPixelDecoder",
    "LevelFeatures",
    "SqueezeExcitation",
    "UpBlock",
    "coordinate_channels",
]


def coordinate_channels(x: torch.Tensor) -> torch.Tensor:
    """Two coordinate maps for a feature map.

    Args:
        x: (B, C, H, W); only its shape, dtype, device and memory format are used.
    Returns:
        (B, 2, H, W): channel 0 is the x coordinate, channel 1 the y coordinate, each
        spanning -1..1 across the map (computed per call, so any size works). Channels-
        last when x is: concatenated with x, they keep that layout (a mixed-layout
        concatenation comes out NCHW and every later conv converts it back).
    """
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([grid_x, grid_y]).unsqueeze(0).expand(b, -1, -1, -1)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        coords = coords.contiguous(memory_format=torch.channels_last)
    return coords


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of x (B, C, h, w) to ref's spatial size (x2 between levels).

    Resizing to the reference size instead of a fixed factor keeps odd sizes aligned.
    """
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class SqueezeExcitation(nn.Module):
    """Channel attention: x * sigmoid(fc(relu(fc(avgpool(x))))), C -> C/2 -> C.

    Input and output: (B, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 2):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


class UpBlock(nn.Module):
    """Double depthwise-separable conv block with residual and squeeze-excitation.

    (depthwise 3x3 -> pointwise 1x1 -> norm -> ReLU) x 2, plus the input (projected by
    a 1x1 conv when the channel counts differ), then squeeze-excitation.
    Input (B, in_channels, H, W) -> output (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN"):
        super().__init__()
        # A bias before a normalization layer is cancelled by it (and gets no gradient).
        use_bias = norm == ""
        # ReLUs run in place: no norm or conv backward needs its own output.
        self.dw1 = Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pw1 = Conv2d(
            in_channels, out_channels, 1, bias=use_bias,
            norm=get_norm(norm, out_channels), activation=F.relu_,
        )
        self.dw2 = Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False)
        self.pw2 = Conv2d(
            out_channels, out_channels, 1, bias=use_bias,
            norm=get_norm(norm, out_channels), activation=F.relu_,
        )
        self.shortcut = (
            Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )
        self.se = SqueezeExcitation(out_channels)
        for layer in (self.dw1, self.pw1, self.dw2, self.pw2, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        y = self.pw2(self.dw2(self.pw1(self.dw1(x))))
        return self.se(y + identity)


def _conv_branch(in_channels: int, channels: int, norm: str, num_convs: int = 2) -> nn.Sequential:
    """(3x3 conv -> norm -> ReLU) x num_convs; (B, in, H, W) -> (B, channels, H, W)."""
    layers = []
    for i in range(num_convs):
        conv = Conv2d(
            in_channels if i == 0 else channels, channels, 3, padding=1,
            bias=norm == "", norm=get_norm(norm, channels), activation=F.relu_,
        )
        weight_init.c2_msra_fill(conv)
        layers.append(conv)
    return nn.Sequential(*layers)


class LevelFeatures(NamedTuple):
    """The three feature maps of one decoder level, each (B, conv_dim, h_l, w_l)."""

    main: torch.Tensor
    mask: torch.Tensor
    inst: torch.Tensor


@IAUNET_PIXEL_DECODER_REGISTRY.register()
class IAUNetPixelDecoder(nn.Module):
    """U-Net-like decoder producing main, mask and instance features per level.

    Levels are ordered coarse to fine: level 0 is the backbone's largest stride
    (e.g. res5, 1/32), the last level its smallest (res2, 1/4).

    Interface used by the transformer decoder:

    * ``forward_features(features) -> List[Tensor]``: the per-level skip features
      (B, conv_dim, h_l, w_l), coarse to fine (bridge applied to the top one).
    * ``forward_level(level, skip, prev) -> LevelFeatures``: one level, given the
      previous level's (refined) ``LevelFeatures`` or None at level 0.
    * ``mask_features(mask) -> Tensor``: (B, mask_dim, h, w) per-pixel mask embeddings.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: str = "BN",
        branch_fusion: str = "add",
        bridge: bool = False,
    ):
        """
        Args:
            input_shape: backbone features to decode, name -> ShapeSpec (channels and
                stride are used); any order, sorted here by stride.
            conv_dim: channels of the main, mask and instance features.
            mask_dim: channels of the final per-pixel mask embeddings.
            norm: normalization of the conv blocks ("BN", "GN", "SyncBN", "" ...).
            branch_fusion: "add" or "concat": how the main features are combined with the
                upsampled branch features of the previous level.
            bridge: apply an extra up-block (with SE) on the top backbone feature.
        """
        super().__init__()
        if branch_fusion not in ("add", "concat"):
            raise ValueError(f"branch_fusion must be 'add' or 'concat', got {branch_fusion!r}")
        # Coarse to fine.
        items = sorted(input_shape.items(), key=lambda kv: -kv[1].stride)
        self.in_features: List[str] = [name for name, _ in items]
        self.in_strides: List[int] = [spec.stride for _, spec in items]
        in_channels = [spec.channels for _, spec in items]
        self.num_levels = len(items)
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        self.branch_fusion = branch_fusion

        self.bridge = UpBlock(in_channels[0], in_channels[0], norm) if bridge else None

        self.skip_convs = nn.ModuleList()
        self.main_blocks = nn.ModuleList()
        self.mask_branches = nn.ModuleList()
        self.inst_branches = nn.ModuleList()
        for level, channels in enumerate(in_channels):
            skip = Conv2d(channels, conv_dim, 1)
            weight_init.c2_xavier_fill(skip)
            self.skip_convs.append(skip)
            # +2 coordinate channels; level 0 has no previous main features.
            main_in = 2 + conv_dim + (conv_dim if level > 0 else 0)
            self.main_blocks.append(UpBlock(main_in, conv_dim, norm))
            fused = conv_dim * (2 if (branch_fusion == "concat" and level > 0) else 1)
            self.mask_branches.append(_conv_branch(fused, conv_dim, norm))
            self.inst_branches.append(_conv_branch(2 + fused, conv_dim, norm))

        self.mask_proj = Conv2d(conv_dim, mask_dim, 1)
        weight_init.c2_xavier_fill(self.mask_proj)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        names = cfg.MODEL.IAUNET.IN_FEATURES
        missing = [n for n in names if n not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.IAUNET.IN_FEATURES {list(names)} asks for {missing}, but the "
                f"backbone only outputs {sorted(input_shape)}"
            )
        return {
            "input_shape": {n: input_shape[n] for n in names},
            "conv_dim": cfg.MODEL.IAUNET.CONV_DIM,
            "mask_dim": cfg.MODEL.IAUNET.MASK_DIM,
            "norm": cfg.MODEL.IAUNET.NORM,
            "branch_fusion": cfg.MODEL.IAUNET.BRANCH_FUSION,
            "bridge": cfg.MODEL.IAUNET.BRIDGE,
        }

    def forward_features(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """Skip features per level.

        Args:
            features: backbone outputs, name -> (B, C_name, H/stride, W/stride).
        Returns:
            list over levels (coarse to fine) of (B, conv_dim, h_l, w_l).
        """
        skips = []
        for level, name in enumerate(self.in_features):
            x = features[name]
            if level == 0 and self.bridge is not None:
                x = self.bridge(x)
            skips.append(self.skip_convs[level](x))
        return skips

    def _fuse(self, x: torch.Tensor, prev_branch: Optional[torch.Tensor]) -> torch.Tensor:
        if prev_branch is None:
            return x
        prev_branch = _upsample_to(prev_branch, x)
        if self.branch_fusion == "add":
            return x + prev_branch
        return torch.cat([x, prev_branch], dim=1)

    def forward_level(
        self, level: int, skip: torch.Tensor, prev: Optional[LevelFeatures] = None
    ) -> LevelFeatures:
        """Compute one level's main, mask and instance features.

        Args:
            level: level index, 0 = coarsest.
            skip: (B, conv_dim, h_l, w_l), this level's entry of ``forward_features``.
            prev: the previous level's features (B, conv_dim, h_{l-1}, w_{l-1}), with
                mask/inst as refined by the transformer decoder; None for level 0.
        Returns:
            LevelFeatures of (B, conv_dim, h_l, w_l) tensors.
        """
        if (prev is None) != (level == 0):
            raise ValueError("prev must be None exactly at level 0")
        if prev is None:
            main_in = torch.cat([coordinate_channels(skip), skip], dim=1)
        else:
            main_in = torch.cat(
                [coordinate_channels(skip), _upsample_to(prev.main, skip), skip], dim=1
            )
        x = self.main_blocks[level](main_in)
        mask = self.mask_branches[level](self._fuse(x, None if prev is None else prev.mask))
        inst_in = self._fuse(x, None if prev is None else prev.inst)
        inst = self.inst_branches[level](torch.cat([coordinate_channels(inst_in), inst_in], dim=1))
        return LevelFeatures(x, mask, inst)

    def mask_features(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, conv_dim, h, w) refined mask features -> (B, mask_dim, h, w) embeddings."""
        return self.mask_proj(mask)

    def forward(self, features: Dict[str, torch.Tensor]):
        """Run every level without transformer refinement.

        Args:
            features: backbone outputs, name -> (B, C, H/stride, W/stride).
        Returns:
            (mask_features (B, mask_dim, h_last, w_last), list of LevelFeatures coarse
            to fine).
        """
        levels: List[LevelFeatures] = []
        prev = None
        for level, skip in enumerate(self.forward_features(features)):
            prev = self.forward_level(level, skip, prev)
            levels.append(prev)
        return self.mask_features(prev.mask), levels
