#!/usr/bin/env python
"""Runs iaunet_d2.apps.train (console script iaunet-train): train and evaluate IAUNet,
Mask R-CNN, PointRend and Mask2Former; see --help and the README's Usage."""
import iaunet_d2.compat  # noqa: F401  (must precede every Detectron2 import)

import sys

from iaunet_d2.apps.train import (  # noqa: F401  (the names scripts and tests use)
    SetupError,
    build_parser,
    check_before_launch,
    cli,
    main,
    parse_args,
)

if __name__ == "__main__":
    sys.exit(cli())
