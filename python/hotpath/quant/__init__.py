"""Quantized linear layers (issues 6 and 7)."""
