"""Utilities: model analysis (parameter and FLOP counts), atomic file writes, tile windows."""
