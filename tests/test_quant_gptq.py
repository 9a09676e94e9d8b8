"""GPTQ rounding (quantize_(..., calibrate=)): lower output error than round-to-nearest on inputs
like the calibration ones, stored exactly in the unchanged formats, clear errors."""
import pytest
import torch
from torch import nn

import hotpath as hp
from hotpath.quant import Int4Dynamic, Int4WeightOnly, Int8Dynamic, Int8WeightOnly, QuantLinear
from hotpath.quant import lowbit as L
from hotpath.quant.gptq import collect_hessians, gptq_round

CONFIGS = [Int8WeightOnly(), Int8Dynamic(), Int4WeightOnly(group_size=32), Int4Dynamic(group_size=32),
           L.FP8WeightOnly()]


def _inputs(n, K, seed):
    # correlated inputs with a few large channels (one fixed distribution, samples by seed):
    # where GPTQ differs from round-to-nearest
    mix = torch.randn(K, K, generator=torch.Generator().manual_seed(K)) / K ** 0.5 + torch.eye(K)
    x = torch.randn(n, K, generator=torch.Generator().manual_seed(seed)) @ mix
    x[:, :3] *= 8
    return x


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_gptq_beats_round_to_nearest(cfg):
    torch.manual_seed(0)
    lin = nn.Linear(128, 48)
    xc, xt = _inputs(512, 128, 1), _inputs(512, 128, 2)  # calibration / held-out
    rtn = QuantLinear.from_linear(lin, cfg)
    model = nn.Sequential(lin)
    hp.quant.quantize_(model, cfg, calibrate=lambda m: m(xc))
    gq = model[0]
    assert isinstance(gq, QuantLinear)
    w = lin.weight.detach()

    def err(q):  # output error due to the weights (dynamic formats add activation rounding on top)
        return (xt @ (cfg.dequantize_weight(q.qbuffers()) - w).T).pow(2).mean()

    assert err(gq) < 0.8 * err(rtn), (float(err(gq)), float(err(rtn)))
    with torch.no_grad():
        assert (gq(xt) - lin(xt)).pow(2).mean() <= (rtn(xt) - lin(xt)).pow(2).mean()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_gptq_values_are_stored_exactly(cfg):
    # the format keeps round-to-nearest's scales; the stored codes decode to GPTQ's values exactly
    torch.manual_seed(1)
    lin = nn.Linear(64, 20)
    x = _inputs(200, 64, 3)
    H = collect_hessians(lin, lambda m, f: m is lin, lambda m: m(x))[""]
    qparams, round_columns = cfg.gptq_quantizer(lin.weight.detach())
    wq = gptq_round(lin.weight.detach(), H, round_columns)
    q = QuantLinear.from_linear(lin, cfg, qparams=qparams, weight=wq)
    assert torch.equal(cfg.dequantize_weight(q.qbuffers()), wq)


def test_gptq_dead_inputs_and_batch_shapes():
    # inputs that are always zero pass no error on (H_kk = 0) and never give NaN
    lin = nn.Linear(32, 8)
    x = torch.randn(4, 10, 32)
    x[..., 5] = 0
    model = nn.Sequential(lin)
    hp.quant.quantize_(model, Int8WeightOnly(), calibrate=lambda m: m(x))
    assert torch.isfinite(model[0].config.dequantize_weight(model[0].qbuffers())).all()


def test_gptq_bad_input():
    lin = nn.Sequential(nn.Linear(32, 8))
    with pytest.raises(TypeError, match="calibrate"):
        hp.quant.quantize_(lin, Int8WeightOnly(), calibrate="data")
    with pytest.raises(ValueError, match="gptq_damp"):
        hp.quant.quantize_(lin, Int8WeightOnly(), calibrate=lambda m: m(torch.randn(3, 32)), gptq_damp=0)
    with pytest.raises(ValueError, match="GPTQ"):
        hp.quant.quantize_(lin, L.NVFP4(), calibrate=lambda m: m(torch.randn(3, 32)))
    with pytest.raises(ValueError, match="never ran"):
        hp.quant.quantize_(lin, Int8WeightOnly(), calibrate=lambda m: None)
    assert isinstance(lin[0], nn.Linear)  # nothing was replaced on error
