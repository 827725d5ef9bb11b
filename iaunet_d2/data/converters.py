"""Converting cell annotations to the COCO json files the registered datasets read.

Three sources are covered, each producing the layout of ``register_cells.DATASETS``
(see ``datasets/README.md``, section "Converting datasets"):

* instance label images (one integer id per cell, 0 = background; NeurIPS22-CellSeg
  and most microscopy tools): :func:`convert_label_folder`;
* LIVECell -> LIVECell-crop, 512x512 crops with at most 100 cells:
  :func:`convert_livecell_crop`;
* EVICAN2: cell category only, background images removed, evaluation images split
  by difficulty: :func:`convert_evican2`.

All masks are written as compressed COCO RLE, boxes as XYWH of the mask's extent,
category ``cell`` with id 1. Every converter takes ``max_instances``: an image (or
crop) with more cells than that is left out and reported, because IAUNet predicts
at most ``MODEL.IAUNET.NUM_QUERIES`` cells per image.

Problems with single files (unreadable, wrong dimensionality, size mismatch) raise
:class:`ConversionError` naming the file; the folder-level converters record them in
the returned :class:`ConversionReport` and go on with the other files. json files are
written atomically (temporary file, then ``os.replace``).
"""
import copy
import fnmatch
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from ..io.images import ImageReadError, list_images, read_image, read_raw_image
from ..io.labels import LABEL_SUFFIXES, pair_with_labels, read_label_image
from ..io.rle import annotation_mask, crop_annotation
from ..io.writers import write_image, write_json
from ..utils.windows import tile_windows
from .datasets.register_cells import DATASETS

__all__ = [
    "CELL_CATEGORY",
    "ConversionError",
    "ConversionReport",
    "relabel_sequential",
    "labels_to_annotations",
    "convert_label_folder",
    "convert_livecell_crop",
    "evican2_difficulty",
    "convert_evican2",
    "annotations_to_label_image",
]

logger = logging.getLogger(__name__)

CELL_CATEGORY = {"id": 1, "name": "cell", "supercategory": "cell"}


class ConversionError(ValueError):
    """A file cannot be converted; the message names the file."""


@dataclass
class ConversionReport:
    """What a converter did: counts, files left out and why, and warnings."""

    images: int = 0
    annotations: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason), not errors
    warnings: List[str] = field(default_factory=list)

    def summary(self):
        lines = [
            f"{self.images} image(s), {self.annotations} annotation(s) written; "
            f"{len(self.skipped)} left out, {len(self.failed)} failed."
        ]
        lines += [f"  left out {path}: {why}" for path, why in self.skipped]
        lines += [f"  FAILED {path}: {why}" for path, why in self.failed]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- basics
def relabel_sequential(labels):
    """Map the ids of a label image to 1..K (0 stays background), keeping their order.

    Args:
        labels: (H, W) integer array.
    Returns:
        (relabelled int32 (H, W) array, K, original ids as an int64 (K,) array).
        The input is contiguous when ``original_ids == arange(1, K + 1)``.
    """
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids.size and ids[0] == 0:
        original = ids[1:].astype(np.int64)
        out = inverse.astype(np.int32)  # id 0 has index 0
    else:
        original = ids.astype(np.int64)
        out = (inverse + 1).astype(np.int32)
    return out, int(original.size), original


def labels_to_annotations(labels, image_id, first_annotation_id=1):
    """COCO annotations of every cell of a label image.

    Args:
        labels: (H, W) integer label image; ids need not be contiguous.
        image_id: the json image id.
        first_annotation_id: id of the first annotation (ids increase by 1).
    Returns:
        list of COCO annotation dicts, in increasing label order, with "segmentation"
        (compressed RLE), "area", "bbox" (XYWH), "iscrowd" 0, "category_id" 1 and
        "label_id" (the id in the label image, kept for traceability).
    """
    from scipy import ndimage

    height, width = labels.shape
    annotations = []
    # Sequential ids first: find_objects allocates one entry per id up to the largest.
    sequential, _, original_ids = relabel_sequential(labels)
    for index, region in enumerate(ndimage.find_objects(sequential)):
        label_id = int(original_ids[index])
        crop = sequential[region] == index + 1
        annotations.append(
            {
                "id": first_annotation_id + len(annotations),
                "image_id": image_id,
                "category_id": CELL_CATEGORY["id"],
                **crop_annotation(crop, region[0].start, region[1].start, height, width),
                "iscrowd": 0,
                "label_id": int(label_id),
            }
        )
    return annotations


