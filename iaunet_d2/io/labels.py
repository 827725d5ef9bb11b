"""Instance label images: finding the label image of an image, and reading one.

A label image holds one integer id per cell and 0 for background. The label image of
``X.<ext>`` is named ``X<suffix>.<ext>`` with a suffix of :data:`LABEL_SUFFIXES` and
any image extension, in the image's folder or a folder of its own.
"""
import os

import numpy as np

from .images import IMAGE_EXTENSIONS, ImageReadError, read_raw_image

__all__ = ["LABEL_SUFFIXES", "find_label_file", "pair_with_labels", "read_label_image"]

# Suffixes after an image's stem that name its label image ("" for a folder of its own).
LABEL_SUFFIXES = ("", "_label", "_labels", "_mask", "_masks", "_seg", "_instances")


def find_label_file(image_path, label_dir, suffixes=LABEL_SUFFIXES):
    """The label image of ``image_path`` in ``label_dir``: same stem plus one of
    ``suffixes``, any image extension (lower or upper case); never the image itself.

    Returns:
        str or None: the first match, trying suffixes, then extensions, in order.
    """
    stem = os.path.splitext(os.path.basename(image_path))[0]
    for suffix in suffixes:
        for ext in IMAGE_EXTENSIONS:
            for candidate in (stem + suffix + ext, stem + suffix + ext.upper()):
                path = os.path.join(label_dir, candidate)
                if os.path.isfile(path) and os.path.abspath(path) != os.path.abspath(image_path):
                    return path
    return None


def pair_with_labels(image_paths, label_dir, suffixes=LABEL_SUFFIXES):
    """Pair images with their label images, leaving out the images that are
    themselves the label image of another (a folder holding both).

    Args:
        image_paths (list[str]): candidate images, e.g. :func:`~.images.list_images`.
        label_dir (str): the folder of the label images (may hold the images too).
        suffixes (tuple[str]): label suffixes, see :func:`find_label_file`.

    Returns:
        (dict, list): image path -> its label image path or None, in the order of
        ``image_paths`` without the label images; and the sorted absolute paths of
        the label images found.
    """
    label_of = {path: find_label_file(path, label_dir, suffixes) for path in image_paths}
    labels = {os.path.abspath(p) for p in label_of.values() if p}
    pairs = {path: label for path, label in label_of.items() if os.path.abspath(path) not in labels}
    return pairs, sorted(labels)


def read_label_image(path):
    """Read an instance label image (0 = background, one id per cell).

    Returns:
        np.ndarray (H, W) of an integer dtype, the ids as stored (bool becomes int64).

    Raises:
        ImageReadError: unreadable/corrupt file, not a 2-D single-channel image, or
            non-integer / negative values; the message names the file.
    """
    array = np.asarray(read_raw_image(path))
    if array.ndim > 2:
        array = np.squeeze(array)  # one-page stacks, (H, W, 1)
    if array.ndim == 3 and array.shape[2] in (3, 4) and (array[..., :3] == array[..., :1]).all():
        array = array[..., 0]  # an id image saved as gray RGB
    if array.ndim != 2:
        raise ImageReadError(
            f"Label image '{path}' has shape {tuple(array.shape)}; an instance label image "
            "must be 2-D (H, W) with one integer id per pixel (colour or stacked labels "
            "are not supported)."
        )
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ImageReadError(f"Label image '{path}' holds non-integer values.")
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu" and array.dtype != np.bool_:
        raise ImageReadError(f"Label image '{path}' has unsupported dtype {array.dtype}.")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise ImageReadError(f"Label image '{path}' holds negative ids.")
    return array.astype(np.int64) if array.dtype == np.bool_ else array
