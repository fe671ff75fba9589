"""Frozen backbones and feature extraction."""
