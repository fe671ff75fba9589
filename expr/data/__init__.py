"""Data: the frame-level feature store, windows over it, and the built-in demo data."""
