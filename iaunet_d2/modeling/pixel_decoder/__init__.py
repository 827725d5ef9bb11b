"""U-Net-like pixel decoder of IAUNet (main, mask and instance features per level)."""
from .build import IAUNET_PIXEL_DECODER_REGISTRY, build_pixel_decoder  # noqa: F401
from .iaunet_pixel_decoder import (  # noqa: F401
    IAUNetPixelDecoder,
    LevelFeatures,
    SqueezeExcitation,
    UpBlock,
    coordinate_channels,
)
