"""Batched optimal transport: Sinkhorn solvers and divergences (GeomLoss / POT conventions),
sliced and 1-D Wasserstein distances on samples and histograms."""
from .sinkhorn import ResolutionWarning, SinkhornResult, sinkhorn, epsilon_schedule
from .samples_loss import SamplesLoss
from .sinkhorn_dense import sinkhorn_dense, sinkhorn2, sinkhorn_plan
from .plan import apply_plan, transport_plan, barycentric_map
from .wasserstein1d import wasserstein_1d, histogram_wasserstein
from .sliced import (sliced_wasserstein, max_sliced_wasserstein, random_projections, get_random_projections,
                     sliced_wasserstein_distance, max_sliced_wasserstein_distance)
from .assignment import linear_sum_assignment, emd, emd2, minibatch_coupling, balanced_assignment

__all__ = ["ResolutionWarning", "SinkhornResult", "sinkhorn", "epsilon_schedule", "SamplesLoss", "sinkhorn_dense", "sinkhorn2", "sinkhorn_plan",
           "apply_plan", "transport_plan", "barycentric_map", "wasserstein_1d", "histogram_wasserstein",
           "sliced_wasserstein", "max_sliced_wasserstein", "random_projections", "get_random_projections",
           "sliced_wasserstein_distance", "max_sliced_wasserstein_distance",
           "linear_sum_assignment", "emd", "emd2", "minibatch_coupling", "balanced_assignment"]
