"""Multi-scale deformable attention in plain PyTorch (``F.grid_sample``), CPU and CUDA.

Every query owns a reference point (normalized (x, y) in [0, 1]^2, shared by all
levels). Each head predicts, per level, ``num_points`` offsets from that point and one
weight per sampled location (softmax over levels x points); the output of a head is the
weighted sum of its value features bilinearly read at those locations (zero outside
the map, pixel centres at (i + 0.5) / size as with ``align_corners=False``).
"""
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiScaleDeformableAttention", "deformable_sample", "reference_points"]


def deformable_sample(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear reads of ``value`` at the sampling locations.

    Args:
        value: (B, S, M, D) per-head values of all levels, flattened level by level in
            the order of ``spatial_shapes`` (S = sum of H_l * W_l).
        spatial_shapes: L pairs (H_l, W_l).
        sampling_locations: (B, Q, M, L, P, 2) normalized (x, y) in [0, 1].
        attention_weights: (B, Q, M, L, P).
    Returns:
        (B, Q, M * D), heads concatenated.
    """
    batch, _, heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    values = value.split([int(h) * int(w) for h, w in spatial_shapes], dim=1)
    # grid_sample wants coordinates in [-1, 1]; one batch entry per (image, head).
    grids = (2.0 * sampling_locations - 1.0).transpose(1, 2).flatten(0, 1)  # (B*M, Q, L, P, 2)
    weights = attention_weights.transpose(1, 2).flatten(0, 1)[:, None]  # (B*M, 1, Q, L, P)
    out = None
    for level, (h, w) in enumerate(spatial_shapes):
        # (B, H*W, M, D) -> (B*M, D, H, W)
        level_value = values[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, int(h), int(w))
        sampled = F.grid_sample(
            level_value, grids[:, :, level].to(level_value.dtype), mode="bilinear",
            padding_mode="zeros", align_corners=False,
        )  # (B*M, D, Q, P)
        # Summed level by level rather than stacked: training keeps one copy of the
        # samples for backward instead of two.
        part = (sampled * weights[:, :, :, level].to(sampled.dtype)).sum(-1)  # (B*M, D, Q)
        out = part if out is None else out + part
    return out.view(batch, heads * head_dim, num_queries).transpose(1, 2)


def reference_points(spatial_shapes: Sequence[Tuple[int, int]], device=None) -> torch.Tensor:
    """Normalized pixel centres of every level, flattened in level order.

    Returns:
        (S, 2) float32 (x, y) in (0, 1): ((j + 0.5) / W_l, (i + 0.5) / H_l).
    """
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(int(h), device=device, dtype=torch.float32) + 0.5) / int(h)
        xs = (torch.arange(int(w), device=device, dtype=torch.float32) + 0.5) / int(w)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1))
    return torch.cat(points, dim=0)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L feature levels (Deformable-DETR style).

    ``forward(query, reference, value, spatial_shapes)``:
        query: (B, Q, C) (positional embedding already added);
        reference: (B, Q, 2) or (Q, 2) normalized (x, y) points;
        value: (B, S, C) features of all levels flattened in ``spatial_shapes`` order.
    Returns (B, Q, C).
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"deformable attention: dim {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self):
        # Offsets start as a fixed pattern: head h looks along direction 2*pi*h/M, point
        # p at distance p+1 pixels, so the heads cover the neighbourhood from step 0.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float32)[:, None]
        bias = directions[:, None, None, :] * scale  # (M, 1, P, 2)
        bias = bias.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        # Uniform weights over the sampled points at the start.
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: List[Tuple[int, int]],
    ) -> torch.Tensor:
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != levels:
            raise ValueError(f"deformable attention built for {levels} levels got {len(spatial_shapes)}")
        v = self.value_proj(value).view(batch, value.shape[1], heads, self.dim // heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        # Offsets are in pixels of each level: divide by (W_l, H_l) to normalize.
        normalizer = torch.tensor(
            [[float(w), float(h)] for h, w in spatial_shapes], device=query.device, dtype=offsets.dtype
        )
        if reference.dim() == 2:
            reference = reference[None].expand(batch, -1, -1)
        locations = reference[:, :, None, None, None, :] + offsets / normalizer[:, None, :]
        out = deformable_sample(v, spatial_shapes, locations, weights)
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
                f"num_points={self.num_points}")
