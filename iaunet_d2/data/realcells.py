"""The real-data suite: annotated microscopy that installable packages ship, cut into
256-pixel tiles with COCO annotations and split into train / tune / report.

Sets (each ``<root>/realcells/<set>/``, registered as ``realcells_<set>_<split>``):

* ``bacteria_phase``: a phase-contrast time-lapse of a growing bacterial microcolony
  (1305 x 1009 px, 53 frames, ground-truth instance masks ``TRA/man_track*.tif``) from
  the source distribution of the PyPI package ``divisualisation`` 0.1.0 (MIT licence;
  the package does not state where the images come from). Every third frame is used;
  the colony grows from 2 to 358 cells, so tiles range from sparse to dense.
* ``nuclei_fluo``: the fluorescence nuclei image (512 x 512, 125 nuclei, DSB2018, CC0)
  that the ``stardist`` package ships (``stardist/data/images/img2d.tif``).

Splits are spatial, never by tile: ``train`` holds one region of every frame, ``tune``
(the only split on which options may be chosen) and ``report`` (the split results are
reported on, which chose nothing) hold others, so that no cell appears in two splits
and consecutive frames of one region stay in one split. Tiles are at most 256 x 256
(smaller at region borders, so some are not square); tiles without a cell are skipped,
and parts of cells cut by a tile border smaller than ``MIN_CELL_PIXELS`` are dropped.
"""
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..io.writers import encode_image, write_json
from .converters.coco import coco_dict
from .converters.label_images import labels_to_annotations

__all__ = [
    "DIVISUALISATION_SHA256",
    "REALCELLS_SETS",
    "RealCellsError",
    "SPLITS",
    "build_bacteria_phase",
    "build_nuclei_fluo",
    "prepare_realcells",
]

SPLITS = ("train", "tune", "report")
TILE = 256
MIN_TILE_SIDE = 64
MIN_CELL_PIXELS = 10
FRAME_STEP = 3
DIVISUALISATION = "divisualisation==0.1.0"
DIVISUALISATION_ARCHIVE = "divisualisation-0.1.0.tar.gz"
DIVISUALISATION_SHA256 = "df5f71919341487ec9ac91f9dc1a8893e0a88ef91c9ceedf2bf28c72d2d43f6b"
_BACTERIA_DIR = "divisualisation-0.1.0/data/bacteria"
# The colony's first cells sit near (y, x) = (740, 480): the regions meet there, so that
# every split holds part of the colony at every stage of its growth.
_BACTERIA_CENTRE = (740, 480)

REALCELLS_SETS = ("bacteria_phase", "nuclei_fluo")
_DONE = "SOURCE.txt"


class RealCellsError(RuntimeError):
    """A set of the real-data suite cannot be prepared (one line: what and what to do)."""


Region = Tuple[int, int, int, int]  # y0, y1, x0, x1


def _tiles(region: Region) -> Iterator[Region]:
    """Windows of at most TILE x TILE covering ``region`` row by row; a remainder
    narrower than MIN_TILE_SIDE joins the window before it (which is then wider)."""
    y0, y1, x0, x1 = region

    def starts(lo, hi):
        points = list(range(lo, hi, TILE))
        if len(points) > 1 and hi - points[-1] < MIN_TILE_SIDE:
            points.pop()
        return [(a, points[i + 1] if i + 1 < len(points) else hi) for i, a in enumerate(points)]

    for ya, yb in starts(y0, y1):
        for xa, xb in starts(x0, x1):
            yield ya, yb, xa, xb


def _tile_labels(labels: np.ndarray) -> np.ndarray:
    """A tile's labels with cell parts under MIN_CELL_PIXELS set to background."""
    ids, counts = np.unique(labels, return_counts=True)
    small = ids[(counts < MIN_CELL_PIXELS) & (ids != 0)]
    if small.size:
        labels = np.where(np.isin(labels, small), 0, labels)
    return labels


