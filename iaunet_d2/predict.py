"""Predict cell instances on microscopy images: label images, overlays, tables, COCO.

    python -m iaunet_d2.predict --config-file CFG --weights model_final.pth \\
        --input "images/*.tif" --output predictions/ [--channel 1] [--save-activations] \\
        [MODEL.IAUNET.TEST.SCORE_THRESH 0.3 ...]

Works for every model of the project that returns ``Instances`` with ``pred_masks``
and ``scores`` (IAUNet, Mask R-CNN, PointRend). For each input image ``<name>`` the
output folder receives

* ``<name>_labels.tif``: uint16 instance label image, same height and width as the
  input, 0 = background, ids 1..K by decreasing score (where predicted cells overlap,
  the pixel goes to the higher-scoring cell);
* ``<name>_overlay.png``: the image with coloured cells and their outlines;
* ``<name>_cells.csv``: one row per id: score, class, area (pixels of the predicted
  mask), visible_area (pixels carrying the id in the label image), centroid and box
  (x, y, width, height) of the mask;
* ``<name>_activations.png`` with ``--save-activations`` (IAUNet only): per kept
  cell, its query's instance-activation map at every decoder level next to its mask;

and, for the whole run, ``coco_results.json``: COCO json with "images",
"categories" and "annotations" (RLE masks, XYWH boxes, "score"), usable as ground
truth-style file (``COCO(path)``) and, its "annotations", as a COCO results list.

Images whose longer side exceeds ``INPUT.IMAGE_SIZE`` are predicted at their own
resolution in overlapping ``IMAGE_SIZE`` tiles (``--tile-overlap`` pixels, default a
quarter tile) and merged, see :func:`merge_tile_predictions`; smaller images are
resized with the test augmentation, as in evaluation. ``--resize`` resizes every
image as in evaluation instead of tiling.

Every file is written atomically (temporary file, then ``os.replace``). Unreadable
images are reported and skipped; the exit status is 1 if any image failed, 2 for
errors that stop the run before it starts (config, weights, inputs).
"""
# The entry point of the command line (python -m, the iaunet-predict script) and the
# names earlier code imports from here; the code itself is the iaunet_d2.inference package.
import sys

from .inference.cli import MIN_IMAGE_SIZE, main, parse_args
from .inference.inputs import collect_inputs
from .inference.outputs import label_image, prepare_output_dir, write_outputs
from .inference.predictor import CellPredictor, build_predict_config, load_predictor
from .inference.tiling import TILE_MATCH_IOU, merge_tile_predictions, predict_image
from .inference.types import CellPrediction, ImagePrediction, PredictionError, WeightsMismatchError
from .inference.visualization import MAX_ACTIVATION_ROWS, activation_figure, overlay_image

__all__ = [
    "PredictionError",
    "WeightsMismatchError",
    "CellPrediction",
    "ImagePrediction",
    "CellPredictor",
    "collect_inputs",
    "build_predict_config",
    "load_predictor",
    "predict_image",
    "merge_tile_predictions",
    "label_image",
    "overlay_image",
    "activation_figure",
    "write_outputs",
    "prepare_output_dir",
    "parse_args",
    "main",
    "MIN_IMAGE_SIZE",
    "MAX_ACTIVATION_ROWS",
    "TILE_MATCH_IOU",
]

if __name__ == "__main__":
    sys.exit(main())
