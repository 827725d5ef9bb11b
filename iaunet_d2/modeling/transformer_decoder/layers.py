"""The attention building blocks of IAUNet's transformer decoder.

* ``AttentionLayer`` / ``FFNLayer``: residual multi-head attention and feed-forward
  steps with LayerNorm (post-norm by default);
* ``DualPathDecoderLayer``: one parallel dual-path layer (instance and mask pixels attend
  to the queries, then the queries to the instance pixels and to each other);
* ``QueryDecoderLayer``: a query-only layer (cross-, self-attention, FFN).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionLayer", "DualPathDecoderLayer", "FFNLayer"]


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

