#!/usr/bin/env python
"""Runs iaunet_d2.apps.memory_soak (console script iaunet-memory-soak); see --help."""
import sys

from iaunet_d2.apps.memory_soak import main

if __name__ == "__main__":
    sys.exit(main())
