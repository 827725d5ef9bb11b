"""Output files of a prediction: label image, overlay, cell table, activation figure, COCO.

Every file is written atomically, an image's files as a set (all or none).
"""
import csv
import io
import json
import logging
import os
import tempfile

import cv2
import numpy as np

from ..io.rle import crop_annotation
from ..io.writers import encode_image, write_file_set
from .types import PredictionError
from .visualization import activation_figure, overlay_image

__all__ = ["label_image", "coco_annotations", "write_outputs", "write_coco_results", "prepare_output_dir"]

logger = logging.getLogger(__name__)


def label_image(prediction, max_id=np.iinfo(np.uint16).max):
    """uint16 (H, W) label image: id k = k-th best cell; higher scores win overlaps.

    Cells beyond ``max_id`` (65535) cannot be represented and are left out.
    """
    labels = np.zeros((prediction.height, prediction.width), dtype=np.uint16)
    cells = prediction.cells[:max_id]
    for k in range(len(cells), 0, -1):  # worst first, so better cells overwrite
        c = cells[k - 1]
        region = labels[c.y0:c.y0 + c.mask.shape[0], c.x0:c.x0 + c.mask.shape[1]]
        region[c.mask] = k
    return labels


def _cell_rows(prediction, labels, class_names):
    """One dict per id of the (H, W) ``labels`` of ``prediction``: the columns of ``_cells.csv``."""
    visible = np.bincount(labels.ravel(), minlength=len(prediction.cells) + 1)
    rows = []
    for k, c in enumerate(prediction.cells[:np.iinfo(np.uint16).max], start=1):
        ys, xs = np.nonzero(c.mask)
        rows.append({
            "id": k,
            "score": round(c.score, 6),
            "class": class_names[c.category] if c.category < len(class_names) else str(c.category),
            "area": int(ys.size),
            "visible_area": int(visible[k]),
            "centroid_x": round(float(xs.mean()) + c.x0, 3),
            "centroid_y": round(float(ys.mean()) + c.y0, 3),
            "bbox_x": c.x0 + int(xs.min()),
            "bbox_y": c.y0 + int(ys.min()),
            "bbox_w": int(xs.max() - xs.min() + 1),
            "bbox_h": int(ys.max() - ys.min() + 1),
        })
    return rows


def coco_annotations(prediction, image_id, first_id):
    """COCO annotations (RLE mask, XYWH box, score) of the cells that have a label id,
    numbered from ``first_id``; ``category_id`` is the class index + 1."""
    return [
        {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": c.category + 1,
            **crop_annotation(c.mask, c.y0, c.x0, prediction.height, prediction.width),
            "score": float(c.score),
            "iscrowd": 0,
        }
        for k, c in enumerate(prediction.cells[:np.iinfo(np.uint16).max])
    ]


def _encode_csv(rows):
    """CSV bytes of :func:`_cell_rows`' rows, header first."""
    columns = ["id", "score", "class", "area", "visible_area", "centroid_x", "centroid_y",
               "bbox_x", "bbox_y", "bbox_w", "bbox_h"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def write_outputs(prediction, image_rgb, output_dir, name, class_names=("cell",), activations=False):
    """Write ``<name>_labels.tif``, ``_overlay.png``, ``_cells.csv`` (and
    ``_activations.png``) of one image into ``output_dir`` as a set: all of them or,
    when a write fails, none (:func:`write_file_set`). Returns the label image.

    Raises:
        FileSetWriteError: naming the file that could not be written and why.
    """
    labels = label_image(prediction)
    if len(prediction.cells) > np.iinfo(np.uint16).max:
        logger.warning("%s: %d cells, only the best %d fit a uint16 label image.",
                       name, len(prediction.cells), int(np.iinfo(np.uint16).max))
    base = os.path.join(output_dir, name)
    contents = {
        base + "_labels.tif": encode_image(labels, ".tif", compression="zlib"),
        base + "_overlay.png": encode_image(overlay_image(image_rgb, labels), ".png"),
        base + "_cells.csv": _encode_csv(_cell_rows(prediction, labels, list(class_names))),
    }
    if activations:
        figure = activation_figure(prediction, image_rgb)
        if figure is None:
            figure = np.full((40, 320, 3), 255, np.uint8)
            cv2.putText(figure, "no cell predicted", (8, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
        contents[base + "_activations.png"] = encode_image(figure, ".png")
    write_file_set(contents)
    return labels


def write_coco_results(path, description, images, annotations, class_names):
    """Write the run's COCO json (``images``, ``annotations``, one category per class
    name, ids from 1) atomically to ``path``.

    Raises:
        FileSetWriteError: naming the file and why.
    """
    coco = {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
    }
    write_file_set({path: json.dumps(coco).encode()})


# What one image's prediction writes (<name> + suffix), and the run's COCO json.
OUTPUT_SUFFIXES = ("_labels.tif", "_overlay.png", "_cells.csv", "_activations.png")
COCO_RESULTS = "coco_results.json"


def previous_outputs(path):
    """The prediction files (per-image outputs and ``coco_results.json``) already in
    folder ``path``, sorted; other files are not the prediction's."""
    if not os.path.isdir(path):
        return []
    return sorted(os.path.join(path, f) for f in os.listdir(path)
                  if f == COCO_RESULTS or f.endswith(OUTPUT_SUFFIXES))


def remove_previous_outputs(path):
    """Delete the prediction files of an earlier run in ``path`` (``--overwrite``);
    returns how many. Other files are left alone."""
    files = previous_outputs(path)
    for f in files:
        os.remove(f)
    return len(files)


def prepare_output_dir(path, overwrite=False):
    """Create ``path`` if needed and check that files can be written into it.

    A folder that already holds predictions is refused without ``overwrite``: the
    earlier run's files would stay beside the new ones, and ``coco_results.json``
    would list only the new images.

    Raises:
        PredictionError: it is a file, lies under a file, cannot be created or written,
            or holds an earlier run's predictions and ``overwrite`` is off.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise PredictionError(f"--output '{path}' is a file; give a folder.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise PredictionError(f"--output '{path}' lies under the file '{parent}'; give a folder.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise PredictionError(f"--output '{path}' cannot be created: {e.strerror or e}.") from e
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise PredictionError(f"--output '{path}' cannot be written: {e.strerror or e}.") from e
    earlier = previous_outputs(path)
    if earlier and not overwrite:
        raise PredictionError(
            f"--output '{path}' already holds predictions ({len(earlier)} file(s), e.g. "
            f"'{os.path.basename(earlier[0])}'); pass --overwrite to replace them, or give "
            "another folder."
        )
