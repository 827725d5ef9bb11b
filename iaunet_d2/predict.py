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
import argparse
import csv
import glob
import io
import json
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import cv2
import numpy as np
import torch

import iaunet_d2  # noqa: F401  (compatibility fixes and registrations first)
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .data.converters import (
    IMAGE_EXTENSIONS, LABEL_SUFFIXES, _crop_to_rle, find_label_file, tile_windows, write_json_atomic,
)
from .data.dataset_mappers.cell_instance_mapper import build_cell_augmentations
from .data.image_io import ImageReadError, read_image
from .engine import AtomicCheckpointer, build_config
from .engine.checkpoint import CheckpointReadError
from .engine.checkpoint import WeightsMismatchError as CheckpointMismatch
from .utils.file_io import FileSetWriteError, write_file_set

__all__ = [
    "PredictionError",
    "WeightsMismatchError",
    "CellPrediction",
    "ImagePrediction",
    "collect_inputs",
    "build_predict_config",
    "load_predictor",
    "predict_image",
    "merge_tile_predictions",
    "label_image",
    "write_outputs",
    "main",
]

logger = logging.getLogger(__name__)

# Two predictions from different tiles are the same cell when their masks overlap with
# IoU above this inside the region both tiles saw.
TILE_MATCH_IOU = 0.5
# Cells shown in an activation-map figure (the best-scoring ones).
MAX_ACTIVATION_ROWS = 48
# Smaller images hold no cell the models can segment (they would be upscaled to
# INPUT.IMAGE_SIZE and give meaningless cells).
MIN_IMAGE_SIZE = 16
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
_THUMB = 96  # activation-map panel height in pixels


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
    """All cells of one image, by decreasing score, plus what the figures need."""

    height: int
    width: int
    cells: List[CellPrediction]
    windows: List[Tuple[int, int, int, int]]  # (y0, x0, h, w) of each tile
    activations: List[Optional[list]] = field(default_factory=list)  # per tile: levels of (N, h, w)


# ----------------------------------------------------------------------------- inputs
def collect_inputs(specs):
    """Image files named by ``specs`` (one string or several): files, folders (their
    images, not recursive, without the label images ``<name>_masks.tif`` etc. of their
    other images) or glob patterns. Returns a sorted list without duplicates.

    Raises:
        PredictionError: a spec names nothing, or no image at all is found.
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
    paths = []
    for spec in specs:
        found = _images_of(spec)
        if not found:
            hint = ""
            if _CONFIG_KEY.match(spec):
                hint = " It looks like a config key: put KEY VALUE overrides last, after all options."
            raise PredictionError(
                f"--input '{spec}' names no image: give files, folders holding "
                f"{'/'.join(IMAGE_EXTENSIONS)} files, or glob patterns.{hint}"
            )
        paths += found
    return sorted({os.path.abspath(p): p for p in paths}.values())


def _images_of(spec):
    if os.path.isdir(spec):
        paths = [os.path.join(spec, n) for n in os.listdir(spec)
                 if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(spec, n))]
        # A training-style folder keeps <name>_masks.tif next to <name>.tif: not an input.
        labels = {os.path.abspath(p) for p in (find_label_file(p, spec, LABEL_SUFFIXES[1:]) for p in paths) if p}
        if labels:
            logger.info("--input '%s': left out %d label image(s) of other images (e.g. %s).",
                        spec, len(labels), os.path.basename(sorted(labels)[0]))
            paths = [p for p in paths if os.path.abspath(p) not in labels]
        return paths
    if os.path.isfile(spec):
        return [spec]
    return [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]


def _output_names(paths):
    """A distinct output name per input: its stem, plus the extension or an index
    where stems collide (a.tif and a.png, or same names in several folders)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names = []
    for path, stem in zip(paths, stems):
        name = stem if stems.count(stem) == 1 else f"{stem}_{os.path.splitext(path)[1][1:].lower()}"
        names.append(name)
    seen = {}
    for i, name in enumerate(names):
        if names.count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            names[i] = f"{name}_{seen[name]}"
    return names


