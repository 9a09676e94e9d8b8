"""`python -m hotpath gpucheck`: the whole library checked on one GPU in one command.

1. the test suite in GPU mode (tests/conftest.py runs the Triton / CUDA parametrizations on CUDA
   tensors, compiled, when CUDA is present), `pytest tests -q --maxfail=10 --timeout=600`, spread
   over pytest-xdist workers where it is installed, without the parametrizations pinned to the CPU
   backends (HOTPATH_GPU_TESTS_ONLY=1; --all-tests keeps them);
2. `python -m hotpath bench FAMILY --device cuda --quick` for each family in turn (the GPU cases
   of the speed issues, peers where installed; --family limits it), merged into bench/results.*.

While the tests run, `compilecheck --warm` shards (the cores the test workers leave) compile the
benchmark's kernels and autotuning candidates into Triton's cache, so that the benchmark, one
process, finds them compiled; they are stopped when the benchmark ends.

They run as child processes (a fresh CUDA context each; a crash in one still leaves the other's
record) whose output goes to the terminal and, line by line, to files under --out, so a run cut
short by a time limit keeps what it printed. Nothing is installed: missing peers skip their rows.
--budget SECONDS bounds the whole run: the tests get at most TESTS_SHARE of it and are stopped
there, the benchmark the rest, shared among its families (FAMILY_WEIGHT), so that a lent GPU's
time limit never ends the run before every family has printed.

Exit status: 0 when the tests pass and the benchmark completes, 1 when a test fails, a step is
stopped by the budget or the benchmark process crashes, 2 when there is no CUDA device or no way
to run the tests.
"""
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import torch

# variables that would take the child processes off the GPU path: an interpreter left on from CPU
# work, a forced CPU test device, a forced backend
_OFF_GPU_ENV = ("TRITON_INTERPRET", "HOTPATH_TEST_DEVICE", "HOTPATH_BACKEND")
# under --budget: the tests' share of it (the benchmark, the point of a GPU run, gets the rest)
TESTS_SHARE = 0.45
TIMED_OUT = 124
# a first GPU run should show many failures, not only the first, yet not spend its budget on a
# cascade of them
MAXFAIL = 10
# under --budget each benchmark family runs in its own process, stopped at its share of what is
# left (weights below, 1 for a family not named), so a family that compiles or runs long cannot
# leave the later ones without a row; time a family leaves unused goes to the next
FAMILY_WEIGHT = {"assignment": 0.25, "contrastive": 2.0, "ot": 2.0, "quant": 2.0}


def no_cuda_message():
    build = torch.version.cuda or "none (a CPU-only torch)"
    return (f"gpucheck: torch {torch.__version__} sees no CUDA device (CUDA build: {build}). "
            "This command checks the library on a GPU; nothing was run. On a CPU machine use "
            "`python -m pytest tests -q` and `python -m hotpath bench --quick`.")


def find_tests(tests_dir=None):
    """The tests folder: the one given, else the repository's (beside python/), else ./tests."""
    here = os.path.dirname(os.path.abspath(__file__))
    cands = [tests_dir] if tests_dir else [os.path.join(here, "..", "..", "tests"), os.path.join(os.getcwd(), "tests")]
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "conftest.py")):
            return os.path.normpath(os.path.abspath(c))
    return None


def child_env():
    """The environment of the child processes: on the GPU path, importing this same hotpath."""
    env = dict(os.environ)
    dropped = [k for k in _OFF_GPU_ENV if env.pop(k, None) is not None]
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env, dropped


