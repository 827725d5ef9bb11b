"""Tiled prediction of one image: windows, a forward pass per tile, merging tiles' cells.

Images larger than the model's ``INPUT.IMAGE_SIZE`` are predicted at their own
resolution in overlapping tiles; cells seen by several tiles are merged by
:func:`merge_tile_predictions`.
"""
import numpy as np
import torch
from detectron2.data import transforms as T

from ..utils.windows import tile_windows
from .types import CellPrediction, ImagePrediction

__all__ = ["TILE_MATCH_IOU", "tile_windows", "merge_tile_predictions", "predict_image"]

# Two predictions from different tiles are the same cell when their masks overlap with
# IoU above this inside the region both tiles saw.
TILE_MATCH_IOU = 0.5


def _run_model(model, images, augmentation):
    """One forward pass on a list of (h, w, 3) uint8 images; results at each one's (h, w).

    Returns:
        list of (Instances, activation maps or None), one per image.
    """
    inputs = []
    for image in images:
        aug_input = T.AugInput(image)
        augmentation(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        inputs.append({"image": tensor, "height": image.shape[0], "width": image.shape[1]})
    with torch.no_grad():
        results = model(inputs)
    return [(r["instances"].to("cpu"), r.get("activation_maps")) for r in results]


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
                  keep_activations=False, match_iou=TILE_MATCH_IOU, batch_size=1, on_tiles=None):
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
        batch_size: tiles per forward pass (all tiles of an image have one size).
        on_tiles: called as ``on_tiles(done, total)`` before the first forward pass
            and after each one.
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cells, activations = [], []
    if on_tiles is not None:
        on_tiles(0, len(windows))
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        crops = [np.ascontiguousarray(image[y0:y0 + h, x0:x0 + w]) for y0, x0, h, w in batch]
        for index, window, (instances, maps) in zip(
                range(start, start + len(batch)), batch, _run_model(model, crops, augmentation)):
            cells += _instances_to_cells(instances, window, (height, width), index)
            activations.append(maps if keep_activations else None)
        if on_tiles is not None:
            on_tiles(start + len(batch), len(windows))
    if len(windows) > 1:
        cells = merge_tile_predictions(cells, windows, match_iou)
    else:
        cells.sort(key=lambda c: -c.score)
    return ImagePrediction(height, width, cells, windows, activations)
