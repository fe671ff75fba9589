"""Trainable heads."""
