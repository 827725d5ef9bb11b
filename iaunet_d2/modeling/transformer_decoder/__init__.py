"""IAUNet's instance activation layer and parallel dual-path transformer decoder."""
from .build import IAUNET_TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder  # noqa: F401
from .iaunet_transformer_decoder import (  # noqa: F401
    DualPathDecoderLayer,
    IAUNetTransformerDecoder,
    InstanceActivation,
)
from .position_encoding import PositionEmbeddingSine  # noqa: F401
