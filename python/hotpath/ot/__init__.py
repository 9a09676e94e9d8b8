"""Batched optimal transport (issues 3 and 4)."""
from .sinkhorn import SinkhornResult, sinkhorn, epsilon_schedule
from .samples_loss import SamplesLoss

__all__ = ["SinkhornResult", "sinkhorn", "epsilon_schedule", "SamplesLoss"]
