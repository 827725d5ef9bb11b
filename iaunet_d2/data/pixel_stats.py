"""Pixel mean and standard deviation of a dataset, as the model sees its images.

The statistics are measured on what :func:`~iaunet_d2.io.images.read_image`
returns (uint8, 3 channels in ``INPUT.FORMAT`` order, ``INPUT.INTENSITY_NORM``, 0-255), on at most
:data:`MAX_IMAGES` images spread evenly over the split, and cached in a json file
keyed by a fingerprint of those files (path, size, modification time), so a second
run reads the cache and a changed file set is measured again. The same holds for the
dataset-level intensity range of ``INPUT.INTENSITY_NORM: "dataset"``
(:func:`cached_intensity_range`), measured on the raw values of images that are not
8-bit.
"""
import json
import logging

import numpy as np

from ..io.images import PERCENTILES, ImageReadError, fingerprint_files, read_image, read_raw_image
from ..io.writers import write_json

__all__ = ["MAX_IMAGES", "cached_intensity_range", "cached_pixel_stats", "compute_intensity_range",
           "compute_pixel_stats"]

logger = logging.getLogger(__name__)

MAX_IMAGES = 64
# Raw values taken from each image (evenly strided) for the dataset's intensity range.
_VALUES_PER_IMAGE = 100_000


def _sample(file_names, max_images):
    files = sorted(set(file_names))
    if len(files) <= max_images:
        return files
    picks = np.linspace(0, len(files) - 1, max_images).round().astype(int)
    return [files[i] for i in picks]


def compute_pixel_stats(files, image_format="BGR", normalization="percentile"):
    """Per-channel mean and std (0-255) over every pixel of ``files``.

    Unreadable files are left out; at least one must be readable.

    Returns:
        (list[float], list[float]): mean and std, 3 values each, in ``image_format``
        channel order.

    Raises:
        ValueError: no file could be read.
    """
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for path in files:
        try:
            image = read_image(path, format=image_format, normalization=normalization)
        except ImageReadError as e:
            logger.warning("Pixel statistics: left out an unreadable image: %s", e)
            continue
        pixels = image.reshape(-1, 3).astype(np.float64)
        total += pixels.sum(axis=0)
        total_sq += np.square(pixels).sum(axis=0)
        count += len(pixels)
    if count == 0:
        raise ValueError(f"Cannot measure pixel statistics: none of {len(files)} image(s) is readable.")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    # A constant image set would divide by zero in the model's normalisation.
    std = np.maximum(std, 1.0)
    return [round(float(v), 3) for v in mean], [round(float(v), 3) for v in std]


def compute_intensity_range(files):
    """The dataset-level intensity range of the images that are not 8-bit: the
    :data:`~iaunet_d2.io.images.PERCENTILES` of their raw values, pooled.

    Returns:
        (float, float) or None when every readable image is 8-bit (kept as it is).
    """
    samples = []
    for path in files:
        try:
            array = np.asarray(read_raw_image(path))
        except ImageReadError as e:
            logger.warning("Intensity range: left out an unreadable image: %s", e)
            continue
        if array.dtype in (np.uint8, np.bool_):
            continue
        values = array.astype(np.float64).ravel()
        values = values[np.isfinite(values)]
        step = max(1, values.size // _VALUES_PER_IMAGE)
        samples.append(values[::step])
    if not samples:
        return None
    low, high = np.percentile(np.concatenate(samples), PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def cached_intensity_range(file_names, cache_file, max_images=MAX_IMAGES):
    """:func:`compute_intensity_range` on a sample of ``file_names``, cached like
    :func:`cached_pixel_stats`. Returns (low, high) or None (all images 8-bit)."""
    files = _sample(file_names, max_images)
    key = "range|" + fingerprint_files(files, "raw")
    cache = _read_cache(cache_file)
    if key in cache:
        entry = cache[key]
        logger.info("Intensity range from %s: %s.", cache_file, entry["range"])
        return tuple(entry["range"]) if entry["range"] else None
    logger.info("Measuring the intensity range of %d of %d training image(s)...", len(files), len(set(file_names)))
    value_range = compute_intensity_range(files)
    logger.info("Intensity range: %s (cached in %s).", value_range or "all images are 8-bit", cache_file)
    cache[key] = {"range": list(value_range) if value_range else None, "images": len(files)}
    _write_cache(cache, cache_file)
    return value_range


def _read_cache(cache_file):
    try:
        with open(cache_file) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(cache, cache_file):
    try:
        write_json(cache, cache_file, indent=1)
    except OSError as e:
        logger.warning("Cannot write the cache %s: %s", cache_file, e)


def cached_pixel_stats(file_names, cache_file, image_format="BGR", normalization="percentile",
                       max_images=MAX_IMAGES):
    """:func:`compute_pixel_stats` on a sample of ``file_names``, cached in ``cache_file``.

    The cache (json, one entry per fingerprint) is reused when the sampled files and
    format are unchanged. A cache that cannot be written is reported and skipped.

    Returns:
        (list[float], list[float]): mean and std.
    """
    files = _sample(file_names, max_images)
    key = fingerprint_files(files, f"{image_format}|{normalization}")
    cache = _read_cache(cache_file)
    entry = cache.get(key)
    if entry:
        logger.info("Pixel statistics from %s: mean %s, std %s.", cache_file, entry["mean"], entry["std"])
        return entry["mean"], entry["std"]
    logger.info("Measuring pixel statistics on %d of %d training image(s)...", len(files), len(set(file_names)))
    mean, std = compute_pixel_stats(files, image_format, normalization)
    logger.info("Pixel statistics: mean %s, std %s (cached in %s).", mean, std, cache_file)
    cache[key] = {"mean": mean, "std": std, "images": len(files), "format": image_format,
                  "normalization": normalization}
    _write_cache(cache, cache_file)
    return mean, std
