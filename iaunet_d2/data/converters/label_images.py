"""Instance label images (one integer id per cell, 0 = background) to COCO json, and
COCO annotations back to a label image."""
import os

import numpy as np

from ...io.images import ImageReadError, list_images, read_image
from ...io.labels import LABEL_SUFFIXES, pair_with_labels, read_label_image
from ...io.rle import annotation_mask
from ...io.writers import write_json
from .coco import ConversionError, ConversionReport, cell_annotation, coco_dict

__all__ = [
    "annotations_to_label_image",
    "convert_label_folder",
    "labels_to_annotations",
    "relabel_sequential",
]


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
        crop = sequential[region] == index + 1
        anno = cell_annotation(first_annotation_id + len(annotations), image_id, crop,
                               region[0].start, region[1].start, height, width)
        anno["label_id"] = int(original_ids[index])
        annotations.append(anno)
    return annotations


def annotations_to_label_image(annotations, height, width):
    """Paint COCO annotations (RLE or polygons) into a uint16 (H, W) label image, ids
    1..N in the given order (a later annotation wins where masks overlap)."""
    out = np.zeros((height, width), dtype=np.uint16)
    for k, anno in enumerate(annotations, start=1):
        out[annotation_mask(anno, height, width)] = k
    return out


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
    (see :func:`iaunet_d2.io.labels.find_label_file`; ``label_dir`` may equal
    ``image_dir``, files that are themselves labels of another image are not taken as
    images). Label ids need not be contiguous (reported as a warning). Empty label
    images give images without annotations (reported). Images with more than
    ``max_instances`` cells are left out.

    Args:
        image_root: folder the json ``file_name`` is relative to (default ``image_dir``).
        channel: passed to ``read_image`` for multi-channel images (only the size is used).
    Returns:
        ConversionReport. The json is written (atomically) even if some files failed.
    Raises:
        ConversionError: ``image_dir`` or ``label_dir`` does not exist (nothing is
            written).
    """
    image_root = image_dir if image_root is None else image_root
    report = ConversionReport()
    if not os.path.isdir(image_dir):
        raise ConversionError(f"Image folder '{image_dir}' does not exist.")
    if not os.path.isdir(label_dir):
        raise ConversionError(f"Label folder '{label_dir}' does not exist.")
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
    write_json(coco_dict(images, annotations, description), output_json)
    return report


def _convert_pair(image_path, label_path, image_id, first_annotation_id, image_root, channel, report):
    """(json image record, annotations) of one image and its label image; warnings
    go to ``report``. Raises ConversionError naming the file."""
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
