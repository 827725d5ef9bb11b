"""Instance label images -> COCO json with RLE masks (e.g. NeurIPS22-CellSeg).

    python datasets/labels_to_coco.py --images neurips22/images --labels Train_Labeled/labels \\
        --output neurips22/annotations/train.json [--max-instances 100]

Each image X.<ext> is paired with the label image X<suffix>.<ext> in --labels (suffix
"", _label, _labels, _mask, _masks, _seg or _instances; TIFF or PNG). See
datasets/README.md, "Converting datasets".
"""
import argparse
import sys

from iaunet_d2.apps.convert_common import add_common_arguments, finish
from iaunet_d2.data.converters import convert_label_folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--labels", help="folder of label images (default: --images)")
    parser.add_argument("--output", required=True, help="COCO json to write")
    parser.add_argument("--image-root", help="folder the json file names are relative to (default: --images)")
    parser.add_argument("--label-suffix", action="append",
                        help="label file suffix after the image's stem (repeatable; default: common ones)")
    parser.add_argument("--channel", type=int, help="channel index for images with more than four channels")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    kwargs = {"label_suffixes": tuple(args.label_suffix)} if args.label_suffix else {}
    try:
        report = convert_label_folder(args.images, args.labels or args.images, args.output,
                                      image_root=args.image_root, max_instances=args.max_instances,
                                      channel=args.channel, **kwargs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return finish(report, args.output)


if __name__ == "__main__":
    sys.exit(main())