def annotations_to_label_image(annotations, height, width):
    """Paint COCO annotations (RLE or polygons) into a uint16 (H, W) label image, ids
    1..N in the given order (a later annotation wins where masks overlap)."""
    out = np.zeros((height, width), dtype=np.uint16)
    for k, anno in enumerate(annotations, start=1):
        out[annotation_mask(anno, height, width)] = k
    return out


def _coco_dict(images, annotations, description):
    return {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": [dict(CELL_CATEGORY)],
    }


# ----------------------------------------------------------------- label images -> COCO
def convert_label_folder(
    image_dir,
    label_dir,
    output_json,
    image_root=None,
    label_suffixes=LABEL_SUFFIXES,
    max_instances=None,
    channel=None,
    description="cell instances converted from label images",
):
    """Convert a folder of images and their instance label images to COCO json.

    Each image ``X.ext`` in ``image_dir`` is paired with ``label_dir/X<suffix>.<ext>``
    (see :func:`iaunet_d2.io.labels.find_label_file`; ``label_dir`` may equal ``image_dir``, files that
    are themselves labels of another image are not taken as images). Label ids need
    not be contiguous (reported as a warning). Empty label images give images without
    annotations (reported). Images with more than ``max_instances`` cells are left out.

    Args:
        image_root: folder the json ``file_name`` is relative to (default ``image_dir``).
        channel: passed to ``read_image`` for multi-channel images (only the size is used).
    Returns:
        ConversionReport. The json is written (atomically) even if some files failed.
    """
    image_root = image_dir if image_root is None else image_root
    report = ConversionReport()
    if not os.path.isdir(image_dir):
        raise ConversionError(f"Image folder '{image_dir}' does not exist.")
    # Label images of other images in the same folder are not taken as images.
    pairs, _ = pair_with_labels(list_images(image_dir), label_dir, label_suffixes)
    images, annotations = [], []
    for path, label_path in pairs.items():
        if label_path is None:
            report.failed.append((path, f"no label image for it in '{label_dir}' "
                                        f"(tried suffixes {list(label_suffixes)})"))
            continue
        try:
            record, annos = _convert_pair(path, label_path, len(images) + 1,
                                          len(annotations) + 1, image_root, channel, report)
        except ConversionError as e:
            report.failed.append((path, str(e)))
            continue
        if max_instances is not None and len(annos) > max_instances:
            report.skipped.append((path, f"{len(annos)} cells > --max-instances {max_instances}"))
            continue
        images.append(record)
        annotations.extend(annos)
    report.images, report.annotations = len(images), len(annotations)
    write_json(_coco_dict(images, annotations, description), output_json)
    return report


def _convert_pair(image_path, label_path, image_id, first_annotation_id, image_root, channel, report):
    try:
        height, width = read_image(image_path, channel=channel).shape[:2]
        labels = read_label_image(label_path)
    except ImageReadError as e:
        raise ConversionError(str(e)) from e
    if labels.shape != (height, width):
        raise ConversionError(
            f"Label image '{label_path}' is {labels.shape[1]}x{labels.shape[0]} (WxH) but "
            f"its image '{image_path}' is {width}x{height}."
        )
    annos = labels_to_annotations(labels, image_id, first_annotation_id)
    if not annos:
        report.warnings.append(f"'{label_path}' has no cells (all 0): image kept without annotations.")
    else:
        ids = np.array([a["label_id"] for a in annos])
        if ids[-1] != len(ids):
            report.warnings.append(
                f"'{label_path}': ids are not contiguous ({len(ids)} cells, largest id "
                f"{ids[-1]}); relabelled 1..{len(ids)} in the json (original id in 'label_id')."
            )
    record = {
        "id": image_id,
        "file_name": os.path.relpath(image_path, image_root).replace(os.sep, "/"),
        "height": int(height),
        "width": int(width),
    }
    return record, annos


# ------------------------------------------------------------------- LIVECell -> crop
def _load_coco(json_path):
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"Cannot read COCO json '{json_path}': {e}") from e
    annos = data.get("annotations", [])
    if isinstance(annos, dict):  # some LIVECell copies key annotations by id
        data["annotations"] = list(annos.values())
    return data


def _find_image(image_root, file_name, index):
    path = os.path.join(image_root, file_name)
    if os.path.isfile(path):
        return path
    if index is None:
        return None
    return index.get(os.path.basename(file_name))


def _index_images(image_root):
    """basename -> path for every file below image_root (LIVECell copies differ in
    whether images sit in per-cell-type sub-folders)."""
    index = {}
    for folder, _, names in os.walk(image_root):
        for name in names:
            index.setdefault(name, os.path.join(folder, name))
    return index


def _read_raw(path):
    """The stored pixels of an image, any dtype, (H, W) or (H, W, C) in RGB(A) order."""
    try:
        return np.asarray(read_raw_image(path))
    except ImageReadError as e:
        raise ConversionError(str(e)) from e


