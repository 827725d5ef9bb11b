"""LIVECell -> LIVECell-crop: 512x512 crops with 1..100 cells (the IAUNet paper's variant).

    python datasets/livecell_crop.py [--root datasets] [--splits train val test] \\
        [--max-instances 100] [--min-visible-fraction 0.0]

Reads livecell/annotations/livecell_coco_<split>.json and the LIVECell images under
<root>, writes livecell_crop/images/<split>/ and livecell_crop/annotations/<split>.json.
Cells cut by a crop border keep their visible part (see datasets/README.md,
"Converting datasets").
"""
import argparse
import os
import sys

import iaunet_d2  # noqa: F401
from iaunet_d2.apps.convert_common import add_common_arguments, finish
from iaunet_d2.data.converters import ConversionError, ConversionReport, convert_livecell_crop
from iaunet_d2.data.datasets.specs import DATASETS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("DETECTRON2_DATASETS", "datasets"),
                        help="datasets root holding livecell/ (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--size", type=int, default=512, help="crop side (default 512)")
    parser.add_argument("--stride", type=int, help="crop step (default: --size, no overlap)")
    parser.add_argument("--min-visible-fraction", type=float, default=0.0,
                        help="drop a cut cell whose visible part is below this fraction of its area")
    parser.add_argument("--min-visible-area", type=int, default=1,
                        help="drop a cut cell whose visible part has fewer pixels")
    add_common_arguments(parser, default_max_instances=100)
    args = parser.parse_args(argv)
    splits = {}
    for split in args.splits:
        if split not in DATASETS["livecell"].splits:
            print(f"error: unknown split {split!r} (LIVECell has {sorted(DATASETS['livecell'].splits)})",
                  file=sys.stderr)
            return 2
        splits[split] = [os.path.join(args.root, p)
                         for p in DATASETS["livecell"].splits[split] + DATASETS["livecell_crop"].splits[split]]
    # Every split's input first, so that a missing one does not stop the run half-way.
    missing = [paths[0] for paths in splits.values() if not os.path.isfile(paths[0])]
    if missing:
        print(f"error: LIVECell annotation file(s) not found: {', '.join(missing)} "
              "(see datasets/README.md for the download)", file=sys.stderr)
        return 2
    total = ConversionReport()
    for split, (json_in, images_in, json_out, images_out) in splits.items():
        print(f"{split}: {json_in} -> {json_out}", file=sys.stderr)
        try:
            report = convert_livecell_crop(
                json_in, images_in, images_out, json_out, size=args.size, stride=args.stride,
                max_instances=args.max_instances, min_visible_fraction=args.min_visible_fraction,
                min_visible_area=args.min_visible_area,
            )
        except ConversionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        total.add(report)
    return finish(total, os.path.join(args.root, "livecell_crop"))


if __name__ == "__main__":
    sys.exit(main())
