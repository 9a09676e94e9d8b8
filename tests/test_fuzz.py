"""Property-based fuzz test: every public function on every CPU backend, against the reference.

Over shapes (0, 1, odd sizes), dtypes (float16 / bfloat16 / float32 / float64 / int64), layouts
(contiguous, transposed, strided slices, expanded) and special values (NaN, +-inf, huge, tiny,
zeros), each public function is called with the same inputs under backend="reference" and
backend="cpu" (and, for a small subset, "triton" through the interpreter). The properties:

- no crash: the process survives and the only exceptions are ValueError / TypeError (a C++
  TORCH_CHECK surfacing as RuntimeError means the public function did not validate);
- the backends agree on accepting or rejecting an input;
- the NaN rule of the reference holds on the backend: where the reference returns NaN the
  backend returns NaN, where it returns +-inf the backend returns the same infinity, where it is
  finite the backend is finite and close: within the dtype's tolerance relative to the output's
  scale, plus three times the reference's own rounding error (the reference run once more on
  the same values in float64). Gradients of the differentiable outputs follow the NaN rule
  always, and are compared by value at generic inputs (no special values, no repeated rows),
  where they are unique.

One documented exception: where a Sinkhorn solver warns hp.ot.ResolutionWarning (eps below the
rounding of the potentials that carry the plan), its potentials and dual values are compared at
the cost's scale and its plan, primal value and gradients are not compared (they are noise there).

Divergences found and not yet fixed go at the end of the file: each pinned by a strict xfail on
its smallest input and kept out of its fuzz test by one assume() naming it (none open now); the
divergences fixed so far stay there as regression tests on their smallest inputs.

Bounded for CI: a few dozen examples per function (HOTPATH_FUZZ_EXAMPLES overrides), tiny
shapes, derandomized (the same examples every run; HOTPATH_FUZZ_RANDOM=1 explores new ones).
"""
import math
import os
import warnings

import pytest

pytest.importorskip("hypothesis")
import torch  # noqa: E402
from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402

import hotpath as hp  # noqa: E402
from hotpath import backends  # noqa: E402

EXAMPLES = int(os.environ.get("HOTPATH_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("HOTPATH_FUZZ_RANDOM", "0") != "1",
                suppress_health_check=list(HealthCheck), print_blob=True)
FEW = settings(FUZZ, max_examples=max(3, EXAMPLES // 5))

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DTYPES = FLOATS + (torch.int64,)
SIZES = (0, 1, 2, 3, 5, 7)
KINDS = ("reference", "cpu")


# ---------------------------------------------------------------------------------------- inputs

def _huge(dtype):
    # large but representable in the dtype: overflow then happens inside the computation
    return 1e30 if dtype in (torch.float32, torch.float64) else (6e4 if dtype == torch.float16 else 1e30)


def _special(kind, dtype):
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": _huge(dtype), "-huge": -_huge(dtype),
            "tiny": 1e-30 if dtype != torch.float16 else 6e-8, "zero": 0.0}[kind]


SPECIALS = ("nan", "inf", "-inf", "huge", "-huge", "tiny", "zero")


_UPCAST = [False]  # while True, float inputs reach the function as float64 (same values): the oracle


class Spec:
    """How to build one input: the same values and layout for every backend, fresh leaves each time."""

    live = []  # the specs built for the current example (to tell generic inputs from special ones)

    def __init__(self, shape, dtype, seed, layout, specials, low, high, positive):
        self.shape, self.dtype, self.seed, self.layout = tuple(shape), dtype, seed, layout
        self.specials, self.low, self.high, self.positive = specials, low, high, positive
        Spec.live.append(self)

    def _values(self, shape):
        g = torch.Generator().manual_seed(self.seed)
        if self.dtype.is_floating_point:
            t = torch.rand(shape, generator=g, dtype=torch.float64) * (self.high - self.low) + self.low
        else:
            t = torch.randint(int(self.low), int(self.high) + 1, shape, generator=g, dtype=torch.float64)
        t = t.to(self.dtype)
        if t.numel():
            flat = t.view(-1)
            for pos, kind in self.specials:
                v = _special(kind, self.dtype)
                if not self.dtype.is_floating_point:
                    v = {"zero": 0, "huge": 2**40, "-huge": -2**40}.get(kind, None)
                    if v is None:
                        continue
                if self.positive and kind in ("-inf", "-huge"):
                    continue
                flat[pos % flat.numel()] = v
        return t

    def leaf(self, grad=False):
        """(the tensor the function sees, the leaf that receives its gradient)."""
        shape = self.shape
        lay = self.layout if len(shape) >= 1 else "contiguous"
        if lay == "transposed" and len(shape) >= 2:
            base = self._values(shape[:-2] + (shape[-1], shape[-2])).clone()
        elif lay == "strided":
            base = self._values(shape[:-1] + (2 * shape[-1],)).clone()
        elif lay == "expanded" and shape[0] > 0:
            base = self._values((1,) + shape[1:]).clone()
        else:
            lay, base = "contiguous", self._values(shape).clone()
        if _UPCAST[0] and base.is_floating_point():
            base = base.double()
        if grad and base.is_floating_point():
            base.requires_grad_(True)
        if lay == "transposed" and len(shape) >= 2:
            t = base.transpose(-1, -2)
        elif lay == "strided":
            t = base[..., ::2]
        elif lay == "expanded":
            t = base.expand(shape)
        else:
            t = base
        return t, base

    def __repr__(self):
        return (f"Spec(shape={self.shape}, dtype={self.dtype}, seed={self.seed}, layout={self.layout!r}, "
                f"specials={self.specials}, range=({self.low}, {self.high}))")


@st.composite
def specs(draw, shape, dtypes=DTYPES, low=-3.0, high=3.0, positive=False, special=True, layouts=None):
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    layout = draw(st.sampled_from(layouts or ("contiguous", "contiguous", "transposed", "strided", "expanded")))
    sp = []
    if special and draw(st.integers(0, 2)) == 0:  # a third of the inputs carry special values
        sp = draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(SPECIALS)), min_size=1, max_size=3))
    return Spec(shape, dtype, seed, layout, sp, low, high, positive)


