"""Instance activation and the parallel dual-path transformer decoder of IAUNet.

At each pixel-decoder level (coarse to fine):

1. the Instance Activation (IA) layer turns the level's instance features into N
   activation maps (softmax over all pixels) and N queries (soft pooling of the
   instance features with each map);
2. one ``DualPathDecoderLayer`` refines the level's instance and mask pixel features
   against the queries ([new N ; previous-level N "support"] = 2N from level 1 on) and
   then the queries against the refined instance pixels; the first N rows are kept;
3. the refined pixel features go back to the pixel decoder, which upsamples them into
   the next level.

Class logits and mask kernels come from the final N queries; masks are the dot product
of the kernels with the pixel decoder's 1/4-resolution mask embeddings.
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ..pixel_decoder import LevelFeatures
from .build import IAUNET_TRANSFORMER_DECODER_REGISTRY
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "AttentionLayer",
    "DualPathDecoderLayer",
    "FFNLayer",
    "IAUNetTransformerDecoder",
    "InstanceActivation",
]


class InstanceActivation(nn.Module):
    """Activation maps and guided queries from instance features.

    A 3x3 conv gives N logit maps; a softmax over all H*W positions of each map gives
    the activation maps A, and the queries are A @ X_i (every map soft-pools the whole
    feature map; no top-k selection).
    """

    def __init__(self, in_channels: int, num_queries: int, prior_prob: float = 0.01):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_queries, kernel_size=3, padding=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        # Focal-style prior bias. Note: a per-map constant cancels in the softmax over
        # H*W, so this bias does not change A and its gradient is (numerically) zero.
        nn.init.constant_(self.conv.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: instance features (B, C, H, W).
        Returns:
            queries (B, N, C) and activation maps (B, N, H, W), each map summing to 1.
        """
        b, c, h, w = x.shape
        maps = self.conv(x).flatten(2).softmax(dim=-1)  # (B, N, HW)
        queries = torch.bmm(maps, x.flatten(2).transpose(1, 2))  # (B, N, C)
        return queries, maps.view(b, -1, h, w)


