"""hp.ot.SamplesLoss: drop-in for geomloss.SamplesLoss (same signature, call forms and values)."""
import torch

from .. import _validate as V
from .. import backends
from . import _kernels
from .sinkhorn import check_params, prepare, run

LOSSES = ("sinkhorn", "hausdorff", "energy", "gaussian", "laplacian")
GEOMLOSS_BACKENDS = ("tensorized", "online", "multiscale")


class SamplesLoss(torch.nn.Module):
    """GeomLoss's SamplesLoss: same signature, call forms and values.

    loss: "sinkhorn" (debiased Sinkhorn divergence; hotpath's kernels), "hausdorff" (Hausdorff
    divergence through the softmin), "energy" / "gaussian" / "laplacian" (kernel norms, pairwise
    sums). L(x, y) with uniform weights, or L(a, x, b, y); x (N, D) or (B, N, D). Returns a
    scalar, or (B,) values for batched input; with potentials=True the dual potentials (F, G)
    shaped like the weights (Sinkhorn debiased: f_ba - f_aa, g_ab - g_bb, as GeomLoss).
    p in {1, 2} (2.0 accepted); reach=None is balanced OT. backend: GeomLoss's "tensorized" /
    "online" / "multiscale" are accepted and all mean hotpath's own choice ("auto"); hotpath's
    "reference" / "cpu" / "triton" / "cuda" force one. cost: a callable (x, y) -> (B, N, M) or
    a KeOps formula string (the defaults and "SqDist(X,Y)"); kernel: a callable for the kernel
    losses. truncate, cluster_scale, verbose: accepted (hotpath does no kernel truncation or
    clustering, so the results are the exact, untruncated values).
    """

    def __init__(self, loss="sinkhorn", p=2, blur=0.05, reach=None, diameter=None, scaling=0.5, truncate=5,
                 cost=None, kernel=None, cluster_scale=None, debias=True, potentials=False, verbose=False,
                 backend="auto"):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if backend in GEOMLOSS_BACKENDS:
            backend = "auto"  # GeomLoss's implementations are all served by hotpath's kernel choice
        backends.check(backend)
        check_params(blur, p, reach, None, None, scaling, diameter, None, None)
        if reach is not None and loss != "sinkhorn":
            raise ValueError(f"reach (unbalanced transport) applies to loss='sinkhorn' only, got loss={loss!r}")
        if kernel is not None and not callable(kernel):
            raise TypeError(f"kernel must be a callable k(x, y, blur=...) -> (B, N, M), got {type(kernel).__name__}")
        if truncate is not None:
            V.scalar("truncate", truncate, positive=True, allow_tensor=False)
        self.cost_fn, p_cost = _kernels.parse_cost(cost, int(p))
        self.loss, self.p, self.blur, self.reach = loss, p_cost, float(blur), reach
        self.diameter, self.scaling, self.debias, self.potentials = diameter, float(scaling), bool(debias), potentials
        self.truncate, self.cost, self.kernel, self.cluster_scale, self.verbose = truncate, cost, kernel, cluster_scale, verbose
        self.backend = backend

    def extra_repr(self):
        return (f"loss={self.loss!r}, p={self.p}, blur={self.blur}, reach={self.reach}, scaling={self.scaling}, "
                f"debias={self.debias}, backend={self.backend!r}")

    def forward(self, *args):
        if len(args) == 2:
            x, y = args
            a = b = None
        elif len(args) == 4:
            a, x, b, y = args
        else:
            raise ValueError("SamplesLoss accepts two (x, y) or four (a, x, b, y) arguments")
        X, Y, A, Bw, batched = prepare(x, y, a, b, names=("x", "y", "a", "b"))
        with backends.prefer(self.backend):
            if self.loss == "sinkhorn" and self.cost_fn is None:
                rho = None if self.reach is None else float(self.reach) ** self.p
                loss, f, g, f_aa, g_bb, *_ = run(
                    X, Y, A, Bw, p=self.p, blur=self.blur, rho_x=rho, rho_y=rho, diameter=self.diameter,
                    scaling=self.scaling, debias=self.debias, max_iter=None, tol=None, backend=self.backend,
                    want_marginal=False)
                pots = ((f - f_aa, g - g_bb) if self.debias else (f, g)) if self.potentials else None
            elif self.loss == "sinkhorn":
                rho = None if self.reach is None else float(self.reach) ** self.p
                loss = _kernels.sinkhorn_custom_cost(A, X, Bw, Y, self.cost_fn, self.p, self.blur, rho, self.diameter,
                                                     self.scaling, self.debias, self.potentials)
                pots, loss = (loss, None) if self.potentials else (None, loss)
            elif self.loss == "hausdorff":
                loss = _kernels.hausdorff_loss(A, X, Bw, Y, self.blur ** self.p, self.p, self.potentials, self.cost_fn)
                pots, loss = (loss, None) if self.potentials else (None, loss)
            else:
                loss = _kernels.kernel_loss(self.loss, A, X, Bw, Y, self.blur, self.potentials, self.kernel)
                pots, loss = (loss, None) if self.potentials else (None, loss)
        if self.verbose:
            print(f"hotpath SamplesLoss({self.loss!r}): backend {backends.current() if self.backend == 'auto' else self.backend}, "
                  f"exact (no truncation / clustering)")
        if self.potentials:
            F, G = pots
            if not batched:
                F, G = F[0], G[0]
            wa = a if a is not None else F
            wb = b if b is not None else G
            return F.reshape(wa.shape), G.reshape(wb.shape)
        return loss if batched else loss[0]
