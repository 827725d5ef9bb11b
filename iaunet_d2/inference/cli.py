"""The prediction command line: set-up checks, the loop over images, the run summary."""
import argparse
import logging
import os
import sys

import numpy as np

from ..io.images import ImageReadError, read_image
from ..io.writers import FileSetWriteError
from .inputs import collect_inputs, output_names
from .outputs import (
    COCO_RESULTS, coco_annotations, prepare_output_dir, remove_previous_outputs, write_coco_results,
    write_outputs,
)
from .predictor import CellPredictor, build_predict_config
from .types import PredictionError

__all__ = ["MIN_IMAGE_SIZE", "parse_args", "main"]

# Smaller images hold no cell the models can segment (they would be upscaled to
# INPUT.IMAGE_SIZE and give meaningless cells).
MIN_IMAGE_SIZE = 16


def parse_args(argv=None):
    """The command line's options (``argv``, default ``sys.argv[1:]``) as an ``argparse.Namespace``."""
    parser = argparse.ArgumentParser(
        prog="python -m iaunet_d2.predict",
        description="Predict cell instances with a trained IAUNet / Mask R-CNN / PointRend model.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config (yaml)")
    parser.add_argument("--weights", metavar="FILE", help="trained weights (.pth); default MODEL.WEIGHTS")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files, folders or glob patterns (several allowed)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--channel", type=int, default=None,
                        help="channel of multi-channel images to use, as grayscale (index; gray "
                             "images are read as they are)")
    parser.add_argument("--plane", type=int, default=None,
                        help="plane of Z-stacks / time series to use (index; 2-D images are "
                             "read as they are)")
    parser.add_argument("--tile-overlap", type=int, default=None,
                        help="overlap of neighbouring tiles in pixels (default INPUT.IMAGE_SIZE // 4)")
    parser.add_argument("--resize", action="store_true",
                        help="resize each whole image to INPUT.IMAGE_SIZE as in evaluation, no tiles")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N",
                        help="tiles of a large image per forward pass (default 4)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the predictions already in --output (its *_labels.tif, "
                             "*_overlay.png, *_cells.csv, *_activations.png and coco_results.json "
                             "are deleted once the model has loaded); without it such a folder "
                             "is refused")
    parser.add_argument("--save-activations", action="store_true",
                        help="also write <name>_activations.png (IAUNet only)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.DEVICE cpu")
    return parser.parse_args(argv)


def _set_up(args):
    """Inputs, config and predictor of a run, checked in the order that fails cheapest
    (inputs and output folder before the model is loaded).

    Returns:
        (input paths, config, CellPredictor).
    Raises:
        PredictionError: naming what stops the run.
    """
    paths = collect_inputs(args.input)
    prepare_output_dir(args.output, overwrite=args.overwrite)
    cfg = build_predict_config(args.config_file, args.weights, args.opts)
    if args.save_activations and cfg.MODEL.META_ARCHITECTURE != "IAUNet":
        raise PredictionError(
            f"--save-activations needs an IAUNet model; the config '{args.config_file}' "
            f"builds {cfg.MODEL.META_ARCHITECTURE}, which has no instance activation maps."
        )
    tile_size = int(cfg.INPUT.IMAGE_SIZE)
    overlap = tile_size // 4 if args.tile_overlap is None else args.tile_overlap
    if not 0 <= overlap < tile_size:
        raise PredictionError(f"--tile-overlap must be in [0, {tile_size}) for INPUT.IMAGE_SIZE {tile_size}.")
    if args.batch_size < 1:
        raise PredictionError(f"--batch-size must be >= 1, got {args.batch_size}.")
    predictor = CellPredictor(cfg, tile_overlap=overlap, tile=not args.resize,
                              keep_activations=args.save_activations, batch_size=args.batch_size)
    return paths, cfg, predictor