# ------------------------------------------------------------------------ model set-up
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


def load_predictor(cfg):
    """Build the model of ``cfg`` in eval mode and load ``cfg.MODEL.WEIGHTS`` strictly
    (:meth:`AtomicCheckpointer.load_weights`, the loader ``train_net.py --eval-only``
    uses too).

    Raises:
        PredictionError: the weights file is missing or unreadable.
        WeightsMismatchError: parameters missing from the file, unexpected ones, or
            different shapes (the file was trained with another config).
    """
    model = build_model(cfg)
    model.eval()
    try:
        AtomicCheckpointer(model).load_weights(cfg.MODEL.WEIGHTS, strict=True)
    except CheckpointMismatch as e:
        raise WeightsMismatchError(str(e)) from e
    except CheckpointReadError as e:
        raise PredictionError(str(e)) from e
    return model


# ------------------------------------------------------------------------- prediction
def _run_model(model, image, augmentation):
    """One forward pass on an (h, w, 3) uint8 image; results at (h, w).

    Returns:
        (Instances, activation maps or None) of that image.
    """
    aug_input = T.AugInput(image)
    augmentation(aug_input)
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
    inputs = [{"image": tensor, "height": image.shape[0], "width": image.shape[1]}]
    with torch.no_grad():
        result = model(inputs)[0]
    return result["instances"].to("cpu"), result.get("activation_maps")


def _instances_to_cells(instances, window, image_size, tile_index):
    """Instances of a tile -> CellPredictions in image coordinates (empty masks dropped)."""
    y0, x0, h, w = window
    height, width = image_size
    masks = instances.pred_masks
    masks = (masks if masks.dtype == torch.bool else masks > 0.5).numpy()
    scores = instances.scores.numpy()
    classes = instances.pred_classes.numpy() if instances.has("pred_classes") else np.zeros(len(scores), int)
    queries = instances.pred_query_idx.numpy() if instances.has("pred_query_idx") else np.full(len(scores), -1)
    # Tile borders that are not image borders: a mask touching one is cut.
    inner = (y0 > 0, y0 + h < height, x0 > 0, x0 + w < width)
    cells = []
    for k in range(masks.shape[0]):
        rows = np.nonzero(masks[k].any(axis=1))[0]
        if rows.size == 0:
            continue
        cols = np.nonzero(masks[k].any(axis=0))[0]
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        touches = (r0 == 0, r1 == h, c0 == 0, c1 == w)
        cells.append(CellPrediction(
            y0=int(y0 + r0), x0=int(x0 + c0), mask=masks[k, r0:r1, c0:c1].copy(),
            score=float(scores[k]), category=int(classes[k]), tile=tile_index,
            cut=any(t and i for t, i in zip(touches, inner)), query=int(queries[k]),
        ))
    return cells


def _window_masks(cells, window):
    """Masks of ``cells`` restricted to ``window`` (y0, x0, h, w), flattened: float32 (K, h*w)."""
    wy, wx, wh, ww = window
    out = np.zeros((len(cells), wh, ww), dtype=np.float32)
    for k, c in enumerate(cells):
        ys, xs = max(c.y0, wy), max(c.x0, wx)
        ye, xe = min(c.y0 + c.mask.shape[0], wy + wh), min(c.x0 + c.mask.shape[1], wx + ww)
        if ys < ye and xs < xe:
            out[k, ys - wy:ye - wy, xs - wx:xe - wx] = c.mask[ys - c.y0:ye - c.y0, xs - c.x0:xe - c.x0]
    return out.reshape(len(cells), -1)


def _intersect(a, b):
    """Intersection of two (y0, x0, h, w) windows, or None."""
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return (y0, x0, y1 - y0, x1 - x0) if y0 < y1 and x0 < x1 else None