def has(spec, *kinds):
    """Whether spec carries one of these special values."""
    return spec is not None and any(k in kinds for _, k in spec.specials)


def sizes(lo=0):
    return st.sampled_from([s for s in SIZES if s >= lo])


# ----------------------------------------------------------------------------------- comparison

def _tensors(out, prefix="out"):
    """Flatten a result (tensor, tuple, NamedTuple, dict, number) into (name, tensor) pairs."""
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        return [(prefix, torch.tensor(float(out)))]
    if isinstance(out, dict):
        return [p for k, v in out.items() for p in _tensors(v, f"{prefix}.{k}")]
    if isinstance(out, tuple):
        names = getattr(out, "_fields", None) or [str(i) for i in range(len(out))]
        return [p for k, v in zip(names, out) for p in _tensors(v, f"{prefix}.{k}")]
    return []


def _tol(dtype):
    return {torch.float64: 1e-6, torch.float32: 2e-3}.get(dtype, 3e-2)


def assert_same_nan_rule(ref, out, *, tol=None, what="", skip=(), oracle=None, values_skip=(), scale_of=None):
    """NaN where the reference has NaN, the same infinities, finite and close elsewhere.
    values_skip: result parts (name fragments) held to the NaN rule but not compared by value.
    scale_of: {output name: scale}, a floor under an output's own scale for outputs whose
    accuracy is set by an input's magnitude (potentials are in cost units: known to |C| * ulp)."""
    rp, op = _tensors(ref), _tensors(out)
    orc = dict(_tensors(oracle)) if oracle is not None else {}
    assert [n for n, _ in rp] == [n for n, _ in op], f"{what}: result structure differs"
    for (name, r), (_, o) in zip(rp, op):
        if any(name.endswith(s) for s in skip):
            continue
        assert r.shape == o.shape, f"{what} {name}: shape {tuple(o.shape)} vs reference {tuple(r.shape)}"
        if not r.is_floating_point():
            assert torch.equal(r, o), f"{what} {name}: {o} vs reference {r}"
            continue
        r64, o64 = r.detach().double(), o.detach().double()
        t = max(tol or 0.0, _tol(r.dtype))  # a half-precision output is rounded to its own dtype
        nan_r, nan_o = torch.isnan(r64), torch.isnan(o64)
        assert torch.equal(nan_r, nan_o), (f"{what} {name}: NaN at {nan_o.nonzero().tolist()[:5]} where the "
                                           f"reference has NaN at {nan_r.nonzero().tolist()[:5]}\n"
                                           f"  backend {o64.flatten()[:8].tolist()}\n  reference {r64.flatten()[:8].tolist()}")
        inf_r = torch.isinf(r64)
        assert torch.equal(o64[inf_r], r64[inf_r]), (f"{what} {name}: {o64[inf_r].tolist()[:5]} where the reference "
                                                     f"has {r64[inf_r].tolist()[:5]}")
        if any(f in name for f in values_skip):
            continue
        fin = torch.isfinite(r64)
        assert bool(torch.isfinite(o64[fin]).all()), (f"{what} {name}: non-finite {o64[fin].tolist()[:5]} where "
                                                      f"the reference is finite {r64[fin].tolist()[:5]}")
        if fin.any():
            scale = float(r64[fin].abs().max())
            scale = max([scale] + [v for f, v in (scale_of or {}).items() if name == f])
            err = (o64[fin] - r64[fin]).abs()
            bound = t * (1.0 + scale)
            o_ = orc.get(name)
            if o_ is not None and o_.shape == r.shape:
                own = (r64 - o_.detach().double()).abs()[fin]
                bound = bound + 3 * torch.where(torch.isnan(own), torch.zeros_like(own), own)
            bmax = float(bound.max()) if isinstance(bound, torch.Tensor) else bound
            assert bool((err <= bound).all()), (f"{what} {name}: max error {float(err.max()):.3g} > {bmax:.3g} "
                                                f"(scale {scale:.3g})\n  backend {o64[fin][:8].tolist()}\n"
                                                f"  reference {r64[fin][:8].tolist()}")


