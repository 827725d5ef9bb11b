"""Mask2Former's pixel decoder: a deformable-attention encoder over the 1/8..1/32
backbone levels, then one FPN step onto 1/4 for the mask features."""
from typing import Dict, List, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from .deformable_attention import MultiScaleDeformableAttention, reference_points

__all__ = ["DeformableEncoderLayer", "DeformableEncoder", "MSDeformAttnPixelDecoder"]


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels' tokens, then FFN; post-norm.

    ``forward(x, pos, reference, spatial_shapes)``: x, pos (B, S, C); reference (S, 2).
    Returns (B, S, C).
    """

    def __init__(self, dim: int = 256, dim_feedforward: int = 1024, dropout: float = 0.0,
                 num_heads: int = 8, num_levels: int = 3, num_points: int = 4):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, pos, reference, spatial_shapes):
        # Positions shape where to look (query) but not what is read (value).
        x = self.norm1(x + self.dropout(self.self_attn(x + pos, reference, x, spatial_shapes)))
        y = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(y))


class DeformableEncoder(nn.Module):
    """A stack of ``DeformableEncoderLayer`` with learned level embeddings.

    ``forward(features, pos)``: lists over L levels of (B, C, H_l, W_l) features and
    positional embeddings. Returns the list of encoded (B, C, H_l, W_l) maps.
    """

    def __init__(self, dim: int, num_layers: int, dim_feedforward: int, dropout: float,
                 num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        self.layers = nn.ModuleList([
            DeformableEncoderLayer(dim, dim_feedforward, dropout, num_heads, num_levels, num_points)
            for _ in range(num_layers)
        ])
        # A plain parameter (not an nn.Embedding), so it keeps the normal weight decay.
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        nn.init.normal_(self.level_embed)

    def forward(self, features: List[torch.Tensor], pos: List[torch.Tensor]) -> List[torch.Tensor]:
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)  # (B, S, C)
        pos_tokens = torch.cat([
            p.flatten(2).transpose(1, 2) + self.level_embed[i] for i, p in enumerate(pos)
        ], dim=1).to(tokens.dtype)
        reference = reference_points(shapes, device=tokens.device)
        for layer in self.layers:
            tokens = layer(tokens, pos_tokens, reference, shapes)
        batch, _, dim = tokens.shape
        return [
            t.transpose(1, 2).reshape(batch, dim, h, w)
            for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], dim=1), shapes)
        ]


class MSDeformAttnPixelDecoder(nn.Module):
    """Multi-scale deformable-attention pixel decoder.

    ``forward(features)``: backbone dict with the ``in_features`` maps.
    Returns (mask_features (B, mask_dim, H/4, W/4), multi-scale features: list of
    (B, conv_dim, h, w) encoder outputs from coarsest to finest, e.g. [1/32, 1/16, 1/8]).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        deformable_in_features: Sequence[str] = ("res3", "res4", "res5"),
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        num_heads: int = 8,
        num_points: int = 4,
    ):
        super().__init__()
        missing = [f for f in deformable_in_features if f not in input_shape]
        if missing:
            raise ValueError(f"Mask2Former pixel decoder needs backbone features {missing}, "
                             f"the backbone gives {sorted(input_shape)}")
        # Backbone levels by increasing stride; the encoder takes the deformable ones
        # coarsest first, the finer others get an FPN step each.
        by_stride = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.deformable_in_features = [k for k, _ in by_stride if k in deformable_in_features][::-1]
        self.fpn_in_features = [
            k for k, s in by_stride
            if k not in deformable_in_features
            and s.stride < min(input_shape[f].stride for f in deformable_in_features)
        ][::-1]
        if not self.fpn_in_features:
            raise ValueError("Mask2Former pixel decoder needs a backbone level finer than "
                             f"{list(deformable_in_features)} for the mask features (e.g. res2)")
        self.mask_stride = input_shape[self.fpn_in_features[-1]].stride

        self.input_proj = nn.ModuleList()
        for name in self.deformable_in_features:
            proj = nn.Sequential(
                nn.Conv2d(input_shape[name].channels, conv_dim, kernel_size=1),
                nn.GroupNorm(32, conv_dim),
            )
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.encoder = DeformableEncoder(
            conv_dim, num_layers, dim_feedforward, dropout, num_heads,
            len(self.deformable_in_features), num_points,
        )

        use_bias = norm == ""
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for name in self.fpn_in_features:
            lateral = Conv2d(input_shape[name].channels, conv_dim, kernel_size=1, bias=use_bias,
                             norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                            norm=get_norm(norm, conv_dim), activation=F.relu)
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        m2f = cfg.MODEL.MASK2FORMER
        if m2f.CONV_DIM % 32:
            raise ValueError(f"MODEL.MASK2FORMER.CONV_DIM must be a multiple of 32 (GroupNorm(32)), "
                             f"got {m2f.CONV_DIM}")
        missing = [f for f in m2f.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.MASK2FORMER.IN_FEATURES asks for {missing}, but the backbone "
                             f"gives {sorted(input_shape)} (check its OUT_FEATURES)")
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in m2f.IN_FEATURES},
            "deformable_in_features": list(m2f.DEFORMABLE_IN_FEATURES),
            "conv_dim": m2f.CONV_DIM,
            "mask_dim": m2f.MASK_DIM,
            "norm": m2f.NORM,
            "num_layers": m2f.ENC_LAYERS,
            "dim_feedforward": m2f.ENC_DIM_FEEDFORWARD,
            "dropout": m2f.DROPOUT,
            "num_heads": m2f.NHEADS,
            "num_points": m2f.ENC_NUM_POINTS,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        srcs = [proj(features[name]) for name, proj in zip(self.deformable_in_features, self.input_proj)]
        pos = [self.pe_layer(s) for s in srcs]
        multi_scale = self.encoder(srcs, pos)  # coarsest first
        out = multi_scale[-1]
        for name, lateral, output in zip(self.fpn_in_features, self.lateral_convs, self.output_convs):
            skip = lateral(features[name])
            up = F.interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            out = output(skip + up)
        return self.mask_features(out), multi_scale
