"""Batched optimal transport (issues 3 and 4)."""
from .sinkhorn import SinkhornResult, sinkhorn, epsilon_schedule
from .samples_loss import SamplesLoss
from .sinkhorn_dense import sinkhorn_dense, sinkhorn2
from .plan import apply_plan, transport_plan, barycentric_map

__all__ = ["SinkhornResult", "sinkhorn", "epsilon_schedule", "SamplesLoss", "sinkhorn_dense", "sinkhorn2",
           "apply_plan", "transport_plan", "barycentric_map"]