class _SplitWriter:
    """Collects one split's tiles: image files and COCO entries."""

    def __init__(self, set_dir: str, split: str, description: str):
        self.image_dir = os.path.join(set_dir, "images", split)
        self.json_path = os.path.join(set_dir, "annotations", f"{split}.json")
        self.description = description
        os.makedirs(self.image_dir, exist_ok=True)
        self.images: List[Dict] = []
        self.annotations: List[Dict] = []

    def add(self, name: str, image: np.ndarray, labels: np.ndarray) -> None:
        labels = _tile_labels(labels)
        if not labels.any():
            return
        image_id = len(self.images) + 1
        file_name = f"{name}.tif"
        with open(os.path.join(self.image_dir, file_name), "wb") as f:
            f.write(encode_image(image, ".tif"))
        self.images.append({"id": image_id, "file_name": file_name,
                            "height": int(image.shape[0]), "width": int(image.shape[1])})
        annotations = labels_to_annotations(labels, image_id, len(self.annotations) + 1)
        for anno in annotations:
            anno.pop("label_id", None)
        self.annotations.extend(annotations)

    def close(self) -> Tuple[int, int]:
        write_json(coco_dict(self.images, self.annotations, self.description), self.json_path)
        return len(self.images), len(self.annotations)


def _write_set(set_dir: str, description: str, frames, regions: Dict[str, List[Region]]):
    """Tile every (name, image, labels) of ``frames`` over each split's regions.

    Returns {split: (tiles, cells)}.
    """
    writers = {split: _SplitWriter(set_dir, split, f"{description}, {split} split")
               for split in SPLITS}
    for name, image, labels in frames:
        for split, split_regions in regions.items():
            for y0, y1, x0, x1 in (t for r in split_regions for t in _tiles(r)):
                writers[split].add(f"{name}_y{y0}_x{x0}", image[y0:y1, x0:x1],
                                   labels[y0:y1, x0:x1])
    return {split: writer.close() for split, writer in writers.items()}


def _read_tiff(path: str) -> np.ndarray:
    import tifffile

    try:
        return tifffile.imread(path)
    except (ImportError, ModuleNotFoundError) as e:
        raise RealCellsError(
            f"{path}: cannot decode its compression ({e}); install the imagecodecs package "
            "(bash tools/setup.sh does)"
        ) from e


def build_bacteria_phase(archive: str, set_dir: str) -> Dict[str, Tuple[int, int]]:
    """Build ``bacteria_phase`` from the divisualisation sdist ``archive`` into
    ``set_dir``; returns {split: (tiles, cells)}.

    Raises:
        RealCellsError: the archive's checksum differs, or it lacks the bacteria data.
    """
    digest = _sha256(archive)
    if digest != DIVISUALISATION_SHA256:
        raise RealCellsError(
            f"{archive}: sha256 {digest} is not the expected {DIVISUALISATION_SHA256} "
            f"({DIVISUALISATION}); delete it and run again"
        )
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and m.name.startswith(_BACTERIA_DIR + "/")
                       and ("/img/" in m.name or "/TRA/man_track" in m.name)]
            tar.extractall(tmp, members=members, filter="data")
        img_dir = os.path.join(tmp, _BACTERIA_DIR, "img")
        tra_dir = os.path.join(tmp, _BACTERIA_DIR, "TRA")
        if not os.path.isdir(img_dir) or not os.path.isdir(tra_dir):
            raise RealCellsError(f"{archive}: no {_BACTERIA_DIR}/img and TRA folders in it")
        names = sorted(n for n in os.listdir(img_dir) if n.startswith("t") and n.endswith(".tif"))
        if not names:
            raise RealCellsError(f"{archive}: no frames in {_BACTERIA_DIR}/img")
        first = _read_tiff(os.path.join(img_dir, names[0]))
        height, width = first.shape[:2]
        cy, cx = _BACTERIA_CENTRE
        regions = {
            "train": [(0, height, 0, cx)],
            "tune": [(0, cy, cx, width)],
            "report": [(cy, height, cx, width)],
        }

        def frames():
            for name in names[::FRAME_STEP]:
                index = int(name[1:-4])
                labels = _read_tiff(os.path.join(tra_dir, f"man_track{index:06d}.tif"))
                yield f"t{index:03d}", _read_tiff(os.path.join(img_dir, name)), labels

        return _write_set(set_dir, "bacteria_phase: phase-contrast bacteria (divisualisation "
                          "0.1.0 sdist)", frames(), regions)


def stardist_image_paths() -> Tuple[str, str]:
    """(img2d.tif, mask2d.tif) of the installed stardist package, found without importing
    it (its import needs TensorFlow).

    Raises:
        RealCellsError: stardist is not installed or lacks the files.
    """
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise RealCellsError("the stardist package is not installed; run "
                             "`pip install --no-deps stardist==0.9.2` (bash tools/setup.sh does)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data", "images")
    paths = (os.path.join(folder, "img2d.tif"), os.path.join(folder, "mask2d.tif"))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise RealCellsError(f"{missing[0]} does not exist: reinstall stardist==0.9.2")
    return paths


