"""POT's own 1-D solver test cases (POT test/test_1d_solver.py), written anew against hotpath.

hotpath has wasserstein_1d (W_p^p, batched, differentiable) but no emd_1d / emd2_1d (plans,
metric names) nor emd_1d_dual_backprop; the value checks of those cases are kept through
wasserstein_1d (emd2_1d with metric="sqeuclidean" is W_2^2, "euclidean" is W_1), against an
exact oracle (north-west corner rule on sorted samples) and scipy. What is left out is listed in
docs/sliced.md. POT's `nx` fixture becomes the `kind` parameter (numpy arrays, torch tensors).
"""
import numpy as np
import pytest
import torch

import hotpath as hp
from hotpath.ot import wasserstein_1d

from test_peer_pot_sliced import KINDS, TORCH_TYPES, emd2_1d_exact, from_numpy, to_numpy

stats = pytest.importorskip("scipy.stats")


def test_emd_1d_emd2_1d_with_weights():
    n, m = 20, 30
    rng = np.random.RandomState(0)
    u = rng.randn(n, 1)
    v = rng.randn(m, 1)
    w_u = rng.uniform(0.0, 1.0, n)
    w_u = w_u / w_u.sum()
    w_v = rng.uniform(0.0, 1.0, m)
    w_v = w_v / w_v.sum()
    wass = emd2_1d_exact(u.ravel(), v.ravel(), w_u, w_v, 2)            # POT: ot.emd(...) cost
    wass1d = wasserstein_1d(u.ravel(), v.ravel(), w_u, w_v, p=2)        # POT: ot.emd2_1d(sqeuclidean)
    wass1d_euc = wasserstein_1d(u.ravel(), v.ravel(), w_u, w_v, p=1)    # POT: ot.emd2_1d(euclidean)
    np.testing.assert_allclose(wass, wass1d)
    # (n, 1) values: one problem in the trailing dimension, as POT's batched wasserstein_1d
    np.testing.assert_allclose(wasserstein_1d(u, v, w_u, w_v, p=2), [wass])
    wass_sp = stats.wasserstein_distance(u.reshape((-1,)), v.reshape((-1,)), w_u, w_v)
    np.testing.assert_allclose(wass_sp, wass1d_euc)


@pytest.mark.parametrize("kind", KINDS)
def test_wasserstein_1d(kind):
    rng = np.random.RandomState(0)
    n = 100
    x = np.linspace(0, 5, n)
    rho_u = np.abs(rng.randn(n))
    rho_u /= rho_u.sum()
    rho_v = np.abs(rng.randn(n))
    rho_v /= rho_v.sum()
    xb, rho_ub, rho_vb = from_numpy(kind, x, rho_u, rho_v)
    # test 1 : wasserstein_1d should be close to scipy W_1 implementation
    np.testing.assert_almost_equal(to_numpy(wasserstein_1d(xb, xb, rho_ub, rho_vb, p=1)),
                                   stats.wasserstein_distance(x, x, rho_u, rho_v))
    # test 2 : wasserstein_1d should be close to one when only translating the support
    np.testing.assert_almost_equal(to_numpy(wasserstein_1d(xb, xb + 1, p=2)), 1.0)
    # test 3 : arrays test
    X = np.stack((np.linspace(0, 5, n), np.linspace(0, 5, n) * 10), -1)
    Xb = from_numpy(kind, X)
    res = to_numpy(wasserstein_1d(Xb, Xb, rho_ub, rho_vb, p=2))
    np.testing.assert_almost_equal(100 * res[0], res[1], decimal=4)


