"""Per-query mask heads: how a query's parameters turn the shared mask features into
its mask logits.

The paper's head is linear: a kernel per query, dotted with the mask features. IAUNet+'s
dynamic head (``MODEL.IAUNET.PLUS.DYNAMIC_MASK_HEAD``) is a small per-query MLP over a few
channels of the mask features plus each pixel's position relative to the query's
centre, whose weights the query predicts: the mask can then depend on where a pixel is
with respect to the cell and on the features at once (a boundary counts only where it
bounds this cell), which a single dot product cannot express.
"""
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .instance_activation import pixel_centres

__all__ = ["DynamicMaskHead"]


class DynamicMaskHead(nn.Module):
    """Mask logits from a per-query MLP whose weights are predicted from the query.

    The MLP sees, at every pixel, ``channels`` channels projected from the mask
    features and the pixel's (dx, dy) from the query's centre in the isotropic location
    frame (``instance_activation``), times ``coord_scale`` (10: offsets in tenths of the
    reference size, of order 1 for a cell); ``num_layers`` layers of width ``channels`` with
    ReLU between them, one output channel. With ``upsample`` > 1 the projected
    channels are upsampled bilinearly first and the MLP runs on the finer grid, so that
    its non-linearity places mask borders between the mask features' pixels.
    """

    def __init__(self, hidden_dim: int, mask_dim: int, channels: int = 8, num_layers: int = 3,
                 coord_scale: float = 10.0, upsample: int = 1):
        super().__init__()
        if channels < 1 or num_layers < 1:
            raise ValueError(
                f"the dynamic mask head needs channels >= 1 and layers >= 1, got "
                f"{channels} channels and {num_layers} layers"
            )
        if upsample < 1:
            raise ValueError(f"the dynamic mask head's upsampling must be >= 1, got {upsample}")
        self.upsample = upsample
        self.channels = channels
        self.coord_scale = coord_scale
        self.project = nn.Conv2d(mask_dim, channels, kernel_size=1)
        # (in, out) of each layer: the first reads the features and the 2 offsets.
        widths = [channels + 2] + [channels] * (num_layers - 1) + [1]
        self.shapes: List[Tuple[int, int]] = list(zip(widths[:-1], widths[1:]))
        self.num_params = sum(i * o + o for i, o in self.shapes)
        self.controller = nn.Linear(hidden_dim, self.num_params)
        # Generated weights of about He scale for every layer (the controller's input,
        # a ReLU of a layer norm, has entries of order 1), zero generated biases.
        nn.init.normal_(self.controller.weight, std=1.0 / math.sqrt(hidden_dim * (channels + 2)))
        nn.init.zeros_(self.controller.bias)

    def forward(self, queries: torch.Tensor, mask_features: torch.Tensor,
                centres: torch.Tensor, step: float) -> torch.Tensor:
        """
        Args:
            queries: (B, N, hidden_dim) the head's input per query.
            mask_features: (B, mask_dim, H, W).
            centres: (B, N, 2) (x, y) in the isotropic location frame.
            step: the pixel size of ``mask_features`` in that frame.
        Returns:
            (B, N, H * upsample, W * upsample) mask logits.
        """
        b, n = queries.shape[:2]
        params = self.controller(queries)  # (B, N, num_params)
        feats = self.project(mask_features)
        if self.upsample > 1:
            feats = F.interpolate(feats, scale_factor=self.upsample, mode="bilinear",
                                  align_corners=False)
        h, w = feats.shape[-2:]
        # The first layer reads [features; (pixel - centre) * scale]. Its offset part is
        # linear, W_r (p - c) = W_r p - W_r c, so it runs on the shared pixel
        # coordinates with the centre moved into the bias: no per-query copy of the
        # inputs, which at 1/2 resolution and 100 queries would be the largest tensor.
        grid = pixel_centres((h, w), step / self.upsample, feats) * self.coord_scale  # (2, HW)
        x = torch.cat([feats.flatten(2), grid.expand(b, -1, -1)], dim=1)  # (B, C + 2, HW)
        start = 0
        for i, (fan_in, fan_out) in enumerate(self.shapes):
            weight = params[..., start:start + fan_in * fan_out].view(b, n, fan_out, fan_in)
            start += fan_in * fan_out
            bias = params[..., start:start + fan_out]
            start += fan_out
            if i == 0:
                centre = centres.to(weight.dtype) * self.coord_scale  # (B, N, 2)
                bias = bias - (weight[..., -2:] @ centre[..., None])[..., 0]
                # All queries of an image at once: (B, N*O, I) @ (B, I, HW).
                x = torch.bmm(weight.reshape(b, n * fan_out, fan_in), x)
                x = x.view(b * n, fan_out, -1)
            else:
                x = torch.bmm(weight.reshape(b * n, fan_out, fan_in), x)
            # In place: the head's largest tensors (bmm's backward needs not its output).
            x += bias.reshape(b * n, fan_out, 1)
            if i < len(self.shapes) - 1:
                x = torch.relu_(x)
        return x.view(b, n, h, w)
