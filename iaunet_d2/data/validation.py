"""Checks of training and evaluation data before a model sees it.

:func:`clean_dataset_dicts` runs on the dataset dicts of every split the trainer loads
(any name of Detectron2's ``DatasetCatalog``). Mistakes that would make a run train
on wrong data stop it with a :class:`DatasetError` naming the file and annotation;
defects that can be dropped safely are dropped and counted in one log line per split:

=================================  ==================================================
duplicate image ids                error
category the model does not know  error (set the model's NUM_CLASSES)
every image without annotations    error in training
missing image file                 training: image skipped and counted; evaluation:
                                   error (every test image must be evaluated)
degenerate polygon (< 3 points,    annotation dropped and counted
zero area), zero-area RLE mask
no segmentation                    annotation dropped and counted
box entirely outside the image     annotation dropped and counted
image without annotations          counted (kept as a "no cell" example unless
                                   DATALOADER.FILTER_EMPTY_ANNOTATIONS)
more cells than NUM_QUERIES        warning naming the image (IAUNet and Mask2Former
                                   predict at most NUM_QUERIES cells per image)
=================================  ==================================================

Unreadable images and images whose size differs from the annotation's are found
when they are read: the training mapper skips them (see :class:`SkipUnreadable`).
"""
import collections
import logging
import os
import random

import numpy as np
import pycocotools.mask as mask_util
import torch.utils.data as torchdata
from detectron2.structures import BoxMode

__all__ = [
    "DatasetError", "SkipUnreadable", "clean_dataset_dicts", "model_num_classes", "model_num_queries",
]

logger = logging.getLogger(__name__)

# How many file names a log line or error message lists before "...".
_EXAMPLES = 3


class DatasetError(ValueError):
    """Training or evaluation data that cannot be used; the message names the file."""


def model_num_classes(cfg):
    """Number of classes the config's model predicts."""
    if cfg.MODEL.META_ARCHITECTURE == "IAUNet":
        return int(cfg.MODEL.IAUNET.NUM_CLASSES)
    if cfg.MODEL.META_ARCHITECTURE == "Mask2Former":
        return int(cfg.MODEL.MASK2FORMER.NUM_CLASSES)
    return int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)


def model_num_queries(cfg):
    """Most instances per image the config's model can predict (None: no fixed limit)."""
    if cfg.MODEL.META_ARCHITECTURE == "IAUNet":
        return int(cfg.MODEL.IAUNET.NUM_QUERIES)
    if cfg.MODEL.META_ARCHITECTURE == "Mask2Former":
        return int(cfg.MODEL.MASK2FORMER.NUM_QUERIES)
    return None


def _examples(items):
    items = list(items)
    shown = ", ".join(str(i) for i in items[:_EXAMPLES])
    return shown + (f" and {len(items) - _EXAMPLES} more" if len(items) > _EXAMPLES else "")


def _polygon_area(coords):
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _segmentation_problem(segmentation, height, width):
    """None if the segmentation has pixels, else why it is unusable.

    Degenerate polygons inside a valid multi-polygon are removed in place.
    """
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return "no segmentation"
    if isinstance(segmentation, list):
        kept = [p for p in segmentation
                if len(p) >= 6 and len(p) % 2 == 0 and _polygon_area(p) > 0]
        if not kept:
            return "degenerate polygon (fewer than 3 points or zero area)"
        segmentation[:] = kept
        return None
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle.get("counts"), list):
            rle = mask_util.frPyObjects(rle, *rle["size"])
        if float(mask_util.area(rle)) <= 0:
            return "zero-area mask"
        return None
    return f"unsupported segmentation of type {type(segmentation).__name__}"


def _box_outside(anno, height, width):
    bbox = anno.get("bbox")
    if not bbox or height is None or width is None:
        return False
    mode = anno.get("bbox_mode", BoxMode.XYWH_ABS)
    if mode not in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS):
        return False  # relative boxes are not checked
    x, y, w, h = BoxMode.convert([float(v) for v in bbox[:4]], mode, BoxMode.XYWH_ABS)
    return x >= width or y >= height or x + w <= 0 or y + h <= 0


