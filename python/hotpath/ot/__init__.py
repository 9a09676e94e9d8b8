"""Batched optimal transport (issues 3 and 4)."""
