"""What prediction returns and raises: cells, per-image results, set-up errors."""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["PredictionError", "WeightsMismatchError", "CellPrediction", "ImagePrediction"]


class PredictionError(RuntimeError):
    """A problem that stops the run before any image is predicted."""


class WeightsMismatchError(PredictionError):
    """The weights file does not fit the model built from the config."""


@dataclass
class CellPrediction:
    """One predicted cell, its mask stored as a crop to keep memory per cell small.

    ``mask`` is bool (h, w) at image rows y0..y0+h, columns x0..x0+w.
    """

    y0: int
    x0: int
    mask: np.ndarray
    score: float
    category: int
    tile: int = 0
    cut: bool = False  # touches a tile border that lies inside the image
    query: int = -1  # producing IAUNet query, -1 if unknown

    @property
    def area(self):
        return int(self.mask.sum())


@dataclass
class ImagePrediction:
    """All cells of one (height, width) image, by decreasing score, plus what the figures need."""

    height: int
    width: int
    cells: List[CellPrediction]
    windows: List[Tuple[int, int, int, int]]  # (y0, x0, h, w) of each tile
    activations: List[Optional[list]] = field(default_factory=list)  # per tile: levels of (N, h, w)
