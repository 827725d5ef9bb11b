"""Utilities: model analysis (parameter and FLOP counts)."""