def test_workers():
    """pytest-xdist workers for the GPU-mode tests: compiling Triton kernels is CPU work, so half
    the cores (at most 8) share the one GPU; 1 (no -n) without pytest-xdist."""
    if importlib.util.find_spec("xdist") is None:
        return 1
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def pytest_command(tests_dir, out, maxfail=MAXFAIL, per_test=600, workers=1):
    cmd = [sys.executable, "-m", "pytest", tests_dir, "-q", "-p", "no:cacheprovider",
           f"--junitxml={os.path.join(out, 'pytest.xml')}"]
    if maxfail:
        cmd.append(f"--maxfail={int(maxfail)}")
    if workers > 1:
        # a test file's tests on one worker: its kernels are compiled once, not by several workers
        # at the same time
        cmd += ["-n", str(int(workers)), "--dist", "loadfile"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={max(1, int(per_test))}")
    return cmd


def bench_command(out, quick=True, families=()):
    return [sys.executable, "-m", "hotpath", "bench", *families, "--device", "cuda",
            "--out", os.path.join(out, "bench")] + (["--quick"] if quick else [])


def _tee(cmd, log_path, env, cwd=None, timeout=None, append=False):
    """Run cmd with its output on stdout and in log_path (appended to with append); returns (exit
    status, seconds). Past timeout seconds its process group is killed and the status is TIMED_OUT."""
    t0 = time.time()
    with open(log_path, "a" if append else "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    text=True, errors="replace", bufsize=1, start_new_session=True)
        except OSError as exc:
            log.write(f"could not start: {exc}\n")
            print(f"could not start {cmd[:3]}: {exc}", flush=True)
            return 127, 0.0
        stopped = threading.Event()

        def stop():
            stopped.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        timer = threading.Timer(timeout, stop) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        with proc:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                log.flush()
            rc = proc.wait()
        if timer is not None:
            timer.cancel()
        if stopped.is_set():
            note = f"gpucheck: stopped after {timeout:.0f} s (--budget)"
            log.write(note + "\n")
            print(note, flush=True)
            rc = TIMED_OUT
    return rc, time.time() - t0


def _last_line(path, starts=None):
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    if starts:
        lines = [ln for ln in lines if any(s in ln for s in starts)] or lines
    return lines[-1] if lines else ""


def warm_shards():
    """Background `compilecheck --warm` processes beside the tests: the cores the test workers
    leave, less one, at most 8; none on a machine of 4 cores or fewer, or without Triton."""
    if importlib.util.find_spec("triton") is None:
        return 0
    cores = os.cpu_count() or 1
    return max(0, min(8, cores - test_workers() - 1)) if cores > 4 else 0


def warm_command(i, n, families):
    return [sys.executable, "-m", "hotpath", "compilecheck", "--warm", "--shard", f"{i}/{n}"] + \
        [a for f in families for a in ("--family", f)]


def _start_warm(out, env, families):
    """Start the shards of `compilecheck --warm` (the benchmark's kernels compiled into Triton's
    cache while the tests run); (processes, log file, start time)."""
    n = warm_shards()
    if n == 0:
        return None
    from . import _compilecheck
    from .benchmarks import harness
    # in the benchmark's family order, so that its first families find their kernels first
    fams = [f for f in (families or harness.families()) if f in _compilecheck.FAMILIES]
    if not fams:
        return None
    log = open(os.path.join(out, "warm.log"), "a")
    wenv = dict(env, OMP_NUM_THREADS="1")   # the compile is single-threaded; leave the cores to the others
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen(warm_command(i, n, fams), stdout=log, stderr=subprocess.STDOUT, env=wenv,
                                      start_new_session=True))
    print(f"\n== warming Triton's cache in the background: {n} x `hotpath compilecheck --warm --shard I/{n}` "
          f"({', '.join(fams)}; warm.log)", flush=True)
    return procs, log, time.time()


def _stop_warm(procs, log, t0):
    """Stop the shards still running; what they did, for summary.json."""
    finished = sum(p.poll() is not None for p in procs)
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        p.wait()
    log.close()
    with open(log.name, errors="replace") as f:
        done = [ln.strip() for ln in f if ln.startswith("compilecheck --warm")]
    return {"shards": len(procs), "finished": finished, "seconds": round(time.time() - t0, 1), "summaries": done}


def _run_bench(out, quick, families, env, budget):
    """The benchmark, one process per family (each stopped at its share of budget), logged in turn
    to bench.log; the families' results merged into bench/results.*."""
    from .benchmarks import harness
    fams = list(families or harness.families())
    # the autotuners' picks go into bench.log: which tile (and W8A8 weight read) won is what the
    # next tuning round starts from
    benv = dict(env, TRITON_PRINT_AUTOTUNING=env.get("TRITON_PRINT_AUTOTUNING", "1"))
    log = os.path.join(out, "bench.log")
    parts = tempfile.mkdtemp(prefix="gpucheck-bench-")
    t0, exit_, runs = time.time(), 0, {}
    for i, fam in enumerate(fams):
        limit = None
        if budget is not None:
            left = budget - (time.time() - t0)
            if left < 10:   # the budget is spent: the remaining families are not started
                print(f"\n== benchmarks: {fam} not run (--budget spent)", flush=True)
                runs[fam] = {"exit": TIMED_OUT, "seconds": 0.0, "limit": 0.0, "command": None}
                exit_ = exit_ or TIMED_OUT
                continue
            weights = [FAMILY_WEIGHT.get(f, 1.0) for f in fams[i:]]
            # at least 20 s where that much is left (a process start and a first case), never
            # past the budget
            limit = max(min(left, 20.0), left * weights[0] / sum(weights))
        cmd = bench_command(os.path.join(parts, fam), quick, (fam,))
        print(f"\n== benchmarks: {' '.join(cmd)}" + ("" if limit is None else f" (at most {limit:.0f} s)"), flush=True)
        rc, secs = _tee(cmd, log, benv, timeout=limit, append=i > 0)
        runs[fam] = {"exit": rc, "seconds": round(secs, 1), "limit": limit, "command": cmd}
        exit_ = exit_ or rc
    try:
        harness.merge([os.path.join(parts, f, "bench", "results.json") for f in fams], os.path.join(out, "bench"),
                      quick=quick, device="cuda")
    except Exception as exc:  # the logs still hold every row
        print(f"gpucheck: could not merge the benchmark results: {type(exc).__name__}: {exc}", flush=True)
    shutil.rmtree(parts, ignore_errors=True)
    return {"exit": exit_, "seconds": round(time.time() - t0, 1), "families": runs,
            "results": os.path.join(out, "bench", "results.md")}


def _device_record():
    p = torch.cuda.get_device_properties(0)
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = None
    return {"gpu": torch.cuda.get_device_name(0), "capability": f"sm_{p.major}{p.minor}",
            "memory_gib": round(p.total_memory / 2**30, 1), "gpus": torch.cuda.device_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": tv,
            "python": platform.python_version(), "platform": platform.platform()}


def _checks(rec, out, env, t_start, quick, maxfail, tests, bench, tests_dir, budget, families, all_tests):
    """The tests, then the benchmark; their records in rec; the exit status."""
    status = 0
    if tests:
        tdir = find_tests(tests_dir)
        if tdir is None:
            print("gpucheck: no tests folder with a conftest.py found (pass --tests DIR); tests not run", flush=True)
            rec["tests"] = {"status": "not run: tests folder not found"}
            status = 2
        elif importlib.util.find_spec("pytest") is None:
            print("gpucheck: pytest is not installed here; tests not run (this command installs nothing)", flush=True)
            rec["tests"] = {"status": "not run: pytest missing"}
            status = 2
        else:
            limit = None if budget is None else budget * (TESTS_SHARE if bench else 1.0)
            cmd = pytest_command(tdir, out, maxfail, per_test=600 if limit is None else min(600, limit),
                                 workers=test_workers())
            if not any(c.startswith("--timeout=") for c in cmd):
                print("(pytest-timeout not installed: tests run without a per-test time limit)", flush=True)
            print(f"\n== tests (GPU mode): {' '.join(cmd)}", flush=True)
            tenv = dict(env) if all_tests else dict(env, HOTPATH_GPU_TESTS_ONLY="1")
            rc, secs = _tee(cmd, os.path.join(out, "pytest.log"), tenv, cwd=os.path.dirname(tdir), timeout=limit)
            summary = _last_line(os.path.join(out, "pytest.log"),
                                 starts=(" passed", " failed", " error", "no tests ran", "gpucheck: stopped"))
            rec["tests"] = {"exit": rc, "seconds": round(secs, 1), "summary": summary, "command": cmd,
                            "gpu_tests_only": not all_tests}
            if rc != 0:
                status = 1
    if bench:
        rec["bench"] = _run_bench(out, quick, families, env, None if budget is None else budget - (time.time() - t_start))
        if rec["bench"]["exit"] != 0 and status == 0:
            status = 1
    return status


def main(out="gpucheck-results", quick=True, maxfail=MAXFAIL, tests=True, bench=True, tests_dir=None,
         budget=None, families=(), all_tests=False):
    t_start = time.time()
    if not torch.cuda.is_available():
        print(no_cuda_message(), flush=True)
        return 2
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    rec = {"device": _device_record(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick}
    env, dropped = child_env()
    rec["env_dropped"] = dropped
    print(f"gpucheck on {rec['device']['gpu']} ({rec['device']['capability']}, {rec['device']['memory_gib']} GiB), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, Triton {rec['device']['triton']}", flush=True)
    if dropped:
        print(f"(not passed to the checks: {', '.join(dropped)}: they would take them off the GPU path)", flush=True)
    if rec["device"]["triton"] is None:
        print("WARNING: triton is not installed: the Triton kernels cannot run; their tests skip", flush=True)
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
            with open(os.path.join(out, "nvidia-smi.txt"), "w") as f:
                f.write(smi)
        except (OSError, subprocess.SubprocessError):
            pass

    warmers = _start_warm(out, env, families) if bench else None
    try:
        status = _checks(rec, out, env, t_start, quick, maxfail, tests, bench, tests_dir, budget, families, all_tests)
    finally:
        if warmers:
            rec["warm"] = _stop_warm(*warmers)
    rec["exit"] = status
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print("\n== gpucheck summary", flush=True)
    d = rec["device"]
    print(f"device: {d['gpu']} ({d['capability']}), torch {d['torch']}, CUDA {d['cuda']}, Triton {d['triton']}")
    if "tests" in rec:
        t = rec["tests"]
        print(f"tests: {t.get('summary') or t.get('status')} (exit {t.get('exit', '-')}, {t.get('seconds', 0):.0f} s)")
    if "bench" in rec:
        b = rec["bench"]
        print(f"bench: exit {b['exit']}, {b['seconds']:.0f} s, table in {b['results']}")
    if "warm" in rec:
        w = rec["warm"]
        print(f"warm: {w['finished']} of {w['shards']} shards finished in {w['seconds']:.0f} s")
    print(f"records under {out}: summary.json, pytest.log, pytest.xml, bench.log, bench/results.json|md"
          + (", warm.log" if "warm" in rec else ""))
    return status
