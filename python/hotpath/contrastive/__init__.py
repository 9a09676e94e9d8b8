"""Pairwise contrastive losses (issue 5)."""