def convert_livecell_crop(
    json_path,
    image_root,
    output_image_dir,
    output_json,
    size=512,
    stride=None,
    max_instances=100,
    min_visible_fraction=0.0,
    min_visible_area=1,
    file_name_prefix="",
):
    """Cut one LIVECell split into ``size`` x ``size`` crops with 1..max_instances cells.

    Border rule: a cell cut by the crop border is kept as its visible part (mask
    clipped to the crop, box recomputed) when that part has at least
    ``min_visible_area`` pixels and at least ``min_visible_fraction`` of the cell's
    area; otherwise it is dropped from that crop. The defaults (0.0, 1 px) keep every
    visible part, so that no cell pixel of a crop is unlabelled (an unlabelled cell
    would teach the model to call it background). Crops keeping no cell or more than
    ``max_instances`` are left out (``None`` = no upper limit).

    Crops are written as ``<stem>_y<y0>_x<x0><ext>`` (the source's format and dtype).

    Returns:
        ConversionReport (images = crops written).
    """
    data = _load_coco(json_path)
    report = ConversionReport()
    by_image: Dict[int, list] = {}
    for anno in data.get("annotations", []):
        if not anno.get("iscrowd", 0):
            by_image.setdefault(anno["image_id"], []).append(anno)
    index = None
    images, annotations = [], []
    for image in sorted(data.get("images", []), key=lambda im: im["id"]):
        path = _find_image(image_root, image["file_name"], index)
        if path is None and index is None:
            index = _index_images(image_root)
            path = _find_image(image_root, image["file_name"], index)
        if path is None:
            report.failed.append((os.path.join(image_root, image["file_name"]), "image file not found"))
            continue
        try:
            pixels = _read_raw(path)
            height, width = pixels.shape[:2]
            if (image.get("height", height), image.get("width", width)) != (height, width):
                raise ConversionError(
                    f"Image '{path}' is {width}x{height} but '{json_path}' says "
                    f"{image.get('width')}x{image.get('height')}."
                )
            masks = [annotation_mask(a, height, width) for a in by_image.get(image["id"], [])]
        except ConversionError as e:
            report.failed.append((path, str(e)))
            continue
        areas = [int(m.sum()) for m in masks]
        stem, ext = os.path.splitext(os.path.basename(image["file_name"]))
        for y0, x0, h, w in tile_windows(height, width, size, stride):
            crop_annos = []
            image_id = len(images) + 1
            for mask, area in zip(masks, areas):
                part = mask[y0:y0 + h, x0:x0 + w]
                visible = int(part.sum())
                if visible == 0 or visible < min_visible_area or visible < min_visible_fraction * area:
                    continue
                (anno,) = labels_to_annotations(part.astype(np.uint8), image_id,
                                                len(annotations) + len(crop_annos) + 1)
                anno.pop("label_id")
                crop_annos.append(anno)
            name = f"{file_name_prefix}{stem}_y{y0}_x{x0}{ext}"
            if not crop_annos:
                report.skipped.append((name, "no cell in the crop"))
                continue
            if max_instances is not None and len(crop_annos) > max_instances:
                report.skipped.append((name, f"{len(crop_annos)} cells > max_instances {max_instances}"))
                continue
            write_image(pixels[y0:y0 + h, x0:x0 + w], os.path.join(output_image_dir, name))
            images.append({"id": image_id, "file_name": name, "height": h, "width": w,
                           "source_file_name": image["file_name"], "crop_yx": [y0, x0]})
            annotations.extend(crop_annos)
    report.images, report.annotations = len(images), len(annotations)
    write_json(_coco_dict(images, annotations, f"LIVECell-crop from {os.path.basename(json_path)}"),
               output_json)
    return report


# --------------------------------------------------------------------------- EVICAN2
_DIFFICULTIES = ("easy", "medium", "difficult")
# What the registered EVICAN2 names expect (register_cells.DATASETS), from one place.
_EVICAN_SPEC = DATASETS["evican2_easy"]


def evican2_difficulty(image):
    """Difficulty of an EVICAN2 evaluation image record: its "difficulty" field, or the
    word easy/medium/difficult in its file name; None if neither says."""
    value = str(image.get("difficulty", "")).lower()
    if value in _DIFFICULTIES:
        return value
    tokens = os.path.basename(image["file_name"]).lower().replace("-", "_").replace(".", "_").split("_")
    found = [d for d in _DIFFICULTIES if d in tokens]
    return found[0] if len(found) == 1 else None


