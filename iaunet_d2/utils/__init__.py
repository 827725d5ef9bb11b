"""Utilities: model analysis (parameter and FLOP counts) and atomic file writes."""
