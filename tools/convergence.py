#!/usr/bin/env python
"""Runs iaunet_d2.apps.convergence (console script iaunet-convergence); see --help."""
import sys

from iaunet_d2.apps.convergence import main

if __name__ == "__main__":
    sys.exit(main())
