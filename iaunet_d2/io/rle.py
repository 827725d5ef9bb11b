"""Masks and COCO segmentations: compressed RLE, polygons, boxes (via pycocotools).

Every mask written to a COCO json by the project goes through :func:`crop_annotation`
(or :func:`mask_to_rle`): compressed RLE with ``counts`` as an ASCII string, area in
pixels and the box of the mask's extent as XYWH floats.
"""
import numpy as np
import pycocotools.mask as mask_util

__all__ = [
    "annotation_mask",
    "crop_annotation",
    "crop_box",
    "crop_to_rle",
    "mask_to_rle",
    "polygons_to_rle",
]


def mask_to_rle(mask):
    """Compressed COCO RLE of a (H, W) binary mask: {"size": [H, W], "counts": str}."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def crop_to_rle(crop, y0, x0, height, width):
    """RLE of a mask given as its (h, w) bool crop at (y0, x0) in a (height, width)
    image; {"size": [height, width], "counts": str}.

    Runs are computed from the crop's pixels only (O(area) instead of O(H*W) per
    cell, which matters for images with thousands of cells).
    """
    cols, rows = np.nonzero(crop.T)  # sorted by column, then row: COCO's Fortran order
    if cols.size == 0:
        return {"size": [height, width], "counts": mask_util.encode(
            np.zeros((height, width), np.uint8, order="F"))["counts"].decode("ascii")}
    pos = (cols.astype(np.int64) + x0) * height + (rows.astype(np.int64) + y0)
    breaks = np.nonzero(np.diff(pos) != 1)[0]
    starts = np.concatenate([[pos[0]], pos[breaks + 1]])
    ends = np.concatenate([pos[breaks] + 1, [pos[-1] + 1]])
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]  # COCO RLE starts with a run of zeros
    counts[1::2] = ends - starts
    counts[2::2][: starts.size - 1] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    rle = mask_util.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def crop_box(crop, y0, x0):
    """XYWH box (floats) of the pixels of a non-empty (h, w) bool crop at (y0, x0)."""
    rows = np.nonzero(crop.any(axis=1))[0]
    cols = np.nonzero(crop.any(axis=0))[0]
    return [float(x0 + cols[0]), float(y0 + rows[0]),
            float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def crop_annotation(crop, y0, x0, height, width):
    """The mask fields of a COCO annotation of a non-empty (h, w) bool crop at
    (y0, x0) in a (height, width) image.

    Returns:
        dict: "segmentation" (compressed RLE of the whole image), "area" (int,
        pixels) and "bbox" (XYWH floats), in this order.
    """
    return {
        "segmentation": crop_to_rle(crop, y0, x0, height, width),
        "area": int(np.count_nonzero(crop)),
        "bbox": crop_box(crop, y0, x0),
    }


def polygons_to_rle(polygons, height, width):
    """One compressed RLE (``counts`` as bytes) of the union of COCO polygons
    (each a flat [x0, y0, x1, y1, ...] list) in a (height, width) image."""
    polygons = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in polygons]
    return mask_util.merge(mask_util.frPyObjects(polygons, height, width))


def annotation_mask(anno, height, width):
    """(H, W) bool mask of a COCO annotation's segmentation: polygons (those with
    fewer than three points are ignored), uncompressed or compressed RLE."""
    seg = anno["segmentation"]
    if isinstance(seg, list):
        polygons = [p for p in seg if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = polygons_to_rle(polygons, height, width)
    elif isinstance(seg.get("counts"), list):
        rle = mask_util.frPyObjects(seg, height, width)
    else:
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_util.decode(rle).astype(bool)
