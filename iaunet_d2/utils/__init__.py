"""Utilities: model analysis (parameter and FLOP counts), tile windows."""
