"""A small synthetic brightfield cell dataset, generated on first use.

``cells_demo_train`` (48 images) and ``cells_demo_val`` (16 images) let every part of
the project (training, evaluation, benchmarks, tests) run without downloading data.
Each 256x256 8-bit grayscale image holds 5-25 cells of radius ~8-30 px with irregular
outlines, a dark membrane rim, textured cytoplasm and a nucleus, on an unevenly lit,
noisy background. Cells touch and overlap.

Masks are *amodal*: every instance's mask is its whole cell, including the part that
lies under another cell, as in the overlapping-cytoplasm setting of the IAUNet paper
(Revvity-25). The image is rendered like a thin absorbing specimen (optical densities
of overlapping cells add up), so both outlines stay visible where cells overlap.

Files, under ``<root>/cells_demo/`` (``root`` = ``$DETECTRON2_DATASETS``)::

    train/000.png ... 047.png      val/000.png ... 015.png
    annotations/train.json         annotations/val.json     (COCO, RLE masks)

Generation is deterministic (fixed seeds; identical bytes on every run) and atomic:
both splits are written to a temporary folder next to ``cells_demo/`` that is renamed
into place only when complete. An interrupted generation leaves no ``cells_demo/`` and
is redone; when two processes generate at once, the first rename wins and the other
discards its copy.
"""
import json
import logging
import os
import shutil
import tempfile

import cv2
import numpy as np

from ...io.rle import crop_annotation

__all__ = [
    "DEMO_DIRNAME",
    "DEMO_SPLITS",
    "ensure_cells_demo",
    "generate_cells_demo",
    "render_demo_image",
]

logger = logging.getLogger(__name__)

DEMO_DIRNAME = "cells_demo"
# split -> (number of images, seed). Seeds differ so val images are new samples.
DEMO_SPLITS = {"train": (48, 2024), "val": (16, 2025)}
IMAGE_SIZE = 256
# Bumped whenever the rendering changes, so stale copies are regenerated.
DEMO_VERSION = 1
_VERSION_FILE = "VERSION"


def render_demo_image(rng, size=IMAGE_SIZE, num_cells=None, min_radius=8.0, max_radius=30.0):
    """Render one synthetic brightfield image and its amodal instance masks.

    Args:
        rng (np.random.Generator): source of all randomness.
        size (int): image height and width.
        num_cells (int or None): cells to place; drawn from 5..25 when None. Fewer
            may be placed when the image is too crowded.
        min_radius, max_radius (float): range of mean cell radii in pixels (drawn
            log-uniformly, so small and large cells are equally common).

    Returns:
        image (np.ndarray): uint8, shape (size, size), grayscale.
        masks (list[np.ndarray]): one bool array of shape (size, size) per cell,
            each non-empty; masks of overlapping cells overlap.
    """
    if num_cells is None:
        num_cells = int(rng.integers(5, 26))

    cells = _place_cells(rng, size, num_cells, min_radius, max_radius)
    texture = _smooth_noise(rng, size, sigma=1.2)  # granular cytoplasm, shared field
    density = np.zeros((size, size), np.float32)  # optical density, adds over cells
    masks = []
    for cell in cells:
        window, cell_density, cell_mask = _render_cell(rng, cell, size, texture)
        if cell_mask.sum() < 20:  # cell almost entirely outside the image
            continue
        density[window] += cell_density
        mask = np.zeros((size, size), dtype=bool)
        mask[window] = cell_mask
        masks.append(mask)

    # Uneven illumination: a tilted plane plus a broad vignette-like blob.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    tilt = ((xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)) / size
    cx, cy = rng.uniform(0, size, 2)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.6 * size) ** 2))
    illumination = rng.uniform(150, 185) + rng.uniform(15, 35) * tilt + rng.uniform(10, 25) * blob
    # Faint background texture (debris, uneven coverslip) at a mid frequency.
    background = 1.0 + 0.03 * _smooth_noise(rng, size, sigma=6.0)

    image = illumination * background * np.exp(-density)
    image = cv2.GaussianBlur(image, (0, 0), 0.7)  # optical blur
    image += rng.normal(0.0, rng.uniform(2.5, 5.0), image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, masks


def _smooth_noise(rng, size, sigma):
    """Zero-mean, unit-std Gaussian-filtered noise of shape (size, size)."""
    noise = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _place_cells(rng, size, num_cells, min_radius, max_radius):
    """Choose centres and radii; neighbours may touch or overlap partly, not stack."""
    cells = []
    for _ in range(num_cells):
        for _attempt in range(30):
            radius = float(np.exp(rng.uniform(np.log(min_radius), np.log(max_radius))))
            cx, cy = rng.uniform(-0.3 * radius, size + 0.3 * radius, 2)
            # Centre distance >= 0.6 x sum of radii: touching and overlapping allowed,
            # but every cell keeps most of its outline visible.
            if all(np.hypot(cx - x, cy - y) >= 0.6 * (radius + r) for x, y, r in cells):
                cells.append((float(cx), float(cy), radius))
                break
    return cells


def _render_cell(rng, cell, size, texture):
    """Render one cell inside its bounding window.

    Returns:
        window (tuple[slice, slice]): the window in the image.
        density (np.ndarray): float32 optical density, window-sized.
        mask (np.ndarray): bool, window-sized.
    """
    cx, cy, radius = cell
    # Elongation and orientation of the cell.
    elongation = rng.uniform(1.0, 1.5)
    theta0 = rng.uniform(0, np.pi)
    harmonics = [(order, rng.uniform(0, 0.32 / order), rng.uniform(0, 2 * np.pi)) for order in (2, 3, 4, 5)]
    cyto_density, rim_density = rng.uniform(0.10, 0.22), rng.uniform(0.35, 0.55)
    rim_width = rng.uniform(1.5, 2.5)
    nucleus_radius = radius * rng.uniform(0.25, 0.4)
    offset, direction = radius * rng.uniform(0, 0.25), rng.uniform(0, 2 * np.pi)
    nucleus_aspect, nucleus_density = rng.uniform(0.8, 1.2), rng.uniform(0.2, 0.35)

    # Window large enough for the most extreme outline (harmonics + elongation) + rim.
    reach = radius * 1.9 * np.sqrt(1.5) + 4
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, size)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, size)
    window = (slice(y0, y1), slice(x0, x1))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)

    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(theta0) + dy * np.sin(theta0)) / np.sqrt(elongation)
    v = (-dx * np.sin(theta0) + dy * np.cos(theta0)) * np.sqrt(elongation)
    dist = np.hypot(u, v)
    phi = np.arctan2(v, u)
    # Irregular outline: radius modulated by a few low-order harmonics.
    boundary = np.ones_like(phi)
    for order, amplitude, phase in harmonics:
        boundary += amplitude * np.cos(order * phi + phase)
    boundary *= radius
    depth = boundary - dist  # > 0 inside, roughly pixels to the outline
    mask = depth > 0

    # Smooth cell body profile (thicker in the middle) with textured cytoplasm.
    body = np.clip(depth / max(radius * 0.5, 1.0), 0, 1) ** 0.5
    grain = 0.5 + 0.25 * np.clip(texture[window], -2, 2)
    density = mask * body * cyto_density * (0.7 + 0.6 * grain)
    # Membrane rim: a dark band ~2 px wide just inside the outline.
    density += rim_density * np.exp(-(((depth - rim_width / 2) / rim_width) ** 2))
    # Nucleus: a darker ellipse off-centre inside the cell.
    nx, ny = cx + offset * np.cos(direction), cy + offset * np.sin(direction)
    n_dist = np.hypot((xx - nx) / nucleus_aspect, yy - ny)
    nucleus = np.clip((nucleus_radius - n_dist) / 1.5, 0, 1)
    density += mask * nucleus * nucleus_density
    return window, density.astype(np.float32), mask


