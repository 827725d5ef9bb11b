#!/usr/bin/env python
"""Runs iaunet_d2.apps.prepare_realcells (console script iaunet-prepare-realcells); see --help."""
import sys

from iaunet_d2.apps.prepare_realcells import main

if __name__ == "__main__":
    sys.exit(main())
