#!/usr/bin/env python
"""Runs iaunet_d2.apps.convert_livecell_crop (iaunet-convert-livecell-crop); see --help."""
import sys

from iaunet_d2.apps.convert_livecell_crop import main

if __name__ == "__main__":
    sys.exit(main())
