"""Building a trained model from its config and predicting the cells of images with it."""
import logging
import os

import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..data.dataset_mappers.cell_instance_mapper import build_cell_augmentations
from ..config import build_config
from ..engine import AtomicCheckpointer
from ..engine.checkpoint import CheckpointReadError
from ..engine.checkpoint import WeightsMismatchError as CheckpointMismatch
from .tiling import TILE_MATCH_IOU, predict_image
from .types import CellPrediction, ImagePrediction, PredictionError, WeightsMismatchError

__all__ = ["CellPredictor", "build_predict_config", "load_predictor"]

logger = logging.getLogger(__name__)


def build_predict_config(config_file, weights=None, opts=()):
    """The frozen config of a prediction run (no dataset is needed on disk).

    ``weights`` (or MODEL.WEIGHTS in the opts) is required. MODEL.DEVICE falls back to
    the CPU when CUDA is not available. Pixel statistics follow the training rule of
    ``build_config`` (R-CNN models do not store them in their checkpoints).
    """
    if not os.path.isfile(config_file):
        raise PredictionError(f"Config file '{config_file}' not found.")
    opts = list(opts)
    if weights:
        opts += ["MODEL.WEIGHTS", weights]
    try:
        cfg = build_config(config_file, opts, prepare_data=False)
    except Exception as e:  # yaml and key errors of Detectron2's config system
        raise PredictionError(f"Cannot build the config from '{config_file}' with {opts}: {e}") from e
    if not cfg.MODEL.WEIGHTS:
        raise PredictionError("No weights: pass --weights path/to/model_final.pth (a trained model).")
    cfg.defrost()
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %s but CUDA is not available: using the CPU.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


class CellPredictor:
    """Predicts the cells of images with the trained model of a config, in the manner
    of Detectron2's ``DefaultPredictor``.

    The model is built in eval mode and ``cfg.MODEL.WEIGHTS`` loaded strictly
    (:meth:`AtomicCheckpointer.load_weights`, the loader ``train_net.py --eval-only``
    uses too). Images larger than ``INPUT.IMAGE_SIZE`` are predicted in overlapping
    tiles at their own resolution and merged (:func:`predict_image`); smaller ones,
    and every image when ``tile`` is False, are resized by the test augmentation.

    Attributes:
        cfg: a copy of the config.
        model: the model, eval mode.
        augmentation: ``T.AugmentationList`` of the test-time augmentation.
        class_names: names of the classes, by class index (``["cell"]`` when the
            config's datasets declare none).
        tile_size: ``INPUT.IMAGE_SIZE``.
        tile_overlap: pixels shared by neighbouring tiles, in [0, tile_size).
        tile: False to resize whole images instead of tiling them.
        match_iou: IoU above which cells of two tiles are the same cell.
        batch_size: tiles of an image per forward pass.
        input_format: channel order the images must have (``INPUT.FORMAT``).
    """

    def __init__(self, cfg, tile_overlap=None, tile=True, keep_activations=False,
                 match_iou=TILE_MATCH_IOU, batch_size=4):
        """
        Args:
            cfg: config of the model, e.g. from :func:`build_predict_config`.
            tile_overlap: default a quarter tile.
            tile: see the attribute.
            keep_activations: also return IAUNet's instance-activation maps, per tile
                (``ImagePrediction.activations``); set once, on the model.
            match_iou: see the attribute.
            batch_size: see the attribute (>= 1).
        Raises:
            ValueError: ``tile_overlap`` outside [0, tile_size), ``batch_size`` < 1, or
                ``keep_activations`` for a model other than IAUNet.
            PredictionError: the weights file is missing or unreadable.
            WeightsMismatchError: parameters missing from the file, unexpected ones,
                or different shapes (the file was trained with another config).
        """
        self.cfg = cfg.clone()
        self.tile_size = int(cfg.INPUT.IMAGE_SIZE)
        self.tile_overlap = self.tile_size // 4 if tile_overlap is None else int(tile_overlap)
        # Checked before the model is built: a bad option should not cost a model load.
        if not 0 <= self.tile_overlap < self.tile_size:
            raise ValueError(f"tile overlap {self.tile_overlap} must be in [0, {self.tile_size}) "
                             f"for INPUT.IMAGE_SIZE {self.tile_size}")
        if int(batch_size) < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if keep_activations and cfg.MODEL.META_ARCHITECTURE != "IAUNet":
            raise ValueError(f"activation maps need an IAUNet model; the config builds "
                             f"{cfg.MODEL.META_ARCHITECTURE}")
        self.tile = tile
        self.match_iou = match_iou
        self.batch_size = int(batch_size)
        self.input_format = cfg.INPUT.FORMAT
        self.model = build_model(self.cfg)
        self.model.eval()
        try:
            AtomicCheckpointer(self.model).load_weights(cfg.MODEL.WEIGHTS, strict=True)
        except CheckpointMismatch as e:
            raise WeightsMismatchError(str(e)) from e
        except CheckpointReadError as e:
            raise PredictionError(str(e)) from e
        self._keep_activations = bool(keep_activations)
        if self._keep_activations:
            self.model.return_activation_maps = True
        self.augmentation = T.AugmentationList(build_cell_augmentations(cfg, is_train=False))
        meta_names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
        self.class_names = (MetadataCatalog.get(meta_names[0]).get("thing_classes")
                            if meta_names else None) or ["cell"]

    @property
    def keep_activations(self):
        """Whether predictions carry activation maps (fixed when the model is set up)."""
        return self._keep_activations

    def __call__(self, image, on_tiles=None):
        """Predict one image or each of a list of images.

        Args:
            image: uint8 (H, W, 3) in ``cfg.INPUT.FORMAT`` channel order, or a list of them.
            on_tiles: called as ``on_tiles(done, total)`` after each forward pass over
                an image's tiles (progress of large images).
        Returns:
            ImagePrediction (cells at (H, W), by decreasing score), or a list of them.
        """
        if isinstance(image, (list, tuple)):
            return [self(i, on_tiles) for i in image]
        return predict_image(self.model, image, self.augmentation, self.tile_size, self.tile_overlap,
                             tile=self.tile, keep_activations=self._keep_activations,
                             match_iou=self.match_iou, batch_size=self.batch_size,
                             on_tiles=on_tiles)


def load_predictor(cfg):
    """The model of ``cfg`` in eval mode with ``cfg.MODEL.WEIGHTS`` loaded strictly
    (see :class:`CellPredictor`).

    Raises:
        PredictionError: the weights file is missing or unreadable.
        WeightsMismatchError: the weights do not fit the model of ``cfg``.
    """
    return CellPredictor(cfg).model
