"""Pixel mean and standard deviation of a dataset, as the model sees its images.

The statistics are measured on what :func:`~iaunet_d2.data.image_io.read_image`
returns (uint8, 3 channels in ``INPUT.FORMAT`` order, 0-255 scale), on at most
:data:`MAX_IMAGES` images spread evenly over the split, and cached in a json file
keyed by a fingerprint of those files (path, size, modification time), so a second
run reads the cache and a changed file set is measured again.
"""
import hashlib
import json
import logging
import os

import numpy as np

from ..utils.file_io import atomic_write
from .image_io import ImageReadError, read_image

__all__ = ["MAX_IMAGES", "compute_pixel_stats", "cached_pixel_stats"]

logger = logging.getLogger(__name__)

MAX_IMAGES = 64


def _sample(file_names, max_images):
    files = sorted(set(file_names))
    if len(files) <= max_images:
        return files
    picks = np.linspace(0, len(files) - 1, max_images).round().astype(int)
    return [files[i] for i in picks]


def _fingerprint(files, image_format):
    digest = hashlib.sha1(image_format.encode())
    for path in files:
        try:
            st = os.stat(path)
            digest.update(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{os.path.abspath(path)}|missing\n".encode())
    return digest.hexdigest()


def compute_pixel_stats(files, image_format="BGR"):
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
            image = read_image(path, format=image_format)
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


def cached_pixel_stats(file_names, cache_file, image_format="BGR", max_images=MAX_IMAGES):
    """:func:`compute_pixel_stats` on a sample of ``file_names``, cached in ``cache_file``.

    The cache (json, one entry per fingerprint) is reused when the sampled files and
    format are unchanged. A cache that cannot be written is reported and skipped.

    Returns:
        (list[float], list[float]): mean and std.
    """
    files = _sample(file_names, max_images)
    key = _fingerprint(files, image_format)
    cache = {}
    if os.path.isfile(cache_file):
        try:
            with open(cache_file) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
    entry = cache.get(key) if isinstance(cache, dict) else None
    if entry:
        logger.info("Pixel statistics from %s: mean %s, std %s.", cache_file, entry["mean"], entry["std"])
        return entry["mean"], entry["std"]
    logger.info("Measuring pixel statistics on %d of %d training image(s)...", len(files), len(set(file_names)))
    mean, std = compute_pixel_stats(files, image_format)
    logger.info("Pixel statistics: mean %s, std %s (cached in %s).", mean, std, cache_file)
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"mean": mean, "std": std, "images": len(files), "format": image_format}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
        atomic_write(cache_file, lambda f: json.dump(cache, f, indent=1), mode="w")
    except OSError as e:
        logger.warning("Cannot cache pixel statistics in %s: %s", cache_file, e)
    return mean, std
