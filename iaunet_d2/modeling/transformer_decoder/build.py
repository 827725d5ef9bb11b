"""Registry and builder of IAUNet transformer decoders."""
from detectron2.utils.registry import Registry

__all__ = ["IAUNET_TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]

IAUNET_TRANSFORMER_DECODER_REGISTRY = Registry("IAUNET_TRANSFORMER_DECODER")
IAUNET_TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Transformer decoders of IAUNet. A registered class is called as
``cls(cfg, in_channels, mask_dim, level_strides)`` (with ``@configurable``):
``in_channels`` is the width of the pixel decoder's features (its ``conv_dim``),
``mask_dim`` that of its mask embeddings, ``level_strides`` the input pixels per feature
pixel of its levels, coarse to fine. Its forward takes ``(features, pixel_decoder)``: the backbone features and
the pixel decoder it drives level by level.
"""


def build_transformer_decoder(cfg, in_channels: int, mask_dim: int, level_strides):
    """Build the transformer decoder named by ``cfg.MODEL.IAUNET.TRANSFORMER_DECODER_NAME``.

    Args:
        in_channels: channels of the pixel decoder's per-level features (``conv_dim``).
        mask_dim: channels of the pixel decoder's mask embeddings.
        level_strides: strides of the pixel decoder's levels, coarse to fine.
    """
    name = cfg.MODEL.IAUNET.TRANSFORMER_DECODER_NAME
    return IAUNET_TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_dim, level_strides)
