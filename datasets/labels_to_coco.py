#!/usr/bin/env python
"""Runs iaunet_d2.apps.convert_labels (console script iaunet-convert-labels); see --help."""
import sys

from iaunet_d2.apps.convert_labels import main

if __name__ == "__main__":
    sys.exit(main())
