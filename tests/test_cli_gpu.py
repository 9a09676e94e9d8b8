"""The GPU check command and the benchmark --device plumbing.

Without CUDA `gpucheck` and `bench --device cuda` stop with status 2 and a message; the Harness
records the device it ran on; a family declares the devices its cases are written for. The GPU
cases of every family are dry-run on CPU tensors at tiny sizes (`h.shrink`): they are only timed
on a GPU, but their code (peers, targets, value checks) must run anywhere.
"""
import importlib
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from hotpath import __main__ as cli
from hotpath import _gpucheck
from hotpath.benchmarks import harness

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_gpucheck_without_cuda_says_so_and_exits_2(no_cuda, tmp_path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(_gpucheck, "_tee", lambda *a, **k: started.append(a) or (0, 0.0))
    out = tmp_path / "gc"
    assert cli.main(["gpucheck", "--out", str(out)]) == 2
    msg = capsys.readouterr().out
    assert "no CUDA device" in msg and "nothing was run" in msg
    assert not started and not out.exists()  # no child process, no records


def test_bench_device_cuda_without_cuda_exits_2(no_cuda, tmp_path, capsys):
    assert cli.main(["bench", "pairwise", "--device", "cuda", "--quick", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "results.json").exists()


def test_bench_cli_passes_device_quick_out(monkeypatch, tmp_path):
    seen = {}

    def fake_main(names, quick=False, out="bench-results", device=None):
        seen.update(names=names, quick=quick, out=out, device=device)
        return 0
    monkeypatch.setattr(harness, "main", fake_main)
    assert cli.main(["bench", "pairwise", "ot", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert seen == {"names": ["pairwise", "ot"], "quick": True, "out": str(tmp_path), "device": "cpu"}
    assert cli.main(["bench"]) == 0 and seen["device"] == "cpu" and seen["quick"] is False
    with pytest.raises(SystemExit):
        cli.main(["bench", "--device", "tpu"])


def test_gpucheck_cli_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(_gpucheck, "main", lambda **kw: seen.update(kw) or 0)
    assert cli.main(["gpucheck", "--out", "d", "--full", "--keep-going", "--no-bench"]) == 0
    assert seen == {"out": "d", "quick": False, "maxfail": None, "tests": True, "bench": False, "tests_dir": None,
                    "budget": None, "families": (), "all_tests": False}
    assert cli.main(["gpucheck", "--budget", "540", "--family", "quant", "--family", "ot", "--all-tests"]) == 0
    assert seen["maxfail"] == _gpucheck.MAXFAIL and seen["budget"] == 540.0 and seen["families"] == ("quant", "ot") and seen["all_tests"] is True


def test_gpucheck_commands_and_environment(tmp_path, monkeypatch):
    """What gpucheck would run: GPU-mode pytest of this repository's tests and bench --device cuda
    --quick, in an environment that cannot push them back onto the interpreter or a forced backend."""
    tests = _gpucheck.find_tests()
    assert tests is not None and os.path.isfile(os.path.join(tests, "conftest.py"))
    cmd = _gpucheck.pytest_command(tests, str(tmp_path))
    assert cmd[:4] == [sys.executable, "-m", "pytest", tests] and f"--maxfail={_gpucheck.MAXFAIL}" in cmd
    assert "-q" in cmd and "-n" not in cmd
    assert not any(c.startswith("--maxfail") for c in _gpucheck.pytest_command(tests, str(tmp_path), maxfail=None))
    spread = _gpucheck.pytest_command(tests, str(tmp_path), workers=8)
    assert spread[spread.index("-n") + 1] == "8" and spread[spread.index("--dist") + 1] == "loadfile"
    assert 1 <= _gpucheck.test_workers() <= 8
    b = _gpucheck.bench_command(str(tmp_path))
    assert b[1:] == ["-m", "hotpath", "bench", "--device", "cuda", "--out", str(tmp_path / "bench"), "--quick"]
    assert "--quick" not in _gpucheck.bench_command(str(tmp_path), quick=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("HOTPATH_BACKEND", "reference")
    env, dropped = _gpucheck.child_env()
    assert "TRITON_INTERPRET" not in env and "HOTPATH_BACKEND" not in env
    assert set(dropped) >= {"TRITON_INTERPRET", "HOTPATH_BACKEND"}
    import hotpath
    assert os.path.dirname(os.path.dirname(os.path.abspath(hotpath.__file__))) in env["PYTHONPATH"].split(os.pathsep)


@pytest.fixture
def fake_gpu(monkeypatch):
    """gpucheck.main on a faked CUDA machine whose child processes are fake_tee(cmd, log, env, ...)."""
    def use(fake_tee):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(_gpucheck, "_device_record", lambda: {"gpu": "Fake GPU", "capability": "sm_90",
                                                                   "memory_gib": 1.0, "torch": torch.__version__,
                                                                   "cuda": "13.0", "triton": "3.6.0"})
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
        monkeypatch.setattr(_gpucheck, "_tee", fake_tee)
        monkeypatch.setattr(_gpucheck, "warm_shards", lambda: 0)
        monkeypatch.setattr(_gpucheck.shutil, "which", lambda name: None)
    return use


def _fake_bench_results(cmd):
    """What a benchmark child run as cmd would leave: one case of its family in --out."""
    out, fam = cmd[cmd.index("--out") + 1], cmd[4]
    os.makedirs(out, exist_ok=True)
    case = {"case": f"{fam} case", "work": None, "unit": None, "family": fam,
            "impls": {"hotpath": {"seconds": 1e-3, "peak_mb": 1.0, "runs": 3}}}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": {}, "cases": [case], "targets": [], "notes": []}, f)


@pytest.mark.parametrize("tests_rc,bench_rc,status", [(0, 0, 0), (1, 0, 1), (0, 1, 1)])
def test_gpucheck_flow_and_status(tests_rc, bench_rc, status, tmp_path, fake_gpu, monkeypatch):
    """With CUDA (faked here): tests, then the benchmark even after a failed test; the exit status
    and summary.json say what failed."""
    monkeypatch.delenv("TRITON_PRINT_AUTOTUNING", raising=False)
    ran = []

    def fake_tee(cmd, log_path, env, cwd=None, timeout=None, append=False):
        is_pytest = cmd[1:3] == ["-m", "pytest"]
        ran.append("pytest" if is_pytest else cmd[4])
        assert timeout is None and (env.get("HOTPATH_GPU_TESTS_ONLY") == "1") == is_pytest
        # the benchmark's log records each autotuner's pick; the tests' log stays quiet
        assert (env.get("TRITON_PRINT_AUTOTUNING") == "1") != is_pytest
        with open(log_path, "a" if append else "w") as f:
            f.write("1 failed, 9 passed in 1.0s\n" if is_pytest and tests_rc else "10 passed in 1.0s\n")
        if not is_pytest:
            _fake_bench_results(cmd)
        return (tests_rc if is_pytest else bench_rc), 1.0
    fake_gpu(fake_tee)
    fams = harness.families()
    assert _gpucheck.main(out=str(tmp_path)) == status
    assert ran == ["pytest"] + fams  # one benchmark process per family
    rec = json.loads((tmp_path / "summary.json").read_text())
    assert rec["device"]["gpu"] == "Fake GPU" and rec["exit"] == status
    assert rec["tests"]["exit"] == tests_rc and rec["bench"]["exit"] == bench_rc
    assert sorted(rec["bench"]["families"]) == sorted(fams)
    assert ("failed" in rec["tests"]["summary"]) == bool(tests_rc)
    merged = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert [c["family"] for c in merged["cases"]] == fams and merged["meta"]["gpu"] == "Fake GPU"
    assert "quant case" in (tmp_path / "bench" / "results.md").read_text()
    assert (tmp_path / "bench.log").read_text().count("10 passed") == len(fams)
    ran.clear()
    assert _gpucheck.main(out=str(tmp_path), tests=False) == (1 if bench_rc else 0) and ran == fams
    ran.clear()
    assert _gpucheck.main(out=str(tmp_path), tests_dir=str(tmp_path / "nowhere")) == 2 and ran == fams


def test_gpucheck_budget_splits_time(tmp_path, fake_gpu):
    """--budget: the tests get TESTS_SHARE of it (per-test timeout no longer than that), the
    benchmark what is left; a stopped step makes the status 1."""
    seen = []

    def fake_tee(cmd, log_path, env, cwd=None, timeout=None, append=False):
        seen.append((cmd, timeout, env))
        with open(log_path, "a" if append else "w") as f:
            f.write("gpucheck: stopped after 1 s (--budget)\n")
        if cmd[1:3] == ["-m", "pytest"]:
            return _gpucheck.TIMED_OUT, 1.0
        _fake_bench_results(cmd)
        return 0, 1.0
    fake_gpu(fake_tee)
    assert _gpucheck.main(out=str(tmp_path), budget=400, families=("quant", "pairwise"), all_tests=True) == 1
    (tcmd, tlimit, tenv), (qcmd, qlimit, _), (pcmd, plimit, _) = seen
    assert tlimit == pytest.approx(400 * _gpucheck.TESTS_SHARE)
    if any(c.startswith("--timeout=") for c in tcmd):
        assert f"--timeout={int(tlimit)}" in tcmd
    assert "HOTPATH_GPU_TESTS_ONLY" not in tenv
    # what the tests leave (here all of it) shared by weight, quant 2, pairwise 1; what quant
    # leaves goes to pairwise
    assert qcmd[3:5] == ["bench", "quant"] and pcmd[3:5] == ["bench", "pairwise"]
    rest = 400
    assert qlimit == pytest.approx(rest * 2 / 3, rel=0.05) and plimit == pytest.approx(rest, rel=0.05)
    rec = json.loads((tmp_path / "summary.json").read_text())
    assert rec["tests"]["exit"] == _gpucheck.TIMED_OUT and "stopped" in rec["tests"]["summary"]


def test_gpucheck_bench_never_starts_past_the_budget(tmp_path, fake_gpu):
    """With under 10 s of the budget left no benchmark family is started; the run says so and its
    status is that of a stopped step."""
    started = []
    fake_gpu(lambda cmd, *a, **k: started.append(cmd) or (0, 0.0))
    rec = _gpucheck._run_bench(str(tmp_path), True, ("quant", "pairwise"), dict(os.environ), budget=5)
    assert started == [] and rec["exit"] == _gpucheck.TIMED_OUT
    assert all(r["command"] is None for r in rec["families"].values())


def test_gpucheck_warm_shards_run_beside_and_are_stopped(tmp_path, monkeypatch):
    """The cache-warming shards start in the background and are stopped when the checks end;
    summary.json says how many finished and what each printed last."""
    assert _gpucheck.warm_command(1, 4, ("contrastive", "quant"))[1:] == [
        "-m", "hotpath", "compilecheck", "--warm", "--shard", "1/4", "--family", "contrastive", "--family", "quant"]
    monkeypatch.setattr(_gpucheck, "warm_shards", lambda: 2)
    done = "compilecheck --warm (shard 0/2): 3 kernel configurations compiled or found in the cache in 1 s"

    def fake_command(i, n, families):
        code = f"print({done!r}, flush=True)" if i == 0 else "import time; time.sleep(120)"
        return [sys.executable, "-c", code]
    monkeypatch.setattr(_gpucheck, "warm_command", fake_command)
    procs, log, t0 = _gpucheck._start_warm(str(tmp_path), dict(os.environ), ("quant",))
    procs[0].wait(timeout=120)
    rec = _gpucheck._stop_warm(procs, log, t0)
    assert rec["shards"] == 2 and rec["finished"] == 1 and rec["summaries"] == [done]
    assert all(p.poll() is not None for p in procs) and rec["seconds"] < 100
    assert done in (tmp_path / "warm.log").read_text()
    # nothing to warm: no family that compilecheck knows
    assert _gpucheck._start_warm(str(tmp_path), dict(os.environ), ("assignment",)) is None


def test_warm_shards_leave_the_test_workers_their_cores(monkeypatch):
    monkeypatch.setattr(_gpucheck, "test_workers", lambda: 8)
    monkeypatch.setattr(_gpucheck.os, "cpu_count", lambda: 16)
    assert _gpucheck.warm_shards() in (0, 7)   # 0 where triton is not installed
    monkeypatch.setattr(_gpucheck.os, "cpu_count", lambda: 2)
    assert _gpucheck.warm_shards() == 0


def test_harness_keeps_finished_cases_on_disk(tmp_path):
    """A benchmark process stopped by a time limit leaves every case it had finished in results.*."""
    h = harness.Harness(quick=True, device="cpu")
    h.out = str(tmp_path)
    h.family = "tinyfake"
    h.case("first")
    h.measure("hotpath", lambda: torch.ones(4).sum())
    h.case("second")  # the process is killed while this one runs
    res = json.loads((tmp_path / "results.json").read_text())
    assert [c["case"] for c in res["cases"]] == ["first"] and "seconds" in res["cases"][0]["impls"]["hotpath"]
    assert "| tinyfake | first | hotpath |" in (tmp_path / "results.md").read_text()


def test_gpucheck_tee_stops_at_timeout(tmp_path):
    log = tmp_path / "x.log"
    code = "import time; print('started', flush=True); time.sleep(60)"
    rc, secs = _gpucheck._tee([sys.executable, "-c", code], str(log), dict(os.environ), timeout=2)
    assert rc == _gpucheck.TIMED_OUT and secs < 30
    text = log.read_text()
    assert "started" in text and "stopped after 2 s" in text


def test_gpu_tests_only_deselects_cpu_parametrizations():
    """HOTPATH_GPU_TESTS_ONLY=1 (gpucheck's default) keeps the GPU parametrizations only."""
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, "-m", "pytest", os.path.join(here, "test_contrastive.py"), "--collect-only", "-q",
           "-p", "no:cacheprovider", "-k", "clip_matches_reference"]
    ids = {}
    for flag in ("0", "1"):
        env = dict(os.environ, HOTPATH_GPU_TESTS_ONLY=flag)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=os.path.dirname(here)).stdout
        ids[flag] = [ln for ln in out.splitlines() if "::" in ln]
    assert any(i.endswith("reference]") for i in ids["0"]) and any(i.endswith("cpu]") for i in ids["0"])
    assert ids["1"] and all(i.endswith("triton]") for i in ids["1"])


def test_gpucheck_tee_keeps_log_and_status(tmp_path, capsys):
    log = tmp_path / "x.log"
    rc, _ = _gpucheck._tee([sys.executable, "-c", "print('one'); print('two'); raise SystemExit(3)"], str(log),
                           dict(os.environ))
    assert rc == 3
    assert "one\ntwo" in log.read_text() and "two" in capsys.readouterr().out


@pytest.mark.parametrize("device", DEVICES)
def test_harness_records_device(device, tmp_path):
    h = harness.Harness(quick=True, device=device, repeat=2)
    h.family = "tiny"
    a = torch.randn(64, 64, device=device)
    h.case("matmul 64", work=64 ** 3, unit="MAC")
    h.measure("ours", lambda: a @ a, value=lambda out: out.sum().item())
    h.measure("theirs", lambda: (a.double() @ a.double()).float())
    h.target("theirs", 1e-9)
    h.save(str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["meta"]["device"] == device
    r = res["cases"][0]["impls"]["ours"]
    assert r["seconds"] > 0 and r["runs"] >= 1
    assert res["targets"][0]["met"] is True
    md = (tmp_path / "results.md").read_text()
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        assert res["meta"]["gpu"] == name and f"GPU {name}" in md
    else:
        assert res["meta"]["gpu"] is None and "GPU" not in md.splitlines()[0]


def test_harness_cuda_branches_with_stubbed_cuda(monkeypatch, tmp_path):
    """The CUDA-only code of the harness (second warm-up, sub-millisecond calls timed in batches,
    allocator peak, GPU name in the records) runs here with torch.cuda stubbed and CPU tensors."""
    syncs = []
    for name, fn in {"synchronize": lambda *a: syncs.append(1), "reset_peak_memory_stats": lambda *a: None,
                     "memory_allocated": lambda *a: 0, "max_memory_allocated": lambda *a: 3 * 2**20,
                     "empty_cache": lambda: None, "get_device_name": lambda *a: "Stub GPU"}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    h = harness.Harness(quick=True, device="cuda", repeat=3)  # a device name; nothing allocates on it
    h.family = "tiny"
    calls = []
    h.case("tiny call")
    h.measure("hotpath", lambda: calls.append(1))
    r = h._case["impls"]["hotpath"]
    assert "seconds" in r and r["peak_mb"] == 3.0
    assert len(calls) > 2 + 3 + 1  # two warm-ups, then 3 timed batches of several calls, one memory run
    assert syncs
    h.save(str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["meta"]["gpu"] == "Stub GPU" and "GPU Stub GPU" in (tmp_path / "results.md").read_text()


def _fake_family(monkeypatch, devices):
    calls = []
    mod = types.ModuleType("hotpath.benchmarks.bench_tinyfake")
    if devices is not None:
        mod.DEVICES = devices

    def run(h, quick):
        calls.append((h.device, quick))
        x = torch.ones(8, device=h.device)
        h.case("sum of 8")
        h.measure("hotpath", lambda: x.sum())
    mod.run = run
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(harness, "families", lambda: ["tinyfake"])
    monkeypatch.setattr(harness, "family_modules", lambda fam: ["bench_tinyfake"])
    return calls


def test_harness_main_runs_family_on_device(monkeypatch, tmp_path):
    calls = _fake_family(monkeypatch, ("cpu", "cuda"))
    assert harness.main(["tinyfake"], quick=True, out=str(tmp_path), device="cpu") == 0
    assert calls == [("cpu", True)]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["meta"]["device"] == "cpu" and res["cases"][0]["family"] == "tinyfake"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_harness_main_skips_cpu_only_family_on_cuda(monkeypatch, tmp_path):
    calls = _fake_family(monkeypatch, None)  # no DEVICES: CPU cases only
    assert harness.main(["tinyfake"], quick=True, out=str(tmp_path), device="cuda") == 0
    assert calls == []
    res = json.loads((tmp_path / "results.json").read_text())
    assert any("no cuda cases" in n for n in res["notes"])


def test_every_family_has_gpu_cases():
    """Each benchmark module declares cuda among its devices and has the run_cuda it dispatches to."""
    for fam in harness.families():
        for m in harness.family_modules(fam):
            mod = importlib.import_module(f"hotpath.benchmarks.{m}")
            devices = getattr(mod, "DEVICES", ("cpu",))
            if "cuda" in devices:
                assert callable(getattr(mod, "run_cuda", None)), m


class _DryHarness(harness.Harness):
    """Calls each measured function once (the code runs; nothing is timed)."""

    def measure(self, impl, fn, *, repeat=None, value=None):
        c = self._case
        try:
            out = fn()
            if value is not None:
                c.setdefault("values", {})[impl] = float(value(out))
            c["impls"][impl] = {"seconds": 1e-3, "peak_mb": 1.0, "runs": 1}
        except Exception as exc:
            c["impls"][impl] = {"error": f"{type(exc).__name__}: {exc}"}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["pairwise", "ot", "sliced", "contrastive", "quant"])
def test_gpu_cases_dry_run_on_cpu(family):
    """The GPU cases' code on CPU tensors at 1/1024 of their sizes (at least 16): every row runs,
    a peer that is not installed (or needs CUDA) is skipped, never failed."""
    h = _DryHarness(quick=True, device="cpu")
    h.shrink = 1024
    h.family = family
    for m in harness.family_modules(family):
        importlib.import_module(f"hotpath.benchmarks.{m}").run_cuda(h, True)
    failed = [(c["case"], impl, r["error"]) for c in h.rows for impl, r in c["impls"].items() if "error" in r]
    assert not failed
    assert h.rows and h.targets