@pytest.mark.parametrize("p", [1, 2])  # p = 2: the value of POT's emd2_1d type / device test
def test_wasserstein_1d_type_devices(p):
    rng = np.random.RandomState(0)
    n = 10
    x = np.linspace(0, 5, n)
    rho_u = np.abs(rng.randn(n))
    rho_u /= rho_u.sum()
    rho_v = np.abs(rng.randn(n))
    rho_v /= rho_v.sum()
    for dtype, device in TORCH_TYPES:
        xb, rho_ub, rho_vb = from_numpy("torch", x, rho_u, rho_v, dtype=dtype, device=device)
        res = wasserstein_1d(xb, xb, rho_ub, rho_vb, p=p)
        assert res.dtype == xb.dtype and res.device == xb.device
    for dtype in (np.float32, np.float64):
        res = wasserstein_1d(x.astype(dtype), x.astype(dtype), rho_u.astype(dtype), rho_v.astype(dtype), p=p)
        assert isinstance(res, np.floating) and res.dtype == dtype


def test_emd_1d_emd2_1d():
    n, m = 20, 30
    rng = np.random.RandomState(0)
    u = rng.randn(n, 1)
    v = rng.randn(m, 1)
    wass = emd2_1d_exact(u.ravel(), v.ravel(), np.full(n, 1 / n), np.full(m, 1 / m), 2)  # POT: ot.emd([], [], M)
    wass1d_emd2 = wasserstein_1d(u.ravel(), v.ravel(), [], [], p=2)   # POT: ot.emd2_1d(u, v, [], [])
    wass1d_euc = wasserstein_1d(u.ravel(), v.ravel(), [], [], p=1)
    np.testing.assert_allclose(wass, wass1d_emd2)
    wass_sp = stats.wasserstein_distance(u.reshape((-1,)), v.reshape((-1,)))
    np.testing.assert_allclose(wass_sp, wass1d_euc)


@pytest.mark.parametrize("kind", KINDS)
def test_emd1d_dual_backprop_batch_values(kind):
    # the value part of POT's test_emd1d_dual_backprop_batch (hotpath has no 1-D dual potentials;
    # its gradients come from autograd instead, checked by gradcheck in test_wasserstein1d.py)
    rng = np.random.RandomState(0)
    n = 20
    rho_u = np.abs(rng.randn(n))
    rho_u /= rho_u.sum()
    rho_v = np.abs(rng.randn(n))
    rho_v /= rho_v.sum()
    rho_ub, rho_vb = from_numpy(kind, rho_u, rho_v)
    X = np.stack((np.linspace(0, 5, n), np.linspace(0, 5, n) * 10), -1)
    Xb = from_numpy(kind, X)
    res = to_numpy(wasserstein_1d(Xb, Xb, rho_ub, rho_vb, p=2))
    np.testing.assert_almost_equal(100 * res[0], res[1], decimal=4)
    for k in range(2):
        np.testing.assert_allclose(res[k], emd2_1d_exact(X[:, k], X[:, k], rho_u, rho_v, 2), rtol=1e-10)


def test_emd1d_dual_with_weights_values():
    # the value part of POT's test_emd1d_dual_with_weights, with the gradient of the value (what
    # POT's duals are used for) checked against autograd-free finite differences
    n, m = 20, 30
    rng = np.random.RandomState(0)
    u = torch.tensor(rng.randn(n), requires_grad=True)
    v = torch.tensor(rng.randn(m))
    w_u = rng.uniform(0.0, 1.0, n)
    w_u = w_u / w_u.sum()
    w_v = rng.uniform(0.0, 1.0, m)
    w_v = w_v / w_v.sum()
    val = wasserstein_1d(u, v, torch.tensor(w_u), torch.tensor(w_v), p=2)
    np.testing.assert_allclose(val.item(), emd2_1d_exact(u.detach().numpy(), v.numpy(), w_u, w_v, 2))
    val.backward()
    h = 1e-6
    for i in (0, 7, 19):
        e = np.zeros(n)
        e[i] = h
        fd = (emd2_1d_exact(u.detach().numpy() + e, v.numpy(), w_u, w_v, 2)
              - emd2_1d_exact(u.detach().numpy() - e, v.numpy(), w_u, w_v, 2)) / (2 * h)
        np.testing.assert_allclose(u.grad[i].item(), fd, rtol=1e-5, atol=1e-8)