def _union_cells(cells):
    """One cell whose mask is the union of ``cells``' masks (pieces of a cut cell)."""
    y0 = min(c.y0 for c in cells)
    x0 = min(c.x0 for c in cells)
    y1 = max(c.y0 + c.mask.shape[0] for c in cells)
    x1 = max(c.x0 + c.mask.shape[1] for c in cells)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for c in cells:
        mask[c.y0 - y0:c.y0 - y0 + c.mask.shape[0], c.x0 - x0:c.x0 - x0 + c.mask.shape[1]] |= c.mask
    best = max(cells, key=lambda c: c.score)
    return CellPrediction(y0=y0, x0=x0, mask=mask, score=best.score, category=best.category,
                          tile=best.tile, cut=True, query=best.query)


def merge_tile_predictions(cells, windows, match_iou=TILE_MATCH_IOU):
    """Merge the cells predicted in overlapping tiles into one set without duplicates.

    Rule: two cells of different tiles (same class) are the same cell when, inside the
    region both tiles saw, their masks overlap with IoU > ``match_iou``; matches are
    joined best-first into groups holding at most one cell per tile (a cell appears
    once in a tile). A group keeps its best-scoring cell that no tile border cuts; if
    every member is cut (a cell larger than the overlap), the union of the pieces.
    An unmatched cut cell is kept as it is (it only reaches into the border region).

    Args:
        cells: CellPredictions with ``tile`` = index into ``windows``.
        windows: (y0, x0, h, w) of each tile.
    Returns:
        list of CellPredictions by decreasing score.
    """
    by_tile = {}
    for i, c in enumerate(cells):
        by_tile.setdefault(c.tile, []).append(i)
    matches = []  # (iou, i, j)
    tiles = sorted(by_tile)
    for ai, a in enumerate(tiles):
        for b in tiles[ai + 1:]:
            shared = _intersect(windows[a], windows[b])
            if shared is None:
                continue
            ia = [i for i in by_tile[a] if _intersect(_cell_box(cells[i]), shared)]
            ib = [j for j in by_tile[b] if _intersect(_cell_box(cells[j]), shared)]
            if not ia or not ib:
                continue
            ma = _window_masks([cells[i] for i in ia], shared)
            mb = _window_masks([cells[j] for j in ib], shared)
            inter = ma @ mb.T
            union = ma.sum(1)[:, None] + mb.sum(1)[None, :] - inter
            iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
            for r, s in zip(*np.nonzero(iou > match_iou)):
                i, j = ia[r], ib[s]
                if cells[i].category == cells[j].category:
                    matches.append((float(iou[r, s]), i, j))

    parent = list(range(len(cells)))
    tiles_of = [{c.tile} for c in cells]

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, i, j in sorted(matches, key=lambda m: -m[0]):
        ri, rj = root(i), root(j)
        if ri != rj and not (tiles_of[ri] & tiles_of[rj]):
            parent[rj] = ri
            tiles_of[ri] |= tiles_of[rj]

    groups = {}
    for i in range(len(cells)):
        groups.setdefault(root(i), []).append(cells[i])
    merged = []
    for members in groups.values():
        whole = [c for c in members if not c.cut]
        if whole:
            merged.append(max(whole, key=lambda c: c.score))
        elif len(members) == 1:
            merged.append(members[0])
        else:
            merged.append(_union_cells(members))
    merged.sort(key=lambda c: -c.score)
    return merged


def _cell_box(cell):
    return (cell.y0, cell.x0, cell.mask.shape[0], cell.mask.shape[1])


