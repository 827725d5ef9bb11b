"""Registry and builder of IAUNet transformer decoders."""
from detectron2.utils.registry import Registry

__all__ = ["IAUNET_TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]

IAUNET_TRANSFORMER_DECODER_REGISTRY = Registry("IAUNET_TRANSFORMER_DECODER")
IAUNET_TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Transformer decoders of IAUNet. A registered class is called as ``cls(cfg)`` (with
``@configurable``) and its forward takes ``(features, pixel_decoder)``: the backbone
features and the pixel decoder it drives level by level.
"""


def build_transformer_decoder(cfg):
    """Build the transformer decoder named by ``cfg.MODEL.IAUNET.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.IAUNET.TRANSFORMER_DECODER_NAME
    return IAUNET_TRANSFORMER_DECODER_REGISTRY.get(name)(cfg)
