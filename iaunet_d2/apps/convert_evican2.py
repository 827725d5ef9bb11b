"""EVICAN2 -> the cell-only json files the evican2_{easy,medium,difficult}_* datasets read.

    python datasets/evican2.py --annotations EVICAN2/annotations [--root datasets] \\
        [--eval-json all_eval.json] [--max-instances 100]

Keeps the Cell category (as "cell"), drops EVICAN's background images, and writes
evican2/annotations/instances_{train,val}2019_EVICAN2.json and
instances_eval2019_{easy,medium,difficult}_EVICAN2.json under --root. See
datasets/README.md, "Converting datasets".
"""
import argparse
import os
import sys

from iaunet_d2.apps.convert_common import add_common_arguments, finish
from iaunet_d2.data.converters import ConversionError, convert_evican2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="folder of the EVICAN2 json files as released")
    parser.add_argument("--root", default=os.environ.get("DETECTRON2_DATASETS", "datasets"),
                        help="datasets root to write evican2/annotations/ into")
    parser.add_argument("--eval-json", help="one json of all evaluation images, split by difficulty "
                                            "when the per-difficulty files are absent")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if os.path.abspath(args.annotations) == os.path.abspath(os.path.join(args.root, "evican2", "annotations")):
        print("error: --annotations must differ from the output folder (the raw files would be overwritten)",
              file=sys.stderr)
        return 2
    try:
        report = convert_evican2(args.annotations, args.root, eval_json=args.eval_json,
                                 max_instances=args.max_instances)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return finish(report, os.path.join(args.root, "evican2", "annotations"))


if __name__ == "__main__":
    sys.exit(main())
