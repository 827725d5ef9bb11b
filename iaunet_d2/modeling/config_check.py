"""Config values that only the models' constructors check, checked before a run."""
import torch
from detectron2.modeling import META_ARCH_REGISTRY

from ..config import ConfigError

__all__ = ["check_model_config"]


def check_model_config(cfg, source: str) -> None:
    """Build the model of ``cfg`` on the meta device (no memory, no weights: a fraction
    of a second) so that a value a constructor rejects, e.g. an unknown
    ``MODEL.IAUNET.PLUS`` key set without ``PLUS.ENABLED`` or a component name no registry holds, is reported as one
    ``ConfigError`` naming ``source`` before data loading or workers start.
    """
    cfg = cfg.clone()
    cfg.defrost()
    if "SWIN" in cfg.MODEL:
        cfg.MODEL.SWIN.WEIGHTS = ""  # read once, when the real model is built
    try:
        with torch.device("meta"):
            META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    except (ValueError, KeyError) as e:
        reason = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"Config '{source}': {reason}") from e
