"""hp.ot.SamplesLoss: drop-in for geomloss.SamplesLoss("sinkhorn", ...) (same call forms and values)."""
import torch

from .._backend import check_backend
from .sinkhorn import check_params, prepare, run


class SamplesLoss(torch.nn.Module):
    """Sinkhorn divergence between sampled measures, GeomLoss conventions.

    L(x, y) with uniform weights, or L(a, x, b, y); x (N, D) or (B, N, D). Returns a scalar,
    or (B,) values for batched input; with potentials=True the dual potentials (F, G) shaped
    like the weights (debiased: f_ba - f_aa, g_ab - g_bb, as GeomLoss).
    Only loss="sinkhorn" is implemented; p in {1, 2}; reach=None is balanced OT.
    """

    def __init__(self, loss="sinkhorn", p=2, blur=0.05, reach=None, diameter=None, scaling=0.5,
                 debias=True, potentials=False, backend="auto"):
        super().__init__()
        if loss != "sinkhorn":
            raise ValueError(f"loss must be 'sinkhorn' (the only loss hotpath implements), got {loss!r}")
        check_backend(backend)
        check_params(blur, p, reach, None, None, scaling, diameter, None, None)
        self.loss, self.p, self.blur, self.reach = loss, p, float(blur), reach
        self.diameter, self.scaling, self.debias, self.potentials = diameter, float(scaling), bool(debias), potentials
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
        rho = None if self.reach is None else float(self.reach) ** self.p
        loss, f, g, f_aa, g_bb, *_ = run(
            X, Y, A, Bw, p=self.p, blur=self.blur, rho_x=rho, rho_y=rho, diameter=self.diameter,
            scaling=self.scaling, debias=self.debias, max_iter=None, tol=None, backend=self.backend,
            want_marginal=False)
        if self.potentials:
            F, G = (f - f_aa, g - g_bb) if self.debias else (f, g)
            if not batched:
                F, G = F[0], G[0]
            wa = a if a is not None else F
            wb = b if b is not None else G
            return F.reshape(wa.shape), G.reshape(wb.shape)
        return loss if batched else loss[0]