class _TileProgress:
    """A second progress bar, over the tiles of one image, for images of several tiles."""

    def __init__(self, path):
        self.path, self.bar = path, None

    def __call__(self, done, total):
        from tqdm import tqdm

        if total < 2:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=f"  tiles of {os.path.basename(self.path)}",
                            unit="tile", leave=False)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _predict_all(args, cfg, predictor, paths):
    """Predict and write every image; a bad image is recorded and the loop goes on.
    Ctrl-C stops the loop: the images finished so far are kept.

    Returns:
        (COCO images, COCO annotations, skipped (path, why), failed (path, why),
        the path being predicted when Ctrl-C stopped the run, or None).
    """
    from tqdm import tqdm

    images, annotations, failed, skipped = [], [], [], []
    path = None
    try:
        for path, name in tqdm(list(zip(paths, output_names(paths))), desc="predict", unit="image"):
            try:
                image = read_image(path, format=cfg.INPUT.FORMAT, channel=args.channel, plane=args.plane,
                                   normalization=cfg.INPUT.INTENSITY_NORM)
            except ImageReadError as e:
                skipped.append((path, str(e)))
                tqdm.write(f"skipped: {e}", file=sys.stderr)
                continue
            if min(image.shape[:2]) < MIN_IMAGE_SIZE:
                why = (f"image is {image.shape[1]}x{image.shape[0]} px; the minimum is "
                       f"{MIN_IMAGE_SIZE} px on each side")
                skipped.append((path, why))
                tqdm.write(f"skipped '{path}': {why}", file=sys.stderr)
                continue
            progress = _TileProgress(path)
            try:
                prediction = predictor(image, on_tiles=progress)
                rgb = image[..., ::-1] if cfg.INPUT.FORMAT == "BGR" else image
                write_outputs(prediction, np.ascontiguousarray(rgb), args.output, name,
                              predictor.class_names, activations=args.save_activations)
            except FileSetWriteError as e:
                failed.append((path, str(e)))
                tqdm.write(f"failed on '{path}': {e}", file=sys.stderr)
                continue
            except Exception as e:  # one bad image must not end the run; Ctrl-C still does
                failed.append((path, f"{type(e).__name__}: {e}"))
                tqdm.write(f"failed on '{path}': {type(e).__name__}: {e}", file=sys.stderr)
                continue
            finally:
                progress.close()
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": os.path.abspath(path), "output_name": name,
                           "height": prediction.height, "width": prediction.width})
            annotations += coco_annotations(prediction, image_id, len(annotations) + 1)
    except KeyboardInterrupt:
        return images, annotations, skipped, failed, path
    return images, annotations, skipped, failed, None


def main(argv=None):
    """Run the CLI; returns the exit status (0 ok, 1 some images failed, 2 set-up error,
    130 stopped by Ctrl-C)."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        paths, cfg, predictor = _set_up(args)
    except PredictionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.overwrite:
        removed = remove_previous_outputs(args.output)
        if removed:
            print(f"--overwrite: removed {removed} prediction file(s) of an earlier run from "
                  f"{args.output}", file=sys.stderr)
    images, annotations, skipped, failed, stopped_at = _predict_all(args, cfg, predictor, paths)
    coco_path = os.path.join(args.output, COCO_RESULTS)
    try:
        write_coco_results(coco_path, f"predictions of {args.config_file} with {cfg.MODEL.WEIGHTS}",
                           images, annotations, predictor.class_names)
    except FileSetWriteError as e:
        failed.append((coco_path, str(e)))
    print(f"{len(images)} of {len(paths)} image(s) predicted, {len(annotations)} cell(s); "
          f"{len(skipped)} skipped, {len(failed)} failed; outputs in {args.output}", file=sys.stderr)
    for label, entries in (("skipped", skipped), ("failed", failed)):
        if entries:
            print(f"{len(entries)} {label}:", file=sys.stderr)
            for path, why in entries:
                print(f"  {path}: {why}", file=sys.stderr)
    if stopped_at is not None:
        print(f"interrupted: {len(images)} of {len(paths)} image(s) finished and kept in "
              f"{args.output} (listed in {COCO_RESULTS}); stopped at '{stopped_at}', whose "
              "outputs were not written.", file=sys.stderr)
        return 130
    return 1 if failed or skipped else 0