def predict_image(model, image, augmentation, tile_size, tile_overlap, tile=True,
                  keep_activations=False, match_iou=TILE_MATCH_IOU):
    """Predict the cells of one image, tiling it when it is larger than ``tile_size``.

    Args:
        model: callable on Detectron2's list-of-dicts input returning
            ``[{"instances": Instances(pred_masks, scores, ...)}]`` (eval mode).
        image: uint8 (H, W, 3) in the model's channel order.
        augmentation: ``T.AugmentationList`` of the test-time augmentation.
        tile_size: tile side (the model's INPUT.IMAGE_SIZE).
        tile_overlap: pixels shared by neighbouring tiles (< tile_size).
        tile: False to predict the whole image at once (resized by ``augmentation``).
        keep_activations: keep each tile's "activation_maps" (IAUNet with
            ``return_activation_maps``).
    Returns:
        ImagePrediction.
    """
    height, width = image.shape[:2]
    if not tile or max(height, width) <= tile_size:
        windows = [(0, 0, height, width)]
    else:
        if not 0 <= tile_overlap < tile_size:
            raise ValueError(f"tile overlap {tile_overlap} must be in [0, {tile_size})")
        windows = tile_windows(height, width, tile_size, tile_size - tile_overlap)
    cells, activations = [], []
    for index, (y0, x0, h, w) in enumerate(windows):
        crop = np.ascontiguousarray(image[y0:y0 + h, x0:x0 + w])
        instances, maps = _run_model(model, crop, augmentation)
        cells += _instances_to_cells(instances, (y0, x0, h, w), (height, width), index)
        activations.append(maps if keep_activations else None)
    if len(windows) > 1:
        cells = merge_tile_predictions(cells, windows, match_iou)
    else:
        cells.sort(key=lambda c: -c.score)
    return ImagePrediction(height, width, cells, windows, activations)


# ---------------------------------------------------------------------------- outputs
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


def _colours(n):
    """(n + 1, 3) uint8 RGB colours, index 0 black; distinct hues by the golden ratio."""
    hues = (np.arange(n) * 0.618033988749895 % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 200, np.uint8), np.full(n, 255, np.uint8)], 1)[None]
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0] if n else np.zeros((0, 3), np.uint8)
    return np.concatenate([np.zeros((1, 3), np.uint8), rgb])


def overlay_image(image_rgb, labels, alpha=0.4):
    """(H, W, 3) uint8 RGB: cells tinted with their colour and outlined."""
    colours = _colours(int(labels.max()))
    tint = colours[labels]
    fg = labels > 0
    out = image_rgb.astype(np.float32)
    out[fg] = (1 - alpha) * out[fg] + alpha * tint[fg]
    edge = np.zeros_like(fg)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge &= fg
    out[edge] = tint[edge]
    return out.astype(np.uint8)


def _cell_rows(prediction, labels, class_names):
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


