"""Pure-torch references, one per op: fallback kernels, test oracles and benchmark baselines.
They favour clarity over memory (they materialize n x m) and accept any floating dtype."""
