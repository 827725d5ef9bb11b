#!/usr/bin/env python
"""Runs iaunet_d2.apps.analyze_model (console script iaunet-analyze); see --help."""
import sys

from iaunet_d2.apps.analyze_model import main

if __name__ == "__main__":
    sys.exit(main())
