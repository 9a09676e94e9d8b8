"""Batched optimal transport (issues 3 and 4)."""
from .sinkhorn import SinkhornResult, sinkhorn, epsilon_schedule
from .samples_loss import SamplesLoss
from .sinkhorn_dense import sinkhorn_dense, sinkhorn2
from .plan import apply_plan, transport_plan, barycentric_map

__all__ = ["SinkhornResult", "sinkhorn", "epsilon_schedule", "SamplesLoss", "sinkhorn_dense", "sinkhorn2",
           "apply_plan", "transport_plan", "barycentric_map"]
from .wasserstein1d import wasserstein_1d, histogram_wasserstein  # noqa: E402,F401  (issue 4)
from .sliced import sliced_wasserstein, max_sliced_wasserstein, random_projections  # noqa: E402,F401

__all__ += ["wasserstein_1d", "histogram_wasserstein", "sliced_wasserstein", "max_sliced_wasserstein",
            "random_projections"]
