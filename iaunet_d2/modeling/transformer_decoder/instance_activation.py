"""Instance activation: N activation maps and N queries from a level's instance
features; IAUNet+'s per-slot anchor prior and the maps' centroids.

The Instance Activation (IA) layer turns instance features into N maps (softmax over
all pixels) and N queries (soft pooling of the features with each map).

Locations (anchors, centroids, the dynamic mask head's offsets) share one isotropic
frame: input pixels divided by a reference length (``INPUT.IMAGE_SIZE``), measured from
the top-left corner of the padded input. A map of stride s has its pixel i's centre at
``(i + 0.5) * step`` with ``step = s / reference``, on both axes, whatever the image's
aspect ratio.
"""
import math
from typing import Optional, Tuple

import torch
from torch import nn

__all__ = [
    "InstanceActivation",
    "anchor_location_bias",
    "halton_points",
    "map_centroids",
    "pixel_centre_coords",
    "pixel_centres",
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
        # Focal-style prior bias, as the authors initialise it. A per-map constant
        # cancels in the softmax over H*W, so it changes neither A nor the gradients.
        nn.init.constant_(self.conv.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(
        self, x: torch.Tensor, location_bias: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: instance features (B, C, H, W).
            location_bias: optional (N, H, W) logits added to every image's maps before
                the softmax (see ``anchor_location_bias``).
        Returns:
            queries (B, N, C) and activation maps (B, N, H, W), each map summing to 1.
        """
        b, c, h, w = x.shape
        logits = self.conv(x)
        if location_bias is not None:
            logits = logits + location_bias.to(logits.dtype)
        maps = logits.flatten(2).softmax(dim=-1)  # (B, N, HW)
        queries = torch.bmm(maps, x.flatten(2).transpose(1, 2))  # (B, N, C)
        return queries, maps.view(b, -1, h, w)


def halton_points(n: int) -> torch.Tensor:
    """The first ``n`` points of the 2-D Halton sequence (bases 2 and 3), skipping the
    origin: (n, 2) (x, y) in (0, 1), spread evenly over the square for any n."""
    def radical_inverse(i: int, base: int) -> float:
        value, scale = 0.0, 1.0 / base
        while i:
            value += (i % base) * scale
            i //= base
            scale /= base
        return value

    return torch.tensor(
        [[radical_inverse(i, 2), radical_inverse(i, 3)] for i in range(1, n + 1)],
        dtype=torch.float32,
    )


def pixel_centre_coords(n: int, step: float, like: torch.Tensor) -> torch.Tensor:
    """(n,) centres of n pixels along one axis, ``(i + 0.5) * step``, on ``like``'s
    device and dtype: the coordinate frame of every location helper here."""
    return (torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) * step


def pixel_centres(size: Tuple[int, int], step: float, like: torch.Tensor) -> torch.Tensor:
    """(2, H*W) (x, y) of the pixel centres of a ``size`` grid, row-major."""
    h, w = size
    ys = pixel_centre_coords(h, step, like)
    xs = pixel_centre_coords(w, step, like)
    # Broadcasting, not shape-derived repeats: traceable on any device.
    return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)]).reshape(2, h * w)


def anchor_location_bias(anchors: torch.Tensor, size: Tuple[int, int], step: float,
                         sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian log-prior of each anchor on a ``size`` grid of pixel size ``step``.

    ``-|p - a|^2 / (2 sigma^2)`` with pixel centres p and anchors a (x, y) in the
    isotropic frame. anchors: (N, 2) -> (N, size[0], size[1]).
    """
    ys = pixel_centre_coords(size[0], step, anchors)
    xs = pixel_centre_coords(size[1], step, anchors)
    d2 = (xs[None, None, :] - anchors[:, 0, None, None]) ** 2 + (
        ys[None, :, None] - anchors[:, 1, None, None]
    ) ** 2
    return -d2 / (2 * sigma ** 2)


def map_centroids(maps: torch.Tensor, step: float) -> torch.Tensor:
    """Centroid of each map: (B, N, h, w) maps summing to 1, of pixel size ``step`` ->
    (B, N, 2) (x, y) in the isotropic frame."""
    h, w = maps.shape[-2:]
    cy = (maps.sum(-1) * pixel_centre_coords(h, step, maps)).sum(-1)
    cx = (maps.sum(-2) * pixel_centre_coords(w, step, maps)).sum(-1)
    return torch.stack([cx, cy], dim=-1)
