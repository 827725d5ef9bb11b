"""Datasets, image reading and dataset mappers."""