def generate_cells_demo(dataset_dir, split, num_images=None, seed=None):
    """Write one split of the demo dataset (not atomic; see :func:`ensure_cells_demo`).

    Writes ``<dataset_dir>/<split>/NNN.png`` and ``<dataset_dir>/annotations/<split>.json``
    (COCO: one category "cell" with id 1, RLE masks, iscrowd 0, bbox, area).

    Args:
        dataset_dir (str): output folder (created if needed).
        split (str): "train" or "val"; sets the default image count and seed.
        num_images (int or None): overrides the split's image count.
        seed (int or None): overrides the split's seed.

    Returns:
        dict: the COCO dictionary that was written.
    """
    default_count, default_seed = DEMO_SPLITS[split]
    num_images = default_count if num_images is None else num_images
    rng = np.random.default_rng(default_seed if seed is None else seed)
    image_dir = os.path.join(dataset_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(dataset_dir, "annotations"), exist_ok=True)

    images, annotations = [], []
    for index in range(num_images):
        image, masks = render_demo_image(rng)
        file_name = f"{index:03d}.png"
        if not cv2.imwrite(os.path.join(image_dir, file_name), image):
            raise OSError(f"Could not write {os.path.join(image_dir, file_name)}")
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]}
        )
        for mask in masks:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    **crop_annotation(mask, 0, 0, *mask.shape),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"iaunet_d2 synthetic cells, {split} split", "version": DEMO_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}],
    }
    with open(os.path.join(dataset_dir, "annotations", f"{split}.json"), "w") as f:
        json.dump(coco, f, sort_keys=True)
    return coco


def _is_complete(dataset_dir):
    try:
        with open(os.path.join(dataset_dir, _VERSION_FILE)) as f:
            return f.read().strip() == str(DEMO_VERSION)
    except OSError:
        return False


def ensure_cells_demo(root):
    """Generate the demo dataset under ``<root>/cells_demo`` unless already there.

    Args:
        root (str): the datasets root folder.

    Returns:
        str: the absolute path of ``<root>/cells_demo``.
    """
    dataset_dir = os.path.abspath(os.path.join(root, DEMO_DIRNAME))
    if _is_complete(dataset_dir):
        return dataset_dir
    os.makedirs(os.path.dirname(dataset_dir), exist_ok=True)
    if os.path.exists(dataset_dir):
        # A folder from an older DEMO_VERSION: move it aside, then regenerate.
        stale = tempfile.mkdtemp(prefix=f".{DEMO_DIRNAME}.stale-", dir=os.path.dirname(dataset_dir))
        try:
            os.replace(dataset_dir, os.path.join(stale, DEMO_DIRNAME))
        except OSError:
            pass  # another process is replacing it right now
        shutil.rmtree(stale, ignore_errors=True)
        if _is_complete(dataset_dir):
            return dataset_dir

    logger.info("Generating the synthetic demo dataset in %s ...", dataset_dir)
    staging = tempfile.mkdtemp(prefix=f".{DEMO_DIRNAME}.tmp-", dir=os.path.dirname(dataset_dir))
    try:
        built = os.path.join(staging, DEMO_DIRNAME)
        for split in DEMO_SPLITS:
            generate_cells_demo(built, split)
        with open(os.path.join(built, _VERSION_FILE), "w") as f:
            f.write(f"{DEMO_VERSION}\n")
        try:
            # Atomic: fails if another process has renamed its finished copy first.
            os.rename(built, dataset_dir)
        except OSError:
            if not _is_complete(dataset_dir):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataset_dir
