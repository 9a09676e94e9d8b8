"""Triton auction kernel of hotpath::lsa_solve against scipy (optimal cost to rounding).

Sizes are kept tiny: on CPU the kernel runs in the Triton interpreter, one bid at a time.
"""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

import hotpath
from hotpath._ops import assignment as ops
from conftest import backend_param

BK = backend_param(["triton"])


def _check(C, maximize, backend):
    rows, cols = hotpath.ot.linear_sum_assignment(C, maximize=maximize, backend=backend)
    B, n, m = C.shape
    k = min(n, m)
    assert rows.shape == cols.shape == (B, k) and rows.dtype == cols.dtype == torch.int64
    Cn = C.detach().cpu().double().numpy()
    rows, cols = rows.cpu(), cols.cpu()
    for b in range(B):
        assert bool((rows[b].diff() > 0).all()), "rows must be ascending and distinct"
        assert len(set(cols[b].tolist())) == k, "columns must be distinct"
        got = Cn[b][rows[b].numpy(), cols[b].numpy()].sum()
        r, c = scipy_lsa(Cn[b], maximize=maximize)
        want = Cn[b][r, c].sum()
        assert math.isfinite(got)
        assert abs(got - want) <= 1e-9 * (1 + abs(want)), (b, got, want)


@pytest.mark.parametrize("backend", BK)
@pytest.mark.parametrize("n,m", [(1, 1), (2, 5), (5, 2), (7, 7), (12, 12), (12, 7)])
@pytest.mark.parametrize("maximize", [False, True])
def test_integer_costs_with_ties(backend, n, m, maximize):
    g = torch.Generator().manual_seed(n * 31 + m)
    # drawn on the CPU (the generator's device), then moved to the test's device (CUDA in GPU mode)
    C = torch.randint(-3, 4, (3, n, m), generator=g, device="cpu").double()
    _check(C.to(torch.get_default_device()), maximize, backend)


@pytest.mark.parametrize("backend", BK)
@pytest.mark.parametrize("n,m,maximize,dtype", [(5, 7, False, torch.float64), (12, 12, True, torch.float64),
                                                 (7, 2, False, torch.float32)])
def test_float_costs(backend, n, m, maximize, dtype):
    g = torch.Generator().manual_seed(n + 100 * m)
    C = torch.rand(1, n, m, generator=g, dtype=torch.float64, device="cpu").to(dtype) * 10 - 3
    _check(C.to(torch.get_default_device()), maximize, backend)


@pytest.mark.parametrize("backend", BK)
@pytest.mark.parametrize("n,m,maximize", [(5, 5, False), (7, 12, True), (12, 5, False), (2, 2, True)])
def test_forbidden_pairs(backend, n, m, maximize):
    g = torch.Generator().manual_seed(7 * n + m)
    # built on the CPU (the generator's device), then moved to the test's device (CUDA in GPU mode)
    C = torch.randint(0, 6, (2, n, m), generator=g, device="cpu").double()
    banned = torch.rand(2, n, m, generator=g, device="cpu") < 0.3
    # a guaranteed complete matching stays allowed
    k = min(n, m)
    keep = torch.zeros(n, m, dtype=torch.bool, device="cpu")
    keep[torch.arange(k, device="cpu"), torch.arange(k, device="cpu")] = True
    banned &= ~keep
    C[banned] = -math.inf if maximize else math.inf
    _check(C.to(torch.get_default_device()), maximize, backend)


@pytest.mark.parametrize("backend", BK)
def test_two_dimensional_and_large_range(backend):
    C = torch.tensor([[1e6, 3.0, 2.0], [4.0, 1e6, 6.0]], dtype=torch.float64)
    r, c = hotpath.ot.linear_sum_assignment(C, backend=backend)
    assert r.tolist() == [0, 1] and c.tolist() == [2, 0]


@pytest.mark.parametrize("backend", BK)
def test_bad_input_raises(backend):
    inf = math.inf
    infeasible = torch.tensor([[[1.0, inf], [2.0, inf]]])
    with pytest.raises(ValueError):
        hotpath.ot.linear_sum_assignment(infeasible, backend=backend)
    with pytest.raises(ValueError):
        hotpath.ot.linear_sum_assignment(torch.tensor([[[1.0, math.nan], [2.0, 3.0]]]), backend=backend)
    with pytest.raises(ValueError):
        hotpath.ot.linear_sum_assignment(torch.tensor([[[1.0, -inf], [2.0, 3.0]]]), backend=backend)


@pytest.mark.parametrize("backend", BK)
def test_op_directly_and_empty(backend):
    C = torch.tensor([[[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]])
    rows, cols = ops.lsa_solve.with_backend(backend, C, False)
    assert rows.tolist() == [[0, 1, 2]] and float(C[0, rows[0], cols[0]].sum()) == 5.0
    r0, c0 = ops.lsa_solve.with_backend(backend, torch.zeros(2, 0, 3), False)
    assert r0.shape == c0.shape == (2, 0)


@pytest.mark.parametrize("backend", BK)
def test_kernel_result_needs_no_fallback(backend, monkeypatch):
    """The CPU re-solve is a rare path: ordinary problems must pass the slack certificate."""
    from hotpath.backends.triton import assignment as tri

    def no_fallback(C, maximize):
        raise AssertionError("fell back to the CPU kernel")
    monkeypatch.setattr(tri, "_cpu_solve", no_fallback)
    g = torch.Generator().manual_seed(3)  # a CPU generator: draw on the CPU, then move
    _check(torch.randint(0, 5, (2, 6, 6), generator=g, device="cpu").double().to(torch.get_default_device()), False,
           backend)
    _check(torch.rand(1, 4, 6, generator=g, dtype=torch.float64, device="cpu").to(torch.get_default_device()), True,
           backend)
