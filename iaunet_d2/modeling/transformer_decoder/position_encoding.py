"""Two-dimensional sinusoidal positional embedding of pixel features."""
import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine embedding of (y, x) pixel positions, as in DETR-style decoders.

    Positions 1..H and 1..W are (optionally) normalized to (0, scale]; each coordinate
    gets ``num_pos_feats`` channels, frequency pairs ``temperature ** (2k / num_pos_feats)``
    with sin on even and cos on odd channels. Output channels: y block, then x block.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def _embed_1d(self, length: int, device, dtype) -> torch.Tensor:
        """(length,) positions -> (length, num_pos_feats) interleaved sin/cos."""
        pos = torch.arange(1, length + 1, device=device, dtype=torch.float32)
        if self.normalize:
            pos = pos / (length + 1e-6) * self.scale
        k = torch.arange(self.num_pos_feats, device=device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / self.num_pos_feats)
        angles = pos[:, None] / dim_t
        emb = torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)
        return emb.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C, H, W); only its shape, device and dtype are used.
        Returns:
            (B, 2 * num_pos_feats, H, W) positional embedding.
        """
        b, _, h, w = x.shape
        emb_y = self._embed_1d(h, x.device, x.dtype)  # (H, F)
        emb_x = self._embed_1d(w, x.device, x.dtype)  # (W, F)
        f = self.num_pos_feats
        pos = torch.cat(
            [emb_y[:, None, :].expand(h, w, f), emb_x[None, :, :].expand(h, w, f)], dim=-1
        )
        return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)
