"""Prepare the real-data suite: annotated microscopy shipped by installable packages,
tiled and split into train / tune / report (see datasets/README.md, "Real-data suite").

    python datasets/prepare_realcells.py                  # both sets into ./datasets
    python datasets/prepare_realcells.py --sets nuclei_fluo --root /data

The sets are then registered as realcells_<set>_{train,tune,report}. A set already
prepared is kept (--force rebuilds it). bacteria_phase downloads one source archive
(73 MB) with pip; nuclei_fluo reads the stardist package that tools/setup.sh installs.
"""
import argparse
import sys

from iaunet_d2.data.datasets import dataset_root
from iaunet_d2.data.realcells import REALCELLS_SETS, RealCellsError, prepare_realcells


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(REALCELLS_SETS),
                        choices=REALCELLS_SETS, help="sets to prepare (default: all)")
    parser.add_argument("--root", default=None,
                        help="datasets root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--force", action="store_true", help="rebuild sets already prepared")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    root = args.root or dataset_root()
    try:
        prepare_realcells(root, args.sets, force=args.force,
                          log=lambda line: print(line, flush=True))
    except RealCellsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {getattr(e, 'filename', None) or root}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
