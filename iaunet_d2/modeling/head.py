"""IAUNet's head: the pixel decoder and the transformer decoder that drives it."""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .pixel_decoder import build_pixel_decoder
from .transformer_decoder import build_transformer_decoder

__all__ = ["IAUNetHead"]


class IAUNetHead(nn.Module):
    """Backbone features -> IAUNet's predictions.

    The pixel decoder is built from the backbone's output shapes, the transformer
    decoder from the pixel decoder's widths: its queries and attention run at the
    pixel decoder's ``conv_dim`` (they are pooled from and attend to its features), its
    mask kernels have the pixel decoder's ``mask_dim`` and its location frame the pixel
    decoder's level strides.
    """

    @configurable
    def __init__(self, *, pixel_decoder: nn.Module, transformer_decoder: nn.Module):
        """
        Args:
            pixel_decoder: e.g. an ``IAUNetPixelDecoder`` (``num_levels``,
                ``forward_features``, ``forward_level``, ``mask_features``).
            transformer_decoder: e.g. an ``IAUNetTransformerDecoder``, called as
                ``transformer_decoder(features, pixel_decoder)``.
        """
        super().__init__()
        # Checked once here: the transformer decoder has one layer per pixel-decoder level.
        if pixel_decoder.num_levels != transformer_decoder.num_levels:
            raise ValueError(
                f"pixel decoder has {pixel_decoder.num_levels} levels, transformer decoder "
                f"{transformer_decoder.num_levels}"
            )
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        pixel_decoder = build_pixel_decoder(cfg, input_shape)
        return {
            "pixel_decoder": pixel_decoder,
            "transformer_decoder": build_transformer_decoder(
                cfg, in_channels=pixel_decoder.conv_dim, mask_dim=pixel_decoder.mask_dim,
                level_strides=pixel_decoder.in_strides,
            ),
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict:
        """
        Args:
            features: backbone outputs, name -> (B, C, H/stride, W/stride), H and W
                being the padded input size.
        Returns:
            the transformer decoder's dict: "pred_logits" (B, N, num_classes + 1),
            "pred_masks" (B, N, H/4, W/4) mask logits, "activation_maps" (a list over
            levels, coarse to fine, of (B, N, h_l, w_l)) and "aux_outputs" (see
            ``IAUNetTransformerDecoder``).
        """
        return self.transformer_decoder(features, self.pixel_decoder)
