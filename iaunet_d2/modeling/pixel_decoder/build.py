"""Registry and builder of IAUNet pixel decoders."""
from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

__all__ = ["IAUNET_PIXEL_DECODER_REGISTRY", "build_pixel_decoder"]

IAUNET_PIXEL_DECODER_REGISTRY = Registry("IAUNET_PIXEL_DECODER")
IAUNET_PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders of IAUNet. A registered class is called as ``cls(cfg, input_shape)``
(with ``@configurable``), where ``input_shape`` maps backbone feature names to
``ShapeSpec``. See ``IAUNetPixelDecoder`` for the level-by-level interface that the
transformer decoder drives.
"""


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]):
    """Build the pixel decoder named by ``cfg.MODEL.IAUNET.PIXEL_DECODER_NAME``.

    Args:
        input_shape: backbone output shapes, e.g. ``backbone.output_shape()``.
    """
    name = cfg.MODEL.IAUNET.PIXEL_DECODER_NAME
    return IAUNET_PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
