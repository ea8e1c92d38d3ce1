"""Data sources, built-in datasets, validation and splits."""
