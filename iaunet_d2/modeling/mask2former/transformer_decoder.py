"""Mask2Former's masked-attention transformer decoder.

Learned queries (content + positional embedding) pass through ``dec_layers`` layers
that cycle over the pixel decoder's scales, coarsest first. Each layer: masked
cross-attention (a query only sees the pixels its previous mask prediction marks as
foreground at that scale), self-attention, FFN, all post-norm. Class logits and mask
logits (dot products of a 3-layer MLP embedding with the 1/4 mask features) are
predicted before the first layer and after every layer.
"""
from typing import Dict, List, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import nn

from ..transformer_decoder.layers import AttentionLayer, FFNLayer
from ..transformer_decoder.position_encoding import PositionEmbeddingSine

__all__ = [
    "MLP",
    "MaskedAttentionDecoder",
    "MaskedCrossAttentionLayer",
    "MaskedDecoderLayer",
    "attention_mask_from_predictions",
]


def attention_mask_from_predictions(mask_logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Masked-attention mask from mask logits.

    Args:
        mask_logits: (B, Q, h, w); size: (H, W) of the scale attended to.
    Returns:
        bool (B, Q, H*W), True where the query may NOT attend (resized prediction has
        sigmoid < 0.5). A query whose whole row would be masked is unmasked entirely:
        a softmax over nothing is NaN, and early (untrained) masks are often empty.
    """
    resized = F.interpolate(mask_logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    masked = (resized.sigmoid() < 0.5).flatten(2)
    masked = masked & ~masked.all(dim=-1, keepdim=True)
    return masked.detach()


class MaskedCrossAttentionLayer(AttentionLayer):
    """Cross-attention of queries to pixels with an attention mask; residual, post-norm.

    ``forward(x, memory, pos, memory_pos, attn_mask)``: x, pos (B, Q, d); memory,
    memory_pos (B, L, d); attn_mask bool (B, Q, L), True = not attended, or None.
    Returns (B, Q, d).
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__(d_model, nhead, dropout, pre_norm=False)

    def forward(self, x, memory, pos, memory_pos, attn_mask=None):
        attn = self.attn
        batch, len_q, dim = x.shape
        weights, biases = attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)

        def heads(t, i):  # (B, L, d) -> (B, heads, L, head_dim)
            y = F.linear(t, weights[i], biases[i])
            return y.view(batch, t.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)

        q, k, v = heads(x + pos, 0), heads(memory + memory_pos, 1), heads(memory, 2)
        # SDPA's boolean mask marks the positions that DO take part; one mask for all heads.
        allowed = None if attn_mask is None else ~attn_mask[:, None]
        dropout = attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        out = attn.out_proj(out.transpose(1, 2).reshape(batch, len_q, dim))
        return self.norm(x + self.dropout(out))


class MaskedDecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, on (B, Q, d) queries."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.cross_attn = MaskedCrossAttentionLayer(d_model, nhead, dropout)
        self.self_attn = AttentionLayer(d_model, nhead, dropout, pre_norm=False)
        self.ffn = FFNLayer(d_model, dim_feedforward, dropout, pre_norm=False)

    def forward(self, queries, query_pos, memory, memory_pos, attn_mask):
        """queries, query_pos (B, Q, d); memory, memory_pos (B, L, d); attn_mask (B, Q, L)."""
        queries = self.cross_attn(queries, memory, query_pos, memory_pos, attn_mask)
        queries = self.self_attn(queries, None, query_pos)
        return self.ffn(queries)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them; (..., in) -> (..., out)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's multi-scale masked-attention decoder.

    ``forward(multi_scale, mask_features)``:
        multi_scale: list of (B, C, h_l, w_l) features, coarsest first (at least
            ``num_feature_levels`` of them; the first ones are used);
        mask_features: (B, mask_dim, H/4, W/4).
    Returns {"pred_logits": (B, N, K+1), "pred_masks": (B, N, H/4, W/4) logits,
    "aux_outputs": the ``dec_layers`` earlier predictions as dicts with the same keys
    (empty without deep supervision)}.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        mask_dim: int = 256,
        num_feature_levels: int = 3,
        dropout: float = 0.0,
        deep_supervision: bool = True,
    ):
        super().__init__()
        if hidden_dim % nheads:
            raise ValueError(f"MODEL.MASK2FORMER.HIDDEN_DIM ({hidden_dim}) must be divisible by "
                             f"NHEADS ({nheads})")
        self.num_classes = num_classes
        self.num_feature_levels = num_feature_levels
        self.deep_supervision = deep_supervision
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels == hidden_dim:
                self.input_proj.append(nn.Identity())
            else:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            MaskedDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        m2f = cfg.MODEL.MASK2FORMER
        return {
            "in_channels": in_channels,
            "num_classes": m2f.NUM_CLASSES,
            "hidden_dim": m2f.HIDDEN_DIM,
            "num_queries": m2f.NUM_QUERIES,
            "nheads": m2f.NHEADS,
            "dim_feedforward": m2f.DIM_FEEDFORWARD,
            "dec_layers": m2f.DEC_LAYERS,
            "mask_dim": m2f.MASK_DIM,
            "num_feature_levels": len(m2f.DEFORMABLE_IN_FEATURES),
            "dropout": m2f.DROPOUT,
            "deep_supervision": m2f.DEEP_SUPERVISION,
        }

    def predict(self, queries: torch.Tensor, mask_features: torch.Tensor, attn_size=None):
        """Heads on (B, Q, d) queries: class logits (B, Q, K+1), mask logits
        (B, Q, H/4, W/4) and the next layer's attention mask (B, Q, h*w) at attn_size
        (None when attn_size is None)."""
        x = self.decoder_norm(queries)
        logits = self.class_embed(x)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        attn_mask = None if attn_size is None else attention_mask_from_predictions(masks, attn_size)
        return logits, masks, attn_mask

    def forward(self, multi_scale: List[torch.Tensor], mask_features: torch.Tensor) -> Dict:
        if len(multi_scale) < self.num_feature_levels:
            raise ValueError(f"Mask2Former decoder needs {self.num_feature_levels} feature levels, "
                             f"got {len(multi_scale)}")
        memories, memory_pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            x = multi_scale[i]
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            memory_pos.append(self.pe_layer(x).flatten(2).transpose(1, 2))
            memories.append(self.input_proj[i](x).flatten(2).transpose(1, 2) + self.level_embed.weight[i])
        batch = mask_features.shape[0]
        queries = self.query_feat.weight[None].expand(batch, -1, -1)
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)

        logits, masks, attn_mask = self.predict(queries, mask_features, sizes[0])
        predictions = [(logits, masks)]
        for i, layer in enumerate(self.layers):
            level = i % self.num_feature_levels
            queries = layer(queries, query_pos, memories[level], memory_pos[level], attn_mask)
            last = i == len(self.layers) - 1
            logits, masks, attn_mask = self.predict(
                queries, mask_features, None if last else sizes[(i + 1) % self.num_feature_levels]
            )
            predictions.append((logits, masks))
        aux = predictions[:-1] if self.deep_supervision else []
        return {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in aux],
        }
