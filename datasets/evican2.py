#!/usr/bin/env python
"""Runs iaunet_d2.apps.convert_evican2 (console script iaunet-convert-evican2); see --help."""
import sys

from iaunet_d2.apps.convert_evican2 import main

if __name__ == "__main__":
    sys.exit(main())
