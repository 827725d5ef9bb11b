"""Which of IAUNet+'s additions a config switches on (``MODEL.IAUNET.PLUS``).

IAUNet+ is this project's variant of the paper's IAUNet; every addition is off in the
paper's model. :func:`plus_options` is the one place that turns the config node into the
settings the decoder, matcher and criterion are built with.
"""
from typing import Dict

__all__ = ["PAPER_OPTIONS", "plus_options"]

# What the paper's model amounts to, in IAUNet+'s terms.
PAPER_OPTIONS = {
    "DEEP_SUPERVISION": False,
    "QUERY_CONTENT_EMBED": False,
    "HEAD_INIT_STD": 0.0,
    "MASK_FEATURE_POS": False,
    "ANCHOR_POINTS": False,
    "ACTIVATION_COST": 0.0,
    "ACTIVATION_LOSS": 0.0,
    "DYNAMIC_MASK_HEAD": False,
}


def plus_options(cfg) -> Dict:
    """``MODEL.IAUNET.PLUS`` as a dict (without ENABLED): its values with ENABLED, else
    the paper's (:data:`PAPER_OPTIONS` over the defaults).

    Raises:
        ValueError: ENABLED is False but a PLUS key differs from its default (a config
            that would silently train the paper's model instead of what it asks for).
    """
    plus = cfg.MODEL.IAUNET.PLUS
    options = {key: value for key, value in plus.items() if key != "ENABLED"}
    if plus.ENABLED:
        return options
    from detectron2.config import get_cfg

    from ..config.keys import add_iaunet_config

    defaults = get_cfg()
    add_iaunet_config(defaults)
    changed = [key for key, value in options.items() if value != defaults.MODEL.IAUNET.PLUS[key]]
    if changed:
        raise ValueError(
            f"MODEL.IAUNET.PLUS.{changed[0]} is set ({options[changed[0]]!r}) but "
            "MODEL.IAUNET.PLUS.ENABLED is False: set ENABLED True for IAUNet+, or remove "
            f"the key for the paper's IAUNet"
        )
    options.update(PAPER_OPTIONS)
    return options
