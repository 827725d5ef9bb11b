"""Converting cell annotations to the COCO json files the registered datasets read.

Three sources are covered, each producing the layout of ``datasets.specs.DATASETS``
(see ``datasets/README.md``, section "Converting datasets"), one module each:

* ``label_images``: instance label images (one integer id per cell, 0 = background;
  NeurIPS22-CellSeg and most microscopy tools), :func:`convert_label_folder`;
* ``livecell``: LIVECell -> LIVECell-crop, 512x512 crops with at most 100 cells,
  :func:`convert_livecell_crop`;
* ``evican2``: EVICAN2, cell category only, background images removed, evaluation
  images split by difficulty, :func:`convert_evican2`;

and ``coco`` holds what they share (category, errors, report, COCO assembly).

All masks are written as compressed COCO RLE, boxes as XYWH of the mask's extent,
category ``cell`` with id 1. Every converter takes ``max_instances``: an image (or
crop) with more cells than that is left out and reported, because IAUNet predicts
at most ``MODEL.IAUNET.NUM_QUERIES`` cells per image.

Problems with single files (unreadable, wrong dimensionality, size mismatch) raise
:class:`ConversionError` naming the file; the folder-level converters record them in
the returned :class:`ConversionReport` and go on with the other files. Files are
written atomically (:mod:`iaunet_d2.io.writers`).
"""
from .coco import CELL_CATEGORY, ConversionError, ConversionReport
from .evican2 import convert_evican2, evican2_difficulty
from .label_images import (
    annotations_to_label_image,
    convert_label_folder,
    labels_to_annotations,
    relabel_sequential,
)
from .livecell import convert_livecell_crop

__all__ = [
    "CELL_CATEGORY",
    "ConversionError",
    "ConversionReport",
    "annotations_to_label_image",
    "convert_evican2",
    "convert_label_folder",
    "convert_livecell_crop",
    "evican2_difficulty",
    "labels_to_annotations",
    "relabel_sequential",
]
