"""Training, evaluation and configuration entry points."""
from .checkpoint import (  # noqa: F401
    AtomicCheckpointer, CheckpointReadError, CheckpointWriteError, WeightsMismatchError,
)
from ..config import build_config  # noqa: F401  (the config layer's, re-exported)
from .defaults import setup_cfg  # noqa: F401
from .launch import launch  # noqa: F401
from .trainer import (  # noqa: F401
    FiniteLossCheck, Trainer, TrainingInterrupted, attach_finite_loss_check,
)