def build_nuclei_fluo(image_path: str, mask_path: str, set_dir: str) -> Dict[str, Tuple[int, int]]:
    """Build ``nuclei_fluo`` from stardist's image and mask: the left half is train, the
    top-right quarter tune, the bottom-right quarter report. Returns {split: (tiles, cells)}."""
    image, labels = _read_tiff(image_path), _read_tiff(mask_path)
    if image.shape[:2] != labels.shape:
        raise RealCellsError(f"{mask_path}: its shape {labels.shape} differs from the image's "
                             f"{image.shape[:2]}")
    height, width = labels.shape
    regions = {
        "train": [(0, height, 0, width // 2)],
        "tune": [(0, height // 2, width // 2, width)],
        "report": [(height // 2, height, width // 2, width)],
    }
    return _write_set(set_dir, "nuclei_fluo: fluorescence nuclei (stardist img2d, DSB2018)",
                      [("img2d", image, labels)], regions)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_divisualisation(folder: str) -> str:
    """``pip download`` the divisualisation sdist into ``folder`` (kept there as a cache);
    returns the archive's path.

    Raises:
        RealCellsError: pip failed (e.g. no network), with pip's last line.
    """
    archive = os.path.join(folder, DIVISUALISATION_ARCHIVE)
    if os.path.isfile(archive):
        return archive
    os.makedirs(folder, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--disable-pip-version-check", "-q", "-d", folder, DIVISUALISATION],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 or not os.path.isfile(archive):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RealCellsError(f"could not download {DIVISUALISATION} with pip ({last}); check "
                             f"the network, or put {DIVISUALISATION_ARCHIVE} into {folder}")
    return archive


_SOURCES = {
    "bacteria_phase": ("the source distribution of the PyPI package divisualisation 0.1.0, "
                       f"data/bacteria (img/ and the ground truth TRA/), sha256 "
                       f"{DIVISUALISATION_SHA256}", "MIT (the package's LICENSE); the "
                       "package does not state the images' origin"),
    "nuclei_fluo": ("the stardist package (0.9.2), data/images/img2d.tif and mask2d.tif, "
                    "a DSB2018 image", "CC0 (DSB2018 stage 1 training data)"),
}


def prepare_realcells(root: str, sets=REALCELLS_SETS, force: bool = False,
                      log: Callable[[str], None] = print,
                      cache: Optional[str] = None) -> Dict[str, Dict[str, Tuple[int, int]]]:
    """Prepare the suite's ``sets`` under ``<root>/realcells/``: each set is built in a
    temporary folder and moved into place when complete, so a set is either whole or
    absent. A set already there is kept unless ``force``.

    Args:
        cache: folder of the downloaded archive (default ``<root>/realcells/.downloads``).
    Returns:
        {set: {split: (tiles, cells)}} for the sets built now.
    Raises:
        RealCellsError: a source is missing, cannot be downloaded or fails its checksum.
    """
    unknown = sorted(set(sets) - set(REALCELLS_SETS))
    if unknown:
        raise RealCellsError(f"unknown set(s) {', '.join(unknown)}; known: "
                             f"{', '.join(REALCELLS_SETS)}")
    base = os.path.join(root, "realcells")
    cache = cache or os.path.join(base, ".downloads")
    built = {}
    for name in sets:
        final = os.path.join(base, name)
        if os.path.isfile(os.path.join(final, _DONE)) and not force:
            log(f"{name}: already prepared in {final} (--force rebuilds it)")
            continue
        os.makedirs(base, exist_ok=True)
        work = tempfile.mkdtemp(prefix=f".{name}.", dir=base)
        try:
            log(f"{name}: building in {final}")
            if name == "bacteria_phase":
                counts = build_bacteria_phase(download_divisualisation(cache), work)
            else:
                counts = build_nuclei_fluo(*stardist_image_paths(), work)
            source, licence = _SOURCES[name]
            lines = [f"{name} (iaunet_d2 real-data suite)", f"source: {source}",
                     f"licence: {licence}"]
            lines += [f"{split}: {tiles} tiles, {cells} cells" for split, (tiles, cells)
                      in counts.items()]
            with open(os.path.join(work, _DONE), "w") as f:
                f.write("\n".join(lines) + "\n")
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        for split, (tiles, cells) in counts.items():
            log(f"{name} {split}: {tiles} tiles, {cells} cells")
        built[name] = counts
    return built
