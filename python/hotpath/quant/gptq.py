"""GPTQ rounding for the weight formats (quantize_(model, config, calibrate=...)).

Round-to-nearest picks each weight's code alone. GPTQ (Frantar et al., 2022) rounds the columns
of W one at a time and moves each column's rounding error onto the columns not yet rounded,
weighted by the inverse of the layer's input second moment H = E[x x^T], so that the error of
the layer's *output* on inputs like the calibration ones is minimized, not the weights' own.
The stored format is unchanged: each layer keeps the scales round-to-nearest would choose (the
format's `gptq_quantizer`), only the codes differ, and the same kernels run.

H is collected for every target layer in one pass of the float model (forward hooks on the
nn.Linear inputs, float64), then each layer is rounded independently. Columns that never see a
nonzero input (H_kk = 0) are rounded to nearest and pass no error on.
"""
from typing import Callable, Dict

import torch
from torch import Tensor, nn

from ._base import QuantConfig


def collect_hessians(model: nn.Module, want, calibrate: Callable[[nn.Module], object]) -> Dict[str, Tensor]:
    """{fqn: sum over calibration rows of x x^T (K, K) float64, divided by the row count}."""
    sums, counts, hooks = {}, {}, []

    def hook(fqn):
        def fn(mod, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
            sums[fqn] = sums[fqn] + x.T @ x
            counts[fqn] += x.shape[0]
        return fn

    for fqn, mod in model.named_modules():
        if want(mod, fqn):
            sums[fqn] = torch.zeros(mod.in_features, mod.in_features, dtype=torch.float64, device=mod.weight.device)
            counts[fqn] = 0
            hooks.append(mod.register_forward_hook(hook(fqn)))
    try:
        with torch.no_grad():
            calibrate(model)
    finally:
        for h in hooks:
            h.remove()
    bad = [fqn or "<model>" for fqn, s in sums.items() if not bool(torch.isfinite(s).all())]
    if bad:
        # a NaN / inf input reaches H and its Cholesky factorization would fail obscurely
        raise ValueError(f"calibrate fed non-finite (NaN / inf) inputs to layer(s) {bad[:5]}"
                         f"{' ...' if len(bad) > 5 else ''}: GPTQ needs finite calibration activations")
    missing = [fqn or "<model>" for fqn, c in counts.items() if c == 0]
    if missing:
        raise ValueError(f"calibrate never ran layer(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}: "
                         "it must call the model on sample inputs")
    return {fqn: sums[fqn] / counts[fqn] for fqn in sums}


def gptq_round(weight: Tensor, H: Tensor, round_columns, damp: float = 0.1, block: int = 128) -> Tensor:
    """The GPTQ-rounded values (N, K) float32 of weight under round_columns (see
    QuantConfig.gptq_quantizer), for input second moment H (K, K)."""
    W = weight.detach().to(torch.float64).clone()
    K = W.shape[1]
    H = H.to(torch.float64).clone()
    dead = torch.diagonal(H) <= 0
    H[dead, dead] = 1.0
    H += damp * torch.diagonal(H).mean() * torch.eye(K, dtype=H.dtype, device=H.device)
    # upper Cholesky factor of H^-1: row i holds the error propagation weights of column i
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.empty_like(W)
    for k0 in range(0, K, block):
        k1 = min(K, k0 + block)
        W1, E1, Hb = W[:, k0:k1], torch.empty_like(W[:, k0:k1]), Hinv[k0:k1, k0:k1]
        for i in range(k1 - k0):
            q = round_columns(W1[:, i:i + 1], k0 + i)[:, 0]
            Q[:, k0 + i] = q
            e = (W1[:, i] - q) / Hb[i, i]
            W1[:, i + 1:] -= e[:, None] * Hb[i, i + 1:][None, :]
            E1[:, i] = e
        W[:, k1:] -= E1 @ Hinv[k0:k1, k1:]  # the block's errors onto every later column at once
    return Q.to(torch.float32)


def gptq_converter(model: nn.Module, config: QuantConfig, want, calibrate, damp: float):
    """fqn, nn.Linear -> (qparams, GPTQ-rounded weight) for QuantLinear.from_linear (used by quantize_)."""
    if not callable(calibrate):
        raise TypeError(f"calibrate must be callable (model) -> anything, got {type(calibrate).__name__}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp > 0:
        raise ValueError(f"gptq_damp must be a positive number, got {damp!r}")
    probe = next((m for f, m in model.named_modules() if want(m, f)), None)
    if probe is not None and config.gptq_quantizer(probe.weight.detach().float()) is None:
        raise ValueError(f"{type(config).__name__} has no GPTQ path (calibrate=); use round-to-nearest")
    hessians = collect_hessians(model, want, calibrate)

    def convert(fqn, linear):
        w = linear.weight.detach().float()
        qparams, round_columns = config.gptq_quantizer(w)
        return qparams, gptq_round(w, hessians.pop(fqn), round_columns, float(damp))

    return convert