def clean_dataset_dicts(dicts, name, *, num_classes, is_train, num_queries=None, mask_on=True,
                        queries_key="MODEL.IAUNET.NUM_QUERIES"):
    """Check and clean one split's dataset dicts (see the module docstring).

    Args:
        dicts (list[dict]): Detectron2 dataset dicts; annotation lists are modified.
        name (str): the split's name, for messages.
        num_classes (int): classes of the model; category ids must be below it.
        is_train (bool): training (skip missing files) or evaluation (refuse them).
        num_queries (int or None): warn about images with more cells than this.
        queries_key (str): the config key of ``num_queries``, for the warning.
        mask_on (bool): annotations need a segmentation.

    Returns:
        list[dict]: the usable images.

    Raises:
        DatasetError: see the module docstring.
    """
    seen = {}
    duplicates = []
    for record in dicts:
        image_id = record.get("image_id")
        if image_id in seen:
            duplicates.append(f"{image_id} ({seen[image_id]}, {record.get('file_name')})")
        else:
            seen[image_id] = record.get("file_name")
    if duplicates:
        raise DatasetError(
            f"Dataset '{name}': duplicate image id(s) {_examples(duplicates)}; every image "
            "needs its own id."
        )

    dropped = collections.Counter()
    missing, empty, crowded = [], 0, []
    kept = []
    for record in dicts:
        file_name = record.get("file_name", "")
        if not os.path.isfile(file_name):
            missing.append(file_name)
            continue
        height, width = record.get("height"), record.get("width")
        annotations = []
        for position, anno in enumerate(record.get("annotations", []), 1):
            category = anno.get("category_id", 0)
            if not 0 <= int(category) < num_classes:
                which = anno.get("id", f"#{position}")  # its json id, else its place in the image
                raise DatasetError(
                    f"Dataset '{name}': annotation {which} of '{file_name}' has "
                    f"category {category}, but the model knows {num_classes} class(es) "
                    f"(0..{num_classes - 1}); set MODEL.IAUNET.NUM_CLASSES (IAUNet), "
                    "MODEL.MASK2FORMER.NUM_CLASSES (Mask2Former) or MODEL.ROI_HEADS.NUM_CLASSES "
                    "(R-CNN) to the dataset's number of categories."
                )
            if _box_outside(anno, height, width):
                dropped["box outside the image"] += 1
                continue
            if mask_on and not anno.get("iscrowd", 0):
                problem = _segmentation_problem(anno.get("segmentation"), height, width)
                if problem:
                    dropped[problem] += 1
                    continue
            annotations.append(anno)
        record["annotations"] = annotations
        cells = sum(1 for a in annotations if not a.get("iscrowd", 0))
        if cells == 0:
            empty += 1
        if num_queries is not None and cells > num_queries:
            crowded.append((file_name, cells))
        kept.append(record)

    if missing:
        if not is_train:
            raise DatasetError(
                f"Dataset '{name}': {len(missing)} image file(s) missing, e.g. "
                f"{_examples(missing)}; every evaluation image must exist."
            )
        logger.warning("Dataset '%s': skipped %d image(s) whose file is missing: %s",
                       name, len(missing), _examples(missing))
    if not kept:
        raise DatasetError(f"Dataset '{name}': none of its {len(dicts)} image file(s) exists, "
                           f"e.g. {_examples(missing)}.")
    if dropped:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(dropped.items()))
        logger.warning("Dataset '%s': dropped %d annotation(s): %s.", name, sum(dropped.values()), reasons)
    if empty:
        if is_train and empty == len(kept):
            raise DatasetError(
                f"Dataset '{name}': none of its {len(kept)} image(s) has a usable cell "
                "annotation" + (f" ({sum(dropped.values())} dropped as unusable)" if dropped else "")
                + "; nothing to learn from."
            )
        logger.info("Dataset '%s': %d of %d image(s) have no cell annotation%s.", name, empty,
                    len(kept), " (kept as 'no cell' examples)" if is_train else "")
    for file_name, cells in crowded:
        logger.warning(
            "Dataset '%s': '%s' has %d cells but the model predicts at most %d per image "
            "(%s): raise NUM_QUERIES, or cut the images into crops "
            "with at most %d cells (the converters' --max-instances).",
            name, file_name, cells, num_queries, queries_key, num_queries,
        )
    return kept


class SkipUnreadable(torchdata.Dataset):
    """Map-style dataset of ``mapper(dicts[i])`` that skips images the mapper rejects.

    A mapper returns None for a training image it cannot use (unreadable file, size
    that differs from the annotation); another image, drawn at random among those not
    known to be bad, takes its place. Each skip is logged with the running count of
    this process (each data-loader worker counts its own). When no image is left, a
    :class:`DatasetError` ends training.
    """

    def __init__(self, dicts, mapper, seed=0):
        self._dicts = dicts
        self._mapper = mapper
        self._rng = random.Random(seed)
        self._bad = set()

    def __len__(self):
        return len(self._dicts)

    def __getitem__(self, index):
        while True:
            data = self._mapper(self._dicts[index])
            if data is not None:
                return data
            self._bad.add(index)
            logger.warning("Skipped %d unreadable training image(s) so far; the last: '%s'.",
                           len(self._bad), self._dicts[index].get("file_name"))
            good = len(self._dicts) - len(self._bad)
            if good == 0:
                raise DatasetError(
                    f"None of the {len(self._dicts)} training image(s) can be read (e.g. "
                    f"'{self._dicts[index].get('file_name')}'); see the warnings above."
                )
            index = self._rng.randrange(len(self._dicts))
            while index in self._bad:
                index = self._rng.randrange(len(self._dicts))
