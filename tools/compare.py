#!/usr/bin/env python
"""Runs iaunet_d2.apps.compare (console script iaunet-compare); see --help."""
import sys

from iaunet_d2.apps.compare import main

if __name__ == "__main__":
    sys.exit(main())
