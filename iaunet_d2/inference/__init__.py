"""Predicting cell instances with a trained model.

* ``predictor``: :class:`CellPredictor` (config -> model with strictly loaded weights,
  called on images), :func:`build_predict_config`, :func:`load_predictor`;
* ``tiling``: tile windows, one forward pass per tile, merging the tiles' cells;
* ``outputs``: label image, cell table, COCO annotations and the files of a run;
* ``visualization``: overlay and activation-map figures;
* ``inputs`` and ``cli``: the command line behind ``python -m iaunet_d2.predict``.
"""
from .outputs import label_image, write_outputs  # noqa: F401
from .predictor import CellPredictor, build_predict_config, load_predictor  # noqa: F401
from .tiling import merge_tile_predictions, predict_image, tile_windows  # noqa: F401
from .types import CellPrediction, ImagePrediction, PredictionError, WeightsMismatchError  # noqa: F401
from .visualization import activation_figure, overlay_image  # noqa: F401