def _coco_annotations(prediction, image_id, first_id):
    anns = []
    for k, c in enumerate(prediction.cells[:np.iinfo(np.uint16).max]):
        ys, xs = np.nonzero(c.mask)
        anns.append({
            "id": first_id + k,
            "image_id": image_id,
            "category_id": c.category + 1,
            "segmentation": _crop_to_rle(c.mask, c.y0, c.x0, prediction.height, prediction.width),
            "area": int(ys.size),
            "bbox": [float(c.x0 + xs.min()), float(c.y0 + ys.min()),
                     float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
            "score": float(c.score),
            "iscrowd": 0,
        })
    return anns


def _encode_png(rgb):
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def _encode_tiff(array):
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib")
    return buffer.getvalue()


def _encode_csv(rows):
    columns = ["id", "score", "class", "area", "visible_area", "centroid_x", "centroid_y",
               "bbox_x", "bbox_y", "bbox_w", "bbox_h"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _panel(array, size):
    """Resize a 2-D float/bool array to (h, w) = size and colour it (RGB uint8)."""
    a = np.asarray(array, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    a = cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap((a * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    return coloured[..., ::-1]


def activation_figure(prediction, image_rgb, max_rows=MAX_ACTIVATION_ROWS):
    """Grid of the best ``max_rows`` cells: per row the cell's tile, its query's IA
    activation map at each decoder level (coarse to fine, each normalized to its own
    min..max, viridis) and its mask on the tile.

    Returns:
        uint8 RGB (rows * 96 + header, columns * panel width + margin, 3), or None
        when there is no cell with a known query and activation maps.
    """
    rows, n_levels = [], 0
    for k, c in enumerate(prediction.cells[:max_rows], start=1):
        maps = prediction.activations[c.tile] if c.tile < len(prediction.activations) else None
        if maps is None or c.query < 0:
            continue
        wy, wx, wh, ww = prediction.windows[c.tile]
        size = (_THUMB, max(16, min(3 * _THUMB, round(_THUMB * ww / wh))))
        tile_rgb = cv2.resize(image_rgb[wy:wy + wh, wx:wx + ww], (size[1], size[0]))
        mask = np.zeros((wh, ww), dtype=np.float32)
        ys, xs = max(c.y0, wy), max(c.x0, wx)
        ye, xe = min(c.y0 + c.mask.shape[0], wy + wh), min(c.x0 + c.mask.shape[1], wx + ww)
        mask[ys - wy:ye - wy, xs - wx:xe - wx] = c.mask[ys - c.y0:ye - c.y0, xs - c.x0:xe - c.x0]
        mask_small = cv2.resize(mask, (size[1], size[0])) > 0.5
        mask_panel = tile_rgb.copy()
        mask_panel[mask_small] = (0.4 * mask_panel[mask_small] + 0.6 * np.array([255, 60, 60])).astype(np.uint8)
        n_levels = len(maps)
        panels = [tile_rgb] + [_panel(level[c.query].float().numpy(), size) for level in maps] + [mask_panel]
        row = np.concatenate([np.pad(p, ((1, 1), (1, 1), (0, 0)), constant_values=255) for p in panels], 1)
        label = np.full((row.shape[0], 70, 3), 255, np.uint8)
        cv2.putText(label, f"#{k}", (4, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        cv2.putText(label, f"{c.score:.2f}", (4, 55), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        rows.append(np.concatenate([label, row], 1))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    header = np.full((24, width, 3), 255, np.uint8)
    cv2.putText(header, f"cell | tile | IA maps, {n_levels} level(s) coarse->fine | mask",
                (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return np.concatenate([header] + rows, 0)


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
        base + "_labels.tif": _encode_tiff(labels),
        base + "_overlay.png": _encode_png(overlay_image(image_rgb, labels)),
        base + "_cells.csv": _encode_csv(_cell_rows(prediction, labels, list(class_names))),
    }
    if activations:
        figure = activation_figure(prediction, image_rgb)
        if figure is None:
            figure = np.full((40, 320, 3), 255, np.uint8)
            cv2.putText(figure, "no cell predicted", (8, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
        contents[base + "_activations.png"] = _encode_png(figure)
    write_file_set(contents)
    return labels


def prepare_output_dir(path):
    """Create ``path`` if needed and check that files can be written into it.

    Raises:
        PredictionError: it is a file, lies under a file, cannot be created or written.
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


# -------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m iaunet_d2.predict",
        description="Predict cell instances with a trained IAUNet / Mask R-CNN / PointRend model.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config (yaml)")
    parser.add_argument("--weights", metavar="FILE", help="trained weights (.pth); default MODEL.WEIGHTS")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files, folders or glob patterns (several allowed)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--channel", type=int, default=None,
                        help="channel of multi-channel images to use, as grayscale (index; gray "
                             "images are read as they are)")
    parser.add_argument("--plane", type=int, default=None,
                        help="plane of Z-stacks / time series to use (index; 2-D images are "
                             "read as they are)")
    parser.add_argument("--tile-overlap", type=int, default=None,
                        help="overlap of neighbouring tiles in pixels (default INPUT.IMAGE_SIZE // 4)")
    parser.add_argument("--resize", action="store_true",
                        help="resize each whole image to INPUT.IMAGE_SIZE as in evaluation, no tiles")
    parser.add_argument("--save-activations", action="store_true",
                        help="also write <name>_activations.png (IAUNet only)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.DEVICE cpu")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the CLI; returns the exit status (0 ok, 1 some images failed, 2 set-up error)."""
    from tqdm import tqdm

    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        paths = collect_inputs(args.input)
        prepare_output_dir(args.output)
        cfg = build_predict_config(args.config_file, args.weights, args.opts)
        if args.save_activations and cfg.MODEL.META_ARCHITECTURE != "IAUNet":
            raise PredictionError(
                f"--save-activations needs an IAUNet model; the config '{args.config_file}' "
                f"builds {cfg.MODEL.META_ARCHITECTURE}, which has no instance activation maps."
            )
        tile_size = int(cfg.INPUT.IMAGE_SIZE)
        overlap = tile_size // 4 if args.tile_overlap is None else args.tile_overlap
        if not 0 <= overlap < tile_size:
            raise PredictionError(f"--tile-overlap must be in [0, {tile_size}) for INPUT.IMAGE_SIZE {tile_size}.")
        model = load_predictor(cfg)
    except PredictionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.save_activations:
        model.return_activation_maps = True

    augmentation = T.AugmentationList(build_cell_augmentations(cfg, is_train=False))
    meta_names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    class_names = (MetadataCatalog.get(meta_names[0]).get("thing_classes") if meta_names else None) or ["cell"]

    images, annotations, failed, skipped = [], [], [], []
    for path, name in tqdm(list(zip(paths, _output_names(paths))), desc="predict", unit="image"):
        try:
            image = read_image(path, format=cfg.INPUT.FORMAT, channel=args.channel, plane=args.plane,
                               normalization=cfg.INPUT.INTENSITY_NORM)
        except ImageReadError as e:
            skipped.append((path, str(e)))
            tqdm.write(f"skipped: {e}", file=sys.stderr)
            continue
        if min(image.shape[:2]) < MIN_IMAGE_SIZE:
            why = (f"image is {image.shape[1]}x{image.shape[0]} px; the minimum is "
                   f"{MIN_IMAGE_SIZE} px on each side")
            skipped.append((path, why))
            tqdm.write(f"skipped '{path}': {why}", file=sys.stderr)
            continue
        try:
            prediction = predict_image(model, image, augmentation, tile_size, overlap,
                                       tile=not args.resize, keep_activations=args.save_activations)
            rgb = image[..., ::-1] if cfg.INPUT.FORMAT == "BGR" else image
            write_outputs(prediction, np.ascontiguousarray(rgb), args.output, name, class_names,
                          activations=args.save_activations)
        except FileSetWriteError as e:
            failed.append((path, str(e)))
            tqdm.write(f"failed on '{path}': {e}", file=sys.stderr)
            continue
        except Exception as e:  # one bad image must not end the run; Ctrl-C still does
            failed.append((path, f"{type(e).__name__}: {e}"))
            tqdm.write(f"failed on '{path}': {type(e).__name__}: {e}", file=sys.stderr)
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": os.path.abspath(path), "output_name": name,
                       "height": prediction.height, "width": prediction.width})
        annotations += _coco_annotations(prediction, image_id, len(annotations) + 1)

    coco = {
        "info": {"description": f"predictions of {args.config_file} with {cfg.MODEL.WEIGHTS}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
    }
    coco_path = os.path.join(args.output, "coco_results.json")
    try:
        write_file_set({coco_path: json.dumps(coco).encode()})
    except FileSetWriteError as e:
        failed.append((coco_path, str(e)))
    print(f"{len(images)} of {len(paths)} image(s) predicted, {len(annotations)} cell(s); "
          f"{len(skipped)} skipped, {len(failed)} failed; outputs in {args.output}", file=sys.stderr)
    for label, entries in (("skipped", skipped), ("failed", failed)):
        if entries:
            print(f"{len(entries)} {label}:", file=sys.stderr)
            for path, why in entries:
                print(f"  {path}: {why}", file=sys.stderr)
    return 1 if failed or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