COLLECT = os.environ.get("HOTPATH_FUZZ_COLLECT")  # a file: record every failure there and go on


def _inputs(call):
    """The values call() closes over (specs and parameters): what a failure report must name."""
    cells = zip(call.__code__.co_freevars, call.__closure__ or ())
    return {k: c.cell_contents for k, c in cells if not callable(c.cell_contents) and k != "data"}


def run_all(call, kinds=KINDS, **kw):
    """Exploration mode (HOTPATH_FUZZ_COLLECT=file) records failures instead of raising."""
    try:
        return _collect(call, kinds, **kw) if COLLECT else _run_all(call, kinds, **kw)
    finally:
        Spec.live.clear()


def _collect(call, kinds, **kw):
    import json
    import traceback
    try:
        res = _run_all(call, kinds, **kw)
        if os.environ.get("HOTPATH_FUZZ_STATS"):
            with open(os.environ["HOTPATH_FUZZ_STATS"], "a") as f:
                f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]} {res[kinds[0]][0]}\n")
        return res
    except Exception as exc:  # noqa: BLE001 -- every failure is recorded, by test and symptom
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        rec = {"test": os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0], "type": type(exc).__name__,
               "msg": str(exc)[:600], "where": f"{os.path.basename(frame.filename)}:{frame.lineno}",
               "inputs": {k: repr(v) for k, v in _inputs(call).items()}}
        with open(COLLECT, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _run_all(call, kinds=KINDS, *, tol=None, skip=(), compare=True, scale_of=None, from_plan=("plan",)):
    """call(kind) under every backend; the backends must accept / reject alike and agree on values."""
    res = {}
    cost_scale = []  # set by a ResolutionWarning: eps below the costs' rounding (see below)
    for kind in kinds:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                with backends.prefer(kind):
                    res[kind] = ("ok", call(kind))
            except (ValueError, TypeError) as exc:
                assert str(exc), f"{kind}: {type(exc).__name__} with an empty message"
                res[kind] = ("error", exc)
        cost_scale += [w.message.cmax for w in seen if isinstance(w.message, hp.ot.ResolutionWarning)]
    if cost_scale:
        # documented regime (hp.ot.ResolutionWarning, raised alike on every backend): the potentials
        # and dual values are known to max|C| * ulp; the plan, what is computed from it (from_plan:
        # a primal value <P, C>) and the gradients are not resolved
        skip = tuple(skip) + tuple(from_plan) + ("grads",) + tuple(f"grads.{i}" for i in range(8))
        scale_of = {**(scale_of or {}), **{k: max(cost_scale) for k in ("out.value", "out.f", "out.g")}}
    ref_status, ref = res[kinds[0]]
    oracle = None
    if ref_status == "ok" and compare and any(s.dtype != torch.float64 for s in Spec.live if s.dtype.is_floating_point):
        # the reference once more on the same values in float64: a backend may differ from the
        # reference by three times the reference's own rounding error (plus the tolerance)
        _UPCAST[0] = True
        try:
            with warnings.catch_warnings(), backends.prefer(kinds[0]):
                warnings.simplefilter("ignore")
                oracle = call(kinds[0])
        except (ValueError, TypeError):
            oracle = None
        finally:
            _UPCAST[0] = False
    # gradients are compared by value only at generic inputs: with special values, repeated
    # rows (expanded) or identical inputs a loss may sit at a kink where any subgradient is right
    keys = [(s.seed, s.shape, s.dtype) for s in Spec.live]
    generic = all(not s.specials and s.layout != "expanded" for s in Spec.live) and len(set(keys)) == len(keys)
    grad_skip = () if generic else ("grads",)
    for kind in kinds[1:]:
        status, out = res[kind]
        assert status == ref_status, (f"backend {kind!r} {'raised ' + repr(out) if status == 'error' else 'returned'}"
                                      f" where {kinds[0]!r} {'raised ' + repr(ref) if ref_status == 'error' else 'returned'}")
        if status == "ok" and compare:
            assert_same_nan_rule(ref, out, tol=tol, what=f"{kind} vs {kinds[0]}", skip=skip,
                                 oracle=oracle, values_skip=grad_skip, scale_of=scale_of)
    return res


def with_grad(fn, leaves):
    """{"value": fn(), "grads": gradients of the sum of its outputs w.r.t. the float leaves}."""
    out = fn()
    ts = [t for _, t in _tensors(out) if t.requires_grad]
    if ts:
        total = sum((t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).sum() for t in ts)
        floats = [l for l in leaves if l.requires_grad]
        grads = torch.autograd.grad(total, floats, allow_unused=True)
        grads = tuple(torch.zeros_like(l) if g is None else g for g, l in zip(grads, floats))
        return {"value": out, "grads": grads}
    return {"value": out, "grads": ()}


def _finite_max(spec):
    """The largest finite magnitude among a spec's values (0 when none)."""
    t = spec.leaf()[0].detach().double()
    t = t[torch.isfinite(t)]
    return float(t.abs().max()) if t.numel() else 0.0


def compute_tol(*specs_):
    """Tolerance of the dtype the library computes in (the widest input float, float32 for halves)."""
    dts = [s.dtype for s in specs_ if s is not None]
    return _tol(torch.float64) if torch.float64 in dts else _tol(torch.float32)


# ------------------------------------------------------------------------------------ pairwise

@FUZZ
@given(data=st.data(), n=sizes(), m=sizes(), d=sizes(), batched=st.booleans(),
       metric=st.sampled_from(["dot", "sqeuclidean"]), scale=st.sampled_from([1.0, 0.5, 10.0, 0.0]),
       use_bias=st.booleans(), k=st.sampled_from([None, 1, 3]), grad=st.booleans())
def test_fuzz_pairwise_lse(data, n, m, d, batched, metric, scale, use_bias, k, grad):
    pre = (2,) if batched else ()
    sx = data.draw(specs(pre + (n, d)))
    sy = data.draw(specs(pre + (m, d), dtypes=(sx.dtype,)))
    sb = data.draw(specs(pre + (m,), dtypes=(sx.dtype,))) if use_bias else None
    sv = data.draw(specs(pre + (m, k), dtypes=(sx.dtype,))) if k else None

    def call(kind):
        (x, lx), (y, ly) = sx.leaf(grad), sy.leaf(grad)
        b, lb = sb.leaf(grad) if sb else (None, None)
        v, lv = sv.leaf(grad) if sv else (None, None)
        leaves = [t for t in (lx, ly, lb, lv) if t is not None]
        return with_grad(lambda: hp.pairwise_lse(x, y, scale=scale, metric=metric, col_bias=b, values=v,
                                                 backend=kind), leaves)

    run_all(call, tol=compute_tol(sx))


# ----------------------------------------------------------------------------------------- OT

def _weights_spec(data, shape, dtype):
    # weights: mostly positive; special values and zeros included
    return data.draw(specs(shape, dtypes=(dtype,), low=0.0, high=1.0, layouts=("contiguous", "strided")))


@FUZZ
@given(data=st.data(), n=sizes(), m=sizes(), d=sizes(), batched=st.booleans(), p=st.sampled_from([1, 2]),
       blur=st.sampled_from([0.05, 0.5, 10.0]), reach=st.sampled_from([None, 0.3, 5.0]),
       debias=st.booleans(), weighted=st.booleans(), grad=st.booleans())
def test_fuzz_samples_loss(data, n, m, d, batched, p, blur, reach, debias, weighted, grad):
    pre = (2,) if batched else ()
    sx = data.draw(specs(pre + (n, d), dtypes=FLOATS + (torch.int64,)))
    sy = data.draw(specs(pre + (m, d), dtypes=(sx.dtype,)))
    wdt = sx.dtype if sx.dtype.is_floating_point else torch.float32
    sa = _weights_spec(data, pre + (n,), wdt) if weighted else None
    sb = _weights_spec(data, pre + (m,), wdt) if weighted else None

    def call(kind):
        (x, lx), (y, ly) = sx.leaf(grad), sy.leaf(grad)
        L = hp.ot.SamplesLoss("sinkhorn", p=p, blur=blur, reach=reach, debias=debias, backend=kind)
        if weighted:
            (a, la), (b, lb) = sa.leaf(grad), sb.leaf(grad)
            return with_grad(lambda: L(a, x, b, y), [lx, ly, la, lb])
        return with_grad(lambda: L(x, y), [lx, ly])

    run_all(call, tol=compute_tol(sx))


@FUZZ
@given(data=st.data(), n=sizes(), m=sizes(), d=sizes(), batched=st.booleans(), p=st.sampled_from([1, 2]),
       blur=st.sampled_from([0.05, 1.0]), reach=st.sampled_from([None, 0.5]),
       fixed=st.sampled_from([None, (30, None), (200, 1e-4)]), weighted=st.booleans(),
       plan=st.sampled_from([None, "apply", "transport", "barycentric"]), grad=st.booleans())
def test_fuzz_sinkhorn_and_plans(data, n, m, d, batched, p, blur, reach, fixed, weighted, plan, grad):
    pre = (2,) if batched else ()
    sx = data.draw(specs(pre + (n, d), dtypes=FLOATS))
    sy = data.draw(specs(pre + (m, d), dtypes=(sx.dtype,)))
    sa = _weights_spec(data, pre + (n,), sx.dtype) if weighted else None
    sb = _weights_spec(data, pre + (m,), sx.dtype) if weighted else None
    sv = data.draw(specs(pre + (m, 2), dtypes=(sx.dtype,), special=False)) if plan == "apply" else None
    max_iter, tol = fixed or (None, None)

    def call(kind):
        (x, lx), (y, ly) = sx.leaf(grad), sy.leaf(grad)
        a, la = sa.leaf(grad) if sa else (None, None)
        b, lb = sb.leaf(grad) if sb else (None, None)
        leaves = [t for t in (lx, ly, la, lb) if t is not None]
        r = hp.ot.sinkhorn(x, y, a, b, blur=blur, p=p, reach=reach, max_iter=max_iter, tol=tol, backend=kind)
        res = {**with_grad(lambda: r.loss, leaves), "f": r.f, "g": r.g}
        if plan == "apply":
            res["plan"] = hp.ot.apply_plan(r, x.detach(), y.detach(), sv.leaf()[0])
        elif plan == "transport":
            res["plan"] = hp.ot.transport_plan(r, x.detach(), y.detach())
        elif plan == "barycentric":
            res["plan"] = hp.ot.barycentric_map(r, x.detach(), y.detach())
        return res

    run_all(call, tol=compute_tol(sx))


@FUZZ
@given(data=st.data(), n=sizes(), m=sizes(), batched=st.booleans(), eps=st.sampled_from([0.01, 1.0, 1e3]),
       reach=st.sampled_from([None, 0.5]), weighted=st.booleans(), pot=st.booleans(), grad=st.booleans())
def test_fuzz_sinkhorn_dense_and_sinkhorn2(data, n, m, batched, eps, reach, weighted, pot, grad):
    pre = (2,) if batched else ()
    sc = data.draw(specs(pre + (n, m), dtypes=FLOATS, low=0.0, high=2.0))
    sa = _weights_spec(data, pre + (n,), sc.dtype) if weighted else None
    sb = _weights_spec(data, pre + (m,), sc.dtype) if weighted else None

    def call(kind):
        C, lc = sc.leaf(grad)
        a, la = sa.leaf(grad) if sa else (None, None)
        b, lb = sb.leaf(grad) if sb else (None, None)
        leaves = [t for t in (lc, la, lb) if t is not None]
        if pot:
            return with_grad(lambda: hp.ot.sinkhorn2(a, b, C, eps, numItermax=200, backend=kind), leaves)
        r = hp.ot.sinkhorn_dense(C, a, b, eps=eps, reach=reach, max_iter=200, backend=kind)
        return {**with_grad(lambda: r.loss, leaves), "f": r.f, "g": r.g}

    cmax = _finite_max(sc)
    run_all(call, tol=compute_tol(sc), scale_of={"out.value": cmax, "out.f": cmax, "out.g": cmax},
            from_plan=("plan", "value") if pot else ("plan",))


@FUZZ
@given(data=st.data(), n=sizes(), m=sizes(), d=sizes(), batched=st.booleans(), p=st.sampled_from([1, 2, 1.5]),
       L=st.sampled_from([1, 3, 8]), weighted=st.booleans(), grad=st.booleans())
def test_fuzz_sliced_wasserstein(data, n, m, d, batched, p, L, weighted, grad):
    pre = (2,) if batched else ()
    sx = data.draw(specs(pre + (n, d)))
    sy = data.draw(specs(pre + (m, d), dtypes=(sx.dtype,)))
    wdt = sx.dtype if sx.dtype.is_floating_point else torch.float32
    sa = _weights_spec(data, pre + (n,), wdt) if weighted else None
    sb = _weights_spec(data, pre + (m,), wdt) if weighted else None
    st_ = data.draw(specs((d, L), dtypes=(wdt,), special=False))

    def call(kind):
        (x, lx), (y, ly) = sx.leaf(grad), sy.leaf(grad)
        a, la = sa.leaf(grad) if sa else (None, None)
        b, lb = sb.leaf(grad) if sb else (None, None)
        th, lt = st_.leaf(grad)
        leaves = [t for t in (lx, ly, la, lb, lt) if t is not None]
        return with_grad(lambda: hp.ot.sliced_wasserstein(x, y, a, b, p=p, projections=th, backend=kind), leaves)

    run_all(call, tol=compute_tol(sx))


@FUZZ
@given(data=st.data(), n=sizes(), m=sizes(), batch=st.sampled_from([(), (1,), (3,)]), p=st.sampled_from([1, 2, 3.5]),
       uw=st.sampled_from([None, "shared", "full"]), vw=st.sampled_from([None, "shared", "full"]),
       grad=st.booleans())
def test_fuzz_wasserstein_1d(data, n, m, batch, p, uw, vw, grad):
    su = data.draw(specs((n,) + batch))
    sv = data.draw(specs((m,) + batch, dtypes=(su.dtype,)))
    wdt = su.dtype if su.dtype.is_floating_point else torch.float32
    suw = _weights_spec(data, (n,) if uw == "shared" else (n,) + batch, wdt) if uw else None
    svw = _weights_spec(data, (m,) if vw == "shared" else (m,) + batch, wdt) if vw else None

    def call(kind):
        (u, lu), (v, lv) = su.leaf(grad), sv.leaf(grad)
        a, la = suw.leaf(grad) if suw else (None, None)
        b, lb = svw.leaf(grad) if svw else (None, None)
        leaves = [t for t in (lu, lv, la, lb) if t is not None]
        return with_grad(lambda: hp.ot.wasserstein_1d(u, v, a, b, p=p, backend=kind), leaves)

    run_all(call, tol=compute_tol(su))


@FUZZ
@given(data=st.data(), K=sizes(), rows=st.sampled_from([None, 1, 3]), order=st.sampled_from([1, 2, 1.5]),
       support=st.sampled_from([None, "shared", "rows"]), grad=st.booleans())
def test_fuzz_histogram_wasserstein(data, K, rows, order, support, grad):
    shape = (K,) if rows is None else (rows, K)
    sp = data.draw(specs(shape, low=0.0, high=1.0))
    sq = data.draw(specs(shape, dtypes=(sp.dtype,), low=0.0, high=1.0))
    sdt = sp.dtype if sp.dtype.is_floating_point else torch.float32
    if support == "shared" or (support == "rows" and rows is None):
        ss = data.draw(specs((K,), dtypes=(sdt,), low=-2.0, high=2.0, layouts=("contiguous",)))
    elif support == "rows":
        ss = data.draw(specs((rows, K), dtypes=(sdt,), low=-2.0, high=2.0, layouts=("contiguous",)))
    else:
        ss = None

    def call(kind):
        (p, lp), (q, lq) = sp.leaf(grad), sq.leaf(grad)
        s = None
        if ss is not None:
            s = ss.leaf()[0].sort(dim=-1).values  # sorted, as the function requires (NaN sorts last)
        return with_grad(lambda: hp.ot.histogram_wasserstein(p, q, s, order=order, backend=kind), [lp, lq])

    run_all(call, tol=compute_tol(sp))


# -------------------------------------------------------------------------------- contrastive

def _scale_arg(data, name):
    return data.draw(st.sampled_from({"scale": [1.0, 14.3, 100.0, 0.0, -1.0, math.nan, math.inf, "tensor"],
                                      "bias": [None, -10.0, 0.0, math.nan, "tensor"],
                                      "temp": [0.07, 1.0, 1e-4, 0.0, -0.5, math.nan, "tensor"]}[name]))


def _as_arg(v, dtype=torch.float32, grad=False):
    if v == "tensor":
        return torch.tensor(10.0, dtype=dtype, requires_grad=grad)
    return v


@FUZZ
@given(data=st.data(), n=sizes(), m=sizes(), d=sizes(), which=st.sampled_from(["clip", "siglip", "siglip_neg"]),
       grad=st.booleans())
def test_fuzz_clip_siglip(data, n, m, d, which, grad):
    si = data.draw(specs((n, d)))
    m = n if which != "siglip_neg" and data.draw(st.integers(0, 3)) else m  # mostly equal batches
    stx = data.draw(specs((m, d), dtypes=(si.dtype,)))
    scale, bias = _scale_arg(data, "scale"), _scale_arg(data, "bias")
    if which != "clip" and bias is None:
        bias = -10.0

    def call(kind):
        (img, li), (txt, lt) = si.leaf(grad), stx.leaf(grad)
        s, b = _as_arg(scale), _as_arg(bias)
        if which == "clip":
            return with_grad(lambda: hp.contrastive.clip_loss(img, txt, s, b, backend=kind), [li, lt])
        return with_grad(lambda: hp.contrastive.siglip_loss(img, txt, s, b, negative_only=which == "siglip_neg",
                                                            backend=kind), [li, lt])

    run_all(call, tol=compute_tol(si))


@FUZZ
@given(data=st.data(), n=sizes(), q=sizes(), d=sizes(), negatives=st.booleans(), grad=st.booleans())
def test_fuzz_info_nce(data, n, q, d, negatives, grad):
    sq = data.draw(specs((n, d)))
    sk = data.draw(specs((n, d), dtypes=(sq.dtype,)))
    sn = data.draw(specs((q, d), dtypes=(sq.dtype,))) if negatives else None
    temp = _scale_arg(data, "temp")

    def call(kind):
        (qq, lq), (kk, lk) = sq.leaf(grad), sk.leaf(grad)
        neg, ln = sn.leaf(grad) if sn else (None, None)
        leaves = [t for t in (lq, lk, ln) if t is not None]
        return with_grad(lambda: hp.contrastive.info_nce(qq, kk, temperature=_as_arg(temp), negatives=neg,
                                                         backend=kind), leaves)

    run_all(call, tol=compute_tol(sq))


@FUZZ
@given(data=st.data(), n=sizes(), d=sizes(), n_classes=st.sampled_from([1, 2, 3]),
       which=st.sampled_from(["supcon", "batch_hard", "batch_all"]), grad=st.booleans())
def test_fuzz_supcon_triplet(data, n, d, n_classes, which, grad):
    sf = data.draw(specs((n, d)))
    seed = data.draw(st.integers(0, 1000))
    labels = torch.randint(0, n_classes, (n,), generator=torch.Generator().manual_seed(seed))
    temp = _scale_arg(data, "temp")
    margin = data.draw(st.sampled_from([0.05, 0.0, 1.0]))

    def call(kind):
        f, lf = sf.leaf(grad)
        if which == "supcon":
            return with_grad(lambda: hp.contrastive.supcon_loss(f, labels, temperature=_as_arg(temp), backend=kind),
                             [lf])
        return with_grad(lambda: hp.contrastive.triplet_loss(f, labels, margin=margin, mining=which, backend=kind),
                         [lf])

    run_all(call, tol=compute_tol(sf))


@FUZZ
@given(data=st.data(), n=sizes(), K=sizes(), views=st.sampled_from([None, 2]), grad=st.booleans())
def test_fuzz_dino_loss(data, n, K, views, grad):
    pre = (views,) if views else ()
    ss = data.draw(specs(pre + (n, K), dtypes=FLOATS))
    stt = data.draw(specs(pre + (n, K), dtypes=(ss.dtype,)))
    sc = data.draw(specs((K,), dtypes=(ss.dtype,), special=False))
    temps = data.draw(st.sampled_from([(0.1, 0.04), (1.0, 1.0), (0.0, 0.04), (0.1, math.nan)]))

    def call(kind):
        (s, ls), t, c = ss.leaf(grad), stt.leaf()[0], sc.leaf()[0]
        return with_grad(lambda: hp.contrastive.dino_loss(s, t, c, student_temp=temps[0], teacher_temp=temps[1]),
                         [ls])

    run_all(call, tol=compute_tol(ss))


@FUZZ
@given(data=st.data(), n=sizes(), m=sizes(), d=sizes(), k=st.sampled_from([1, 2, 3, 0]),
       screen=st.sampled_from(["auto", False, True]))
def test_fuzz_topk_similarity(data, n, m, d, k, screen):
    sq = data.draw(specs((n, d)))
    sk = data.draw(specs((m, d), dtypes=(sq.dtype,)))

    def call(kind):
        v, i = hp.contrastive.topk_similarity(sq.leaf()[0], sk.leaf()[0], k, screen=screen, backend=kind)
        assert v.shape == i.shape == (n, k)
        assert bool(((i >= -1) & (i < m)).all()), f"{kind}: index out of range {i.tolist()}"
        assert bool((torch.isneginf(v) == (i == -1)).all()) or not bool((i == -1).any()), \
            f"{kind}: the -1 sentinel must come with value -inf: {v.tolist()} {i.tolist()}"
        return v  # indices may differ between exact ties; the values may not

    run_all(call, tol=compute_tol(sq))


# ------------------------------------------------------------------------------- quantization

def _configs():
    q = hp.quant
    out = [q.Int8WeightOnly(), q.Int8Dynamic(), q.Int4WeightOnly(group_size=32), q.Int4Dynamic(group_size=32)]
    for name, kw in (("FP8WeightOnly", {}), ("FP8Dynamic", {}), ("MXFP4", {}), ("NVFP4", {}),
                     ("NVFP4", {"hadamard": True}), ("Ternary", {})):
        if hasattr(q, name):
            out.append(getattr(q, name)(**kw))
    return out


CONFIGS = _configs()


@FUZZ
@given(data=st.data(), cfg=st.sampled_from(CONFIGS), N=st.sampled_from([1, 3, 16]),
       K=st.sampled_from([0, 1, 31, 32, 64]), grad=st.booleans())
def test_fuzz_fake_quantize(data, cfg, N, K, grad):
    sw = data.draw(specs((N, K), dtypes=FLOATS))

    def call(kind):
        w, lw = sw.leaf(grad)
        return with_grad(lambda: hp.quant.fake_quantize(w, cfg), [lw])

    run_all(call, tol=compute_tol(sw))


@FUZZ
@given(data=st.data(), cfg=st.sampled_from(CONFIGS), N=st.sampled_from([1, 3, 16]),
       K=st.sampled_from([1, 31, 32, 64]), M=sizes(), bias=st.booleans())
def test_fuzz_quantize_linear(data, cfg, N, K, M, bias):
    sw = data.draw(specs((N, K), dtypes=(torch.float32,), layouts=("contiguous",)))
    sx = data.draw(specs((M, K), dtypes=FLOATS))

    def call(kind):
        lin = torch.nn.Linear(K, N, bias=bias)
        with torch.no_grad():
            lin.weight.copy_(sw.leaf()[0])
            if bias:
                lin.bias.fill_(0.5)
        model = torch.nn.Sequential(lin)
        hp.quant.quantize_(model, cfg, backend=kind)
        x = sx.leaf()[0]
        if x.dtype != torch.float32:
            x = x.to(torch.float32) if x.dtype == torch.float64 else x
        with torch.no_grad():
            return model(x)

    # the quantized kernels may round activations differently (dynamic formats): compare loosely
    run_all(call, tol=3e-2)


@FUZZ
@given(data=st.data(), n=sizes(), d=sizes(), Q=sizes(), k=st.sampled_from([1, 2, 5]),
       precision=st.sampled_from(["int8", "binary"]), rescore=st.booleans())
def test_fuzz_embeddings(data, n, d, Q, k, precision, rescore):
    sx = data.draw(specs((n, d), dtypes=FLOATS))
    sq = data.draw(specs((Q, d), dtypes=FLOATS))

    def call(kind):
        x = sx.leaf()[0]
        codes = hp.quant.quantize_embeddings(x, precision)
        v, i = hp.quant.embedding_search(sq.leaf()[0], codes, k, rescore_with=x if rescore else None, backend=kind)
        assert bool(((i >= -1) & (i < n)).all()), f"{kind}: index out of range {i.tolist()}"
        return v

    run_all(call, tol=1e-3 if rescore else 0.0)


# ----------------------------------------------------------- Triton through the interpreter

def _triton_ok():
    return backends.triton_available() and backends.triton_interpreting()


@pytest.mark.skipif(not _triton_ok(), reason="needs triton and TRITON_INTERPRET=1 (set by conftest)")
@FEW
@given(data=st.data(), n=sizes(1), m=sizes(1), d=sizes(1), metric=st.sampled_from(["dot", "sqeuclidean"]),
       which=st.sampled_from(["lse", "w1d", "clip"]))
def test_fuzz_triton_subset(data, n, m, d, metric, which):
    sx = data.draw(specs((n, d), dtypes=(torch.float32, torch.float64)))
    sy = data.draw(specs((m if which != "clip" else n, d), dtypes=(sx.dtype,)))

    def call(kind):
        (x, lx), (y, ly) = sx.leaf(True), sy.leaf(True)
        if which == "lse":
            return with_grad(lambda: hp.pairwise_lse(x, y, metric=metric, backend=kind), [lx, ly])
        if which == "w1d":
            return with_grad(lambda: hp.ot.wasserstein_1d(x, y, backend=kind), [lx, ly])
        return with_grad(lambda: hp.contrastive.clip_loss(x, y, 10.0, backend=kind), [lx, ly])

    run_all(call, kinds=("reference", "triton"), tol=compute_tol(sx))


# --------------------------------------------------- divergences found by this fuzz test
# An open one is excluded from its fuzz test by one narrow assume() naming it and pinned here by
# its smallest input as a strict xfail (the XPASS fails the run once it is fixed; the assume()
# and the xfail mark go together). None is open; the fixed ones below are regression tests.

def _both(fn):
    out = {}
    for kind in KINDS:
        with warnings.catch_warnings(), backends.prefer(kind):
            warnings.simplefilter("ignore")
            out[kind] = fn(kind)
    return out


def test_sinkhorn_dense_nan_cost_is_nan_everywhere():
    # a NaN cost makes its whole problem NaN (value and both potentials) on every backend
    C = torch.tensor([[math.nan, 1.0], [2.0, 0.5]], dtype=torch.float16)
    r = _both(lambda kind: hp.ot.sinkhorn_dense(C, eps=0.01, max_iter=200, backend=kind))
    for res in r.values():
        assert bool(torch.isnan(res.loss)) and bool(torch.isnan(res.f).all()) and bool(torch.isnan(res.g).all())


def test_wasserstein_1d_overflow_is_inf():
    # |0.5 - 1e30|^2 overflows float32 / bfloat16: inf on every backend (a zero-length segment of
    # the merged grid must not turn it into 0 * inf = NaN)
    for dtype in (torch.float32, torch.bfloat16):
        u, v = torch.tensor([0.5], dtype=dtype), torch.tensor([1e30], dtype=dtype)
        w = _both(lambda kind: hp.ot.wasserstein_1d(u, v, p=2, backend=kind))
        assert torch.equal(w["reference"], w["cpu"]) and bool(torch.isinf(w["cpu"]))


def test_sinkhorn2_backward_near_permutation_plan():
    for kind in KINDS:
        M = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
        hp.ot.sinkhorn2(None, None, M, 0.01, backend=kind).backward()
        assert bool(torch.isfinite(M.grad).all())


def test_sinkhorn_empty_cloud_fixed_eps():
    for kind in KINDS:
        try:
            hp.ot.sinkhorn(torch.zeros(0, 1), torch.zeros(2, 1), max_iter=30, backend=kind)
        except ValueError:
            pass


def test_embedding_search_no_queries():
    codes = hp.quant.quantize_embeddings(torch.randn(1, 7), "binary")
    for kind in KINDS:
        v, i = hp.quant.embedding_search(torch.zeros(0, 7), codes, 1, backend=kind)
        assert v.shape == i.shape == (0, 1)


def test_sinkhorn2_autodiff_with_a_nan_problem_in_the_batch():
    # a -inf cost makes its problem NaN; the implicit backward must not fail the whole batch
    C = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(0))
    C[1, 0, 0] = -math.inf
    for kind in KINDS:
        Cl = C.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = hp.ot.sinkhorn2(None, None, Cl, 0.01, numItermax=200, backend=kind)
        (g,) = torch.autograd.grad(v.sum(), Cl)
        assert bool(torch.isnan(v[1])) and bool(torch.isfinite(v[0]))
        assert bool(torch.isnan(g[1]).all()) and bool(torch.isfinite(g[0]).all())
