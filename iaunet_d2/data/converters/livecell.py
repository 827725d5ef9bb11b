"""LIVECell -> LIVECell-crop: crops of a fixed size holding a bounded number of cells,
each cell cut by a crop border kept as its visible part."""
import os
from typing import Dict

import numpy as np

from ...io.images import ImageReadError, read_raw_image
from ...io.rle import annotation_mask
from ...io.writers import write_image, write_json
from ...utils.windows import tile_windows
from .coco import ConversionError, ConversionReport, cell_annotation, coco_dict, load_coco

__all__ = ["convert_livecell_crop"]


def _find_image(image_root, file_name, index):
    """The image file of a json ``file_name``: under ``image_root``, else by its base
    name in ``index`` (None until the folder has been indexed)."""
    path = os.path.join(image_root, file_name)
    if os.path.isfile(path):
        return path
    if index is None:
        return None
    return index.get(os.path.basename(file_name))


def _index_files(image_root):
    """basename -> path for every file below image_root (LIVECell copies differ in
    whether images sit in per-cell-type sub-folders)."""
    index = {}
    for folder, _, names in os.walk(image_root):
        for name in names:
            index.setdefault(name, os.path.join(folder, name))
    return index


def _read_pixels(path):
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

    Crop windows start every ``stride`` px (default ``size``), the last one moved back
    to end at the image border (:func:`iaunet_d2.utils.windows.tile_windows`).
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
    Raises:
        ConversionError: ``json_path`` cannot be read (nothing is written).
    """
    data = load_coco(json_path)
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
            index = _index_files(image_root)
            path = _find_image(image_root, image["file_name"], index)
        if path is None:
            report.failed.append((os.path.join(image_root, image["file_name"]), "image file not found"))
            continue
        try:
            pixels = _read_pixels(path)
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
                crop_annos.append(cell_annotation(len(annotations) + len(crop_annos) + 1, image_id,
                                                  part, 0, 0, h, w))
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
    write_json(coco_dict(images, annotations, f"LIVECell-crop from {os.path.basename(json_path)}"),
               output_json)
    return report
