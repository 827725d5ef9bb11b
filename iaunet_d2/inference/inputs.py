"""The images of a prediction run: what ``--input`` names, and an output name for each."""
import glob
import logging
import os
import re

from ..io.images import IMAGE_EXTENSIONS, list_images
from ..io.labels import LABEL_SUFFIXES, pair_with_labels
from .types import PredictionError

__all__ = ["collect_inputs", "output_names"]

logger = logging.getLogger(__name__)

_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


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
    """Image paths named by one spec (folder, file or glob pattern); [] if none."""
    if os.path.isdir(spec):
        # A training-style folder keeps <name>_masks.tif next to <name>.tif: not an input.
        pairs, labels = pair_with_labels(list_images(spec), spec, LABEL_SUFFIXES[1:])
        if labels:
            logger.info("--input '%s': left out %d label image(s) of other images (e.g. %s).",
                        spec, len(labels), os.path.basename(labels[0]))
        return list(pairs)
    if os.path.isfile(spec):
        return [spec]
    return [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]


def output_names(paths):
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
