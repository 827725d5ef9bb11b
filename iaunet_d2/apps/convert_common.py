"""What the dataset converter applications share: ``--max-instances`` and the report."""
import sys


def add_common_arguments(parser, default_max_instances=None):
    """Options every converter script shares (``--max-instances``)."""
    parser.add_argument(
        "--max-instances", type=int, default=default_max_instances, metavar="N",
        help="leave out images (crops) with more than N cells; IAUNet predicts at most "
             "MODEL.IAUNET.NUM_QUERIES cells per image (default: %(default)s)",
    )
    return parser


def finish(report, output):
    """Print a converter's report; returns the exit status (1 if any file failed)."""
    for message in report.warnings:
        print(f"warning: {message}", file=sys.stderr)
    print(report.summary(), file=sys.stderr)
    print(f"written: {output}", file=sys.stderr)
    return 1 if report.failed else 0
