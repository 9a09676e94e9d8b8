"""Reference for the streaming pairwise engine (materializes the n x m score matrix)."""
import torch


def scores(x, y, scale, metric, col_bias=None):
    """score[b, i, j] for x (B, n, d), y (B, m, d)."""
    if metric == "dot":
        s = scale * torch.bmm(x, y.transpose(1, 2))
    else:
        s = -scale * ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
    if col_bias is not None:
        s = s + col_bias[:, None, :]
    return s


def _softmax(s, lse):
    # normalized by the row sum, not exp(s - lse): at |s| ~ 1e30 the lse absorbs log(sum) and
    # exp(s - lse) would not sum to 1. Rows of lse = -inf (every column masked) or +inf weigh
    # nothing, as in the kernels; NaN propagates.
    dead = torch.isinf(lse)
    return torch.where(dead[..., None], 0.0, torch.softmax(s, dim=-1))


def pairwise_lse_fwd(x, y, col_bias, values, scale, metric):
    """(lse (B, n), out (B, n, k) or None): row log-sum-exp of the scores and softmax-weighted values."""
    s = scores(x, y, scale, metric, col_bias)
    lse = torch.logsumexp(s, dim=2) if s.shape[2] > 0 else s.new_full(s.shape[:2], -float("inf"))
    out = None
    if values is not None:
        out = torch.bmm(_softmax(s, lse), values)
    return lse, out


def pairwise_lse_bwd(x, y, col_bias, values, lse, out, grad_lse, grad_out, scale, metric):
    """Gradients (gx, gy, gcol_bias, gvalues) of the forward above, written out explicitly."""
    if x.shape[1] == 0 or y.shape[1] == 0:  # an empty sum depends on nothing: zeros, even beside NaN
        z = torch.zeros_like
        return (z(x), z(y), z(col_bias) if col_bias is not None else None,
                z(values) if values is not None else None)
    s = scores(x, y, scale, metric, col_bias)
    p = _softmax(s, lse)
    row = grad_lse.clone()
    colterm = 0.0
    gv = None
    if values is not None:
        row = row - (grad_out * out).sum(-1)
        colterm = torch.bmm(grad_out, values.transpose(1, 2))
        gv = torch.bmm(p.transpose(1, 2), grad_out)
    ds = p * (row[..., None] + colterm)
    if metric == "dot":
        gx = scale * torch.bmm(ds, y)
        gy = scale * torch.bmm(ds.transpose(1, 2), x)
    else:
        gx = -2 * scale * (ds.sum(2, keepdim=True) * x - torch.bmm(ds, y))
        gy = -2 * scale * (ds.sum(1)[..., None] * y - torch.bmm(ds.transpose(1, 2), x))
    gc = ds.sum(1) if col_bias is not None else None
    return gx, gy, gc, gv
