"""Batched optimal transport (issues 3 and 4)."""
from .wasserstein1d import wasserstein_1d, histogram_wasserstein  # noqa: E402,F401  (issue 4)
from .sliced import sliced_wasserstein, max_sliced_wasserstein, random_projections  # noqa: E402,F401
