"""The project's configuration: every key it adds to Detectron2's defaults
(:mod:`.keys`) and how a run's config is built from a file and overrides (:mod:`.build`).
"""
from .build import (  # noqa: F401
    ConfigError,
    PixelStatsError,
    build_config,
    resolve_intensity_norm,
    resolve_pixel_stats,
)
from .keys import REMOVED_KEYS, RETIRED_KEYS, add_iaunet_config, apply_pretrained_policy  # noqa: F401
