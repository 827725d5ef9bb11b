"""COCO evaluation of cell instance segmentation."""
import logging

from detectron2.evaluation import COCOEvaluator

from ..compat import HAS_COMPILED_OPS

__all__ = ["CellCOCOEvaluator", "build_coco_evaluator", "score_threshold_key"]

logger = logging.getLogger(__name__)


def score_threshold_key(cfg):
    """(name, value) of the config key below which a model's detections are dropped."""
    if cfg.MODEL.META_ARCHITECTURE == "IAUNet":
        return "MODEL.IAUNET.TEST.SCORE_THRESH", cfg.MODEL.IAUNET.TEST.SCORE_THRESH
    if cfg.MODEL.META_ARCHITECTURE == "Mask2Former":
        # No threshold: its top-k detections per image are all kept.
        return "TEST.DETECTIONS_PER_IMAGE (top-k)", cfg.TEST.DETECTIONS_PER_IMAGE
    return "MODEL.ROI_HEADS.SCORE_THRESH_TEST", cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST


class CellCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator that says so when the model detected nothing at all,
    instead of leaving the reader with tables of NaN."""

    def __init__(self, *args, score_threshold=("the score threshold", None), **kwargs):
        super().__init__(*args, **kwargs)
        self._score_threshold = score_threshold

    def _eval_predictions(self, predictions, img_ids=None):
        num_instances = sum(len(p.get("instances", ())) for p in predictions)
        if num_instances == 0:
            key, value = self._score_threshold
            logger.warning(
                "0 instances above %s = %s in %d images of %s: the model detected nothing "
                "(untrained or under-trained?); every AP below is NaN or 0.",
                key, value, len(predictions), self._metadata.name,
            )
        super()._eval_predictions(predictions, img_ids)


def build_coco_evaluator(cfg, dataset_name, output_dir=None):
    """``CellCOCOEvaluator`` on ``TEST.EVAL_TASKS`` with ``TEST.DETECTIONS_PER_IMAGE``
    detections per image.

    The fast C++ COCOeval is used only when Detectron2's compiled ops are installed.
    """
    return CellCOCOEvaluator(
        dataset_name,
        tasks=tuple(cfg.TEST.EVAL_TASKS),
        distributed=True,
        output_dir=output_dir,
        use_fast_impl=HAS_COMPILED_OPS,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        score_threshold=score_threshold_key(cfg),
    )