def _with_pos(x: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return x if pos is None else x + pos


class AttentionLayer(nn.Module):
    """Multi-head (cross- or self-) attention with residual and LayerNorm.

    ``forward(x, memory=None)``: x (B, Lq, d) attends to memory (B, Lk, d), or to itself
    when memory is None; positional embeddings are added to queries and keys only.
    Post-norm by default, pre-norm with ``pre_norm=True``. Output (B, Lq, d).
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        nn.init.xavier_uniform_(self.attn.in_proj_weight)
        nn.init.xavier_uniform_(self.attn.out_proj.weight)

    def forward(
        self,
        x: torch.Tensor,
        memory: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        memory_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        q = self.norm(x) if self.pre_norm else x
        if memory is None:
            memory, memory_pos = q, pos
        out = self._attend(_with_pos(q, pos), _with_pos(memory, memory_pos), memory)
        if self.pre_norm:
            return x + self.dropout(out)
        return self.norm(x + self.dropout(out))

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``self.attn(query, key, value)[0]`` computed from its weights: the same math,
        but the heads stay strided views into the projections, which saves the copies
        nn.MultiheadAttention makes (about 20 ms per 128 x 128 pixel map on 2 CPU cores).
        query (B, Lq, d), key and value (B, Lk, d) -> (B, Lq, d)."""
        attn = self.attn
        batch, len_q, dim = query.shape

        def project_to_heads(x, weight, bias):  # (B, L, d) -> (B, heads, L, head_dim) view
            y = F.linear(x, weight, bias)
            return y.view(batch, x.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)

        q, k, v = (
            project_to_heads(x, w, b)
            for x, w, b in zip((query, key, value), attn.in_proj_weight.chunk(3),
                               attn.in_proj_bias.chunk(3))
        )
        dropout = attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return attn.out_proj(out.transpose(1, 2).reshape(batch, len_q, dim))


class FFNLayer(nn.Module):
    """Linear -> ReLU -> Linear with residual and LayerNorm; (B, L, d) -> (B, L, d)."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x) if self.pre_norm else x
        # In place without autograd: saves writing a fresh (L, dim_feedforward) tensor.
        y = self.linear2(self.dropout(F.relu(self.linear1(y), inplace=not torch.is_grad_enabled())))
        if self.pre_norm:
            return x + self.dropout(y)
        return self.norm(x + self.dropout(y))


# Pixels per block of the blocked pixel path (see ``_pixel_path``). Large on purpose:
# measured on a shared 2-core CPU, small blocks (1024-4096) were slower than one pass
# because every extra op can stall on a descheduled OpenMP thread; the blocks mainly cap
# the FFN's (L, dim_feedforward) activation at 128 MiB for large images (a 512 px input,
# 16384 pixels at 1/4 resolution, runs in one block).
PIXEL_CHUNK = 16384


def _pixel_path(
    attn: AttentionLayer,
    ffn: FFNLayer,
    x: torch.Tensor,
    queries: torch.Tensor,
    pixel_pos: torch.Tensor,
    query_pos: torch.Tensor,
) -> torch.Tensor:
    """``ffn(attn(x, queries, pixel_pos, query_pos))`` for pixel tokens x (B, L, d).

    Every step is independent per pixel (the pixels attend to the queries, never to each
    other), so without autograd the pixels are processed in blocks of ``PIXEL_CHUNK``,
    which bounds the (block, dim_feedforward) FFN activation for large inputs. Results
    equal the unblocked path up to float rounding. With autograd (training) the
    plain path runs.
    """
    length = x.shape[1]
    if torch.is_grad_enabled() or length <= PIXEL_CHUNK:
        return ffn(attn(x, queries, pixel_pos, query_pos))
    out = torch.empty_like(x)
    for start in range(0, length, PIXEL_CHUNK):
        end = min(start + PIXEL_CHUNK, length)
        out[:, start:end] = ffn(attn(x[:, start:end], queries, pixel_pos[:, start:end], query_pos))
    return out


class DualPathDecoderLayer(nn.Module):
    """One parallel dual-path decoder layer.

    Order: instance pixels attend to the queries (+FFN); mask pixels attend to the same
    queries (+FFN); the queries attend to the *updated* instance pixels, then to each
    other (self-attention), then FFN.
    """

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0, pre_norm: bool = False
    ):
        super().__init__()
        args = (d_model, nhead, dropout, pre_norm)
        ffn_args = (d_model, dim_feedforward, dropout, pre_norm)
        self.inst_cross_attn = AttentionLayer(*args)
        self.inst_ffn = FFNLayer(*ffn_args)
        self.mask_cross_attn = AttentionLayer(*args)
        self.mask_ffn = FFNLayer(*ffn_args)
        self.query_cross_attn = AttentionLayer(*args)
        self.query_self_attn = AttentionLayer(*args)
        self.query_ffn = FFNLayer(*ffn_args)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        inst: torch.Tensor,
        mask: torch.Tensor,
        pixel_pos: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            queries: (B, Q, d); query_pos: (B, Q, d) learned positional embeddings.
            inst, mask: flattened instance / mask pixel features (B, L, d).
            pixel_pos: (B, L, d) sine positional embedding of the pixels.
        Returns:
            updated (queries (B, Q, d), inst (B, L, d), mask (B, L, d)).
        """
        inst = _pixel_path(self.inst_cross_attn, self.inst_ffn, inst, queries, pixel_pos, query_pos)
        mask = _pixel_path(self.mask_cross_attn, self.mask_ffn, mask, queries, pixel_pos, query_pos)
        queries = self.query_cross_attn(queries, inst, query_pos, pixel_pos)
        queries = self.query_self_attn(queries, None, query_pos)
        queries = self.query_ffn(queries)
        return queries, inst, mask


@IAUNET_TRANSFORMER_DECODER_REGISTRY.register()
class IAUNetTransformerDecoder(nn.Module):
    """Drives the pixel decoder level by level and refines N instance queries.

    ``forward(features, pixel_decoder)`` returns a dict:

    * ``"pred_logits"``: (B, N, num_classes + 1) class logits (last = no object);
    * ``"pred_masks"``: (B, N, H/4, W/4) mask logits (at the finest level's size);
    * ``"activation_maps"``: list over levels (coarse to fine) of (B, N, h_l, w_l)
      activation maps, each map summing to 1 over its pixels;
    * ``"aux_outputs"``: with deep supervision, one ``{"pred_logits", "pred_masks"}``
      per level except the last (masks upsampled to the finest level's size);
      otherwise an empty list.
    """

    @configurable
    def __init__(
        self,
        *,
        num_levels: int,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dropout: float,
        pre_norm: bool,
        mask_dim: int,
        ia_prior_prob: float,
        deep_supervision: bool,
    ):
        """
        Args:
            num_levels: pixel-decoder levels, one decoder layer each.
            num_classes: foreground classes (logits get one more for "no object").
            hidden_dim: query and pixel feature width (= the pixel decoder's conv_dim).
            num_queries: N, queries (and activation maps) per level.
            nheads, dim_feedforward, dropout, pre_norm: attention/FFN settings.
            mask_dim: width of the mask kernels (= the pixel decoder's mask_dim).
            ia_prior_prob: prior probability for the IA conv's bias initialisation.
            deep_supervision: also predict after every level ("aux_outputs").
        """
        super().__init__()
        self.num_levels = num_levels
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.mask_dim = mask_dim
        self.deep_supervision = deep_supervision

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.ia_layers = nn.ModuleList(
            InstanceActivation(hidden_dim, num_queries, ia_prior_prob) for _ in range(num_levels)
        )
        self.layers = nn.ModuleList(
            DualPathDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm)
            for _ in range(num_levels)
        )
        # Learned positional embeddings of the new IA queries and of the support queries.
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.support_pos = nn.Embedding(num_queries, hidden_dim)

        self.head_norm = nn.LayerNorm(hidden_dim)
        self.head_fc = nn.Linear(hidden_dim, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.kernel_embed = nn.Linear(hidden_dim, mask_dim)

    @classmethod
    def from_config(cls, cfg):
        ia = cfg.MODEL.IAUNET
        if ia.HIDDEN_DIM != ia.CONV_DIM:
            raise ValueError(
                f"MODEL.IAUNET.HIDDEN_DIM ({ia.HIDDEN_DIM}) must equal CONV_DIM ({ia.CONV_DIM}): "
                "the queries are pooled from, and attend to, the pixel decoder's features"
            )
        return {
            "num_levels": len(ia.IN_FEATURES),
            "num_classes": ia.NUM_CLASSES,
            "hidden_dim": ia.HIDDEN_DIM,
            "num_queries": ia.NUM_QUERIES,
            "nheads": ia.NHEADS,
            "dim_feedforward": ia.DIM_FEEDFORWARD,
            "dropout": ia.DROPOUT,
            "pre_norm": ia.PRE_NORM,
            "mask_dim": ia.MASK_DIM,
            "ia_prior_prob": ia.IA_PRIOR_PROB,
            "deep_supervision": ia.DEEP_SUPERVISION,
        }

    def predict(
        self,
        queries: torch.Tensor,
        mask_features: torch.Tensor,
        out_size: Optional[Tuple[int, int]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Class logits and mask logits from queries.

        Args:
            queries: (B, N, hidden_dim).
            mask_features: (B, mask_dim, h, w) per-pixel mask embeddings.
            out_size: if given and different from (h, w), masks are bilinearly resized.
        Returns:
            {"pred_logits": (B, N, C+1), "pred_masks": (B, N, h', w')}.
        """
        h = F.relu(self.head_fc(self.head_norm(queries)))
        logits = self.class_embed(h)
        kernels = self.kernel_embed(h)
        masks = torch.einsum("bnd,bdhw->bnhw", kernels, mask_features)
        if out_size is not None and tuple(masks.shape[-2:]) != tuple(out_size):
            masks = F.interpolate(masks, size=out_size, mode="bilinear", align_corners=False)
        return {"pred_logits": logits, "pred_masks": masks}

    def forward(self, features: Dict[str, torch.Tensor], pixel_decoder) -> Dict:
        """
        Args:
            features: backbone outputs, name -> (B, C, H/stride, W/stride).
            pixel_decoder: an ``IAUNetPixelDecoder`` (or any module with the same
                ``num_levels`` / ``forward_features`` / ``forward_level`` /
                ``mask_features`` interface).
        Returns:
            the output dict described in the class docstring.
        """
        if pixel_decoder.num_levels != self.num_levels:
            raise ValueError(
                f"pixel decoder has {pixel_decoder.num_levels} levels, transformer decoder "
                f"{self.num_levels}"
            )
        skips = pixel_decoder.forward_features(features)
        final_size = tuple(skips[-1].shape[-2:])
        n = self.num_queries

        prev: Optional[LevelFeatures] = None
        queries: Optional[torch.Tensor] = None
        activation_maps: List[torch.Tensor] = []
        aux_outputs: List[Dict[str, torch.Tensor]] = []
        for level, skip in enumerate(skips):
            feats = pixel_decoder.forward_level(level, skip, prev)
            b, c, h, w = feats.inst.shape
            new_queries, maps = self.ia_layers[level](feats.inst)
            activation_maps.append(maps)

            query_pos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
            if queries is None:
                all_queries = new_queries
            else:
                all_queries = torch.cat([new_queries, queries], dim=1)
                support_pos = self.support_pos.weight.unsqueeze(0).expand(b, -1, -1)
                query_pos = torch.cat([query_pos, support_pos], dim=1)

            pixel_pos = self.pe_layer(feats.inst).flatten(2).transpose(1, 2)  # (B, HW, d)
            all_queries, inst, mask = self.layers[level](
                all_queries,
                query_pos,
                feats.inst.flatten(2).transpose(1, 2),
                feats.mask.flatten(2).transpose(1, 2),
                pixel_pos,
            )
            queries = all_queries[:, :n]
            # (B, HW, d) -> channels-last (B, d, H, W) views. transpose().reshape() gives a
            # batch stride that CPU kernels do not recognise as channels-last for B = 1,
            # which made the next level's bilinear upsampling ~25x slower.
            inst = inst.reshape(b, h, w, c).permute(0, 3, 1, 2)
            mask = mask.reshape(b, h, w, c).permute(0, 3, 1, 2)
            prev = LevelFeatures(feats.main, mask, inst)

            if self.deep_supervision and level < self.num_levels - 1:
                aux_outputs.append(
                    self.predict(queries, pixel_decoder.mask_features(mask), final_size)
                )

        out = self.predict(queries, pixel_decoder.mask_features(prev.mask))
        out["activation_maps"] = activation_maps
        out["aux_outputs"] = aux_outputs
        return out