def _evican2_clean(data, source, max_instances, report):
    """Keep the cell category (as id 1) and non-background images; returns a new dict."""
    wanted = {c.lower() for c in _EVICAN_SPEC.cell_categories}
    cell_ids = {c["id"] for c in data.get("categories", []) if c["name"].lower() in wanted}
    if not cell_ids:
        names = [c.get("name") for c in data.get("categories", [])]
        raise ConversionError(f"'{source}' has no cell category (categories: {names}).")
    patterns = [p.lower() for p in _EVICAN_SPEC.drop_files]
    by_image: Dict[int, list] = {}
    for anno in data.get("annotations", []):
        if anno["category_id"] in cell_ids:
            by_image.setdefault(anno["image_id"], []).append(anno)
    images, annotations = [], []
    for image in data.get("images", []):
        base = os.path.basename(image["file_name"]).lower()
        if any(fnmatch.fnmatch(base, p) for p in patterns):
            report.skipped.append((image["file_name"], "background image"))
            continue
        annos = by_image.get(image["id"], [])
        if max_instances is not None and len(annos) > max_instances:
            report.skipped.append((image["file_name"], f"{len(annos)} cells > max_instances {max_instances}"))
            continue
        images.append(image)
        for anno in annos:
            anno = copy.deepcopy(anno)
            anno["category_id"] = CELL_CATEGORY["id"]
            annotations.append(anno)
    return {**{k: v for k, v in data.items() if k not in ("images", "annotations", "categories")},
            **_coco_dict(images, annotations, f"EVICAN2 cells from {os.path.basename(source)}")}


def _evican2_target(split, difficulty=None):
    """Path, relative to the datasets root, that register_cells reads for a split."""
    key = f"evican2_{difficulty or 'easy'}"
    return DATASETS[key].splits[split][0]


def convert_evican2(annotation_dir, output_root, eval_json=None, max_instances=None):
    """Write the EVICAN2 json files the registered ``evican2_*`` names read.

    Reads from ``annotation_dir`` the EVICAN2 files named as in the release
    (``instances_{train,val}2019_EVICAN2.json`` and, when present,
    ``instances_eval2019_{easy,medium,difficult}_EVICAN2.json``). Each output keeps
    only the cell category (renamed ``cell``, id 1), drops the background images
    (``*background*``) and images with more than ``max_instances`` cells. When the
    per-difficulty evaluation files are absent, ``eval_json`` (one file with all
    evaluation images) is split by :func:`evican2_difficulty`; images whose difficulty
    is unknown are reported and left out.

    Output: ``<output_root>/evican2/annotations/...`` (the image folders are used as
    they are: ``evican2/images/EVICAN_{train,val,eval}2019/``).

    Returns:
        ConversionReport over all files.
    """
    report = ConversionReport()
    jobs = []  # (source path or loaded dict, target relative path)
    for split in ("train", "val"):
        target = _evican2_target(split)
        jobs.append((os.path.join(annotation_dir, os.path.basename(target)), target))
    eval_files = {d: os.path.join(annotation_dir, os.path.basename(_evican2_target("test", d)))
                  for d in _DIFFICULTIES}
    if all(os.path.isfile(p) for p in eval_files.values()):
        jobs += [(eval_files[d], _evican2_target("test", d)) for d in _DIFFICULTIES]
    elif eval_json is not None:
        try:
            data = _load_coco(eval_json)
        except ConversionError as e:
            report.failed.append((eval_json, str(e)))
            data = None
        if data is not None:
            groups = {d: [] for d in _DIFFICULTIES}
            for image in data.get("images", []):
                d = evican2_difficulty(image)
                if d is None:
                    report.skipped.append((image["file_name"], "difficulty unknown (no 'difficulty' "
                                                               "field or easy/medium/difficult in the name)"))
                else:
                    groups[d].append(image)
            for d, images in groups.items():
                ids = {im["id"] for im in images}
                part = dict(data, images=images,
                            annotations=[a for a in data.get("annotations", []) if a["image_id"] in ids])
                jobs.append(((eval_json, part), _evican2_target("test", d)))
    else:
        report.failed.append((annotation_dir, "no instances_eval2019_{easy,medium,difficult}_EVICAN2.json "
                                              "and no --eval-json to split by difficulty"))
    for source, target in jobs:
        if isinstance(source, tuple):
            source, data = source
        else:
            if not os.path.isfile(source):
                report.failed.append((source, "file not found"))
                continue
            try:
                data = _load_coco(source)
            except ConversionError as e:
                report.failed.append((source, str(e)))
                continue
        try:
            clean = _evican2_clean(data, source, max_instances, report)
        except ConversionError as e:
            report.failed.append((source, str(e)))
            continue
        write_json(clean, os.path.join(output_root, target))
        report.images += len(clean["images"])
        report.annotations += len(clean["annotations"])
    return report
