"""expr: audio-visual facial expression recognition (ABAW EXPR)."""

__version__ = "0.1.0"
