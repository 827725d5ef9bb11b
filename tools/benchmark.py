#!/usr/bin/env python
"""Runs iaunet_d2.apps.benchmark (console script iaunet-benchmark); see --help."""
import sys

from iaunet_d2.apps.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
