"""`python -m hotpath compilecheck`: Triton kernels compiled for an H200 (sm_90) without a GPU.

Triton's own compiler and ptxas ship in the triton wheel, so on this CPU machine the kernels are
compiled for real and their registers, spills and shared memory read back. A few launches of
each family run here (each compile takes seconds); `python -m hotpath compilecheck` runs them all.
"""
import json
import os

import pytest

from conftest import GPU_MODE, HAS_TRITON

pytestmark = [pytest.mark.skipif(not HAS_TRITON, reason="triton not installed"),
              pytest.mark.skipif(GPU_MODE, reason="compile-only mode stands in for a GPU; on one, the GPU tests run")]


def _ptxas():
    import triton
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))


@pytest.fixture(scope="module")
def h200(tmp_path_factory):
    if not _ptxas():
        pytest.skip("this triton wheel ships no ptxas")
    from hotpath import _compilecheck as CC
    out = tmp_path_factory.mktemp("cc")
    runs = {}
    for fam, case in (("pairwise", "d=3 k=3 values"), ("pairwise", "dot d=64 fwd+bwd"),
                      ("contrastive", "SigLipLoss d=512"), ("quant", "NVFP4 linear")):
        sub = out / f"{fam}-{case.replace(' ', '_').replace('=', '')}"
        rc = CC.main(targets=("h200",), families=(fam,), small=True, out=str(sub), only=case)
        with open(sub / "h200.json") as f:
            runs[(fam, case)] = (rc, json.load(f))
    return runs


def test_kernels_compile_for_sm90_within_bounds(h200):
    """Every launch compiles, fits 227 KB of shared memory and has a configuration free of
    register spills, in float32 (3xTF32, TF32, IEEE) and bf16."""
    for key, (rc, res) in h200.items():
        assert rc == 0 and not res["failures"], (key, res["failures"])
        assert res["records"], key


def test_precision_reaches_the_right_units(h200):
    """bf16, TF32 and 3xTF32 dots compile to tensor-core instructions (Hopper's warpgroup HGMMA,
    or HMMA where a tile is too small for a warpgroup), IEEE fp32 ones to FMAs, the online softmax
    to the exp2 unit."""
    def tensor_cores(s):
        return "HGMMA" in s or "HMMA" in s
    _, res = h200[("pairwise", "dot d=64 fwd+bwd")]
    by_prec = {}
    for r in res["records"]:
        by_prec.setdefault(r["params"]["PREC"], []).append(r["sass"])
    for prec in ("tf32", "tf32x3"):
        assert all(tensor_cores(s) and "MUFU.EX2" in s for s in by_prec[prec])
        assert any("HGMMA" in s for s in by_prec[prec])
    assert all(not tensor_cores(s) and s.get("FFMA", 0) > 500 for s in by_prec["ieee"])
    _, res = h200[("contrastive", "SigLipLoss d=512")]
    bf16 = [r for r in res["records"] if "bf16" in r["case"]]
    assert bf16 and all(tensor_cores(r["sass"]) for r in bf16)


def test_autotuned_passes_tune_separately(h200):
    """The backward's row and column passes (different constexprs, same sizes) each compile their
    own candidates: an autotuner keyed on sizes alone would reuse one pass's choice for the other."""
    _, res = h200[("pairwise", "d=3 k=3 values")]
    bwd = [r for r in res["records"] if r["kernel"] == "_softmax_bwd_kernel" and r["params"]["PREC"] == "ieee"]
    assert len({r["launch"] for r in bwd}) >= 2
    assert all(len([r for r in bwd if r["launch"] == ln]) > 1 for ln in {r["launch"] for r in bwd})


def test_unknown_target_is_refused(capsys):
    from hotpath import _compilecheck as CC
    assert CC.main(targets=("h300",)) == 2
    assert "unknown target" in capsys.readouterr().err


def test_warm_fills_the_cache_that_the_next_compile_reads(tmp_path):
    """`compilecheck --warm` compiles into Triton's ordinary cache (TRITON_CACHE_DIR): the same
    launches a second time find every kernel there; a shard takes its share of the cases."""
    if not _ptxas():
        pytest.skip("this triton wheel ships no ptxas")
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "hotpath", "compilecheck", "--warm", "--small", "--family", "quant",
           "--case", "Int8Dynamic", "--shard", "0/1"]

    def run():
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stdout + p.stderr
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("compilecheck --warm")][-1]
        return int(line.split(": ")[1].split()[0]), float(line.rsplit(" in ", 1)[1].split()[0])
    n1, s1 = run()
    cached = sum(len(files) for _, _, files in os.walk(tmp_path / "cache"))
    assert n1 > 0 and cached > 0
    n2, s2 = run()
    assert n2 == n1 and sum(len(files) for _, _, files in os.walk(tmp_path / "cache")) == cached
    assert s2 < s1
    p = subprocess.run(cmd[:-2] + ["--shard", "1/1"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "--shard" in p.stderr
