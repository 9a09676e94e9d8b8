// hotpath_cpu::pairwise_lse_fwd / pairwise_lse_bwd: the engine's log-sum-exp epilogue and its
// streamed backward (two passes, rows then columns, each recomputing scores: no atomics).
#include <torch/library.h>

#include <tuple>

#include "pairwise_engine.h"

namespace hotpath {
namespace {

bool is_sqeuclidean(c10::string_view metric) {
  TORCH_CHECK(metric == "dot" || metric == "sqeuclidean", "metric must be \"dot\" or \"sqeuclidean\"");
  return metric == "sqeuclidean";
}

using at::Tensor;
using engine::BwdTerms;
using engine::Feats;
using engine::Pairs;

// Above this width |x - y|^2 is expanded to |x|^2 - 2<x, y> + |y|^2 (inputs are centered by the
// caller) so the micro-kernel does one FMA per coordinate instead of a subtract and an FMA.
constexpr int64_t kDirectSqMaxDim = 16;

void check_inputs(const Tensor& x, const Tensor& y, const std::optional<Tensor>& cb,
                  const std::optional<Tensor>& v) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3, "pairwise_lse: x and y must be 3-D (B, n, d), (B, m, d)");
  TORCH_CHECK(x.size(0) == y.size(0) && x.size(2) == y.size(2), "pairwise_lse: batch / feature sizes differ");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "pairwise_lse: float32 or float64 only");
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), "pairwise_lse: x and y dtypes differ");
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), "pairwise_lse (C++): CPU tensors only");
  if (cb) TORCH_CHECK(cb->dim() == 2 && cb->size(0) == y.size(0) && cb->size(1) == y.size(1) &&
                          cb->scalar_type() == x.scalar_type(), "pairwise_lse: col_bias must be (B, m), same dtype");
  if (v) TORCH_CHECK(v->dim() == 3 && v->size(0) == y.size(0) && v->size(1) == y.size(1) &&
                         v->scalar_type() == x.scalar_type(), "pairwise_lse: values must be (B, m, k), same dtype");
}

// Transposed, zero-padded copy (B, k, ldc) of a (B, n, k) tensor.
Tensor transposed_padded(const Tensor& a, int64_t ldc) {
  auto t = at::zeros({a.size(0), a.size(2), ldc}, a.options());
  t.narrow(2, 0, a.size(1)).copy_(a.transpose(1, 2));
  return t;
}

// (B, ldc) bias padded with -inf; `base` may be undefined (zeros).
Tensor padded_bias(const Tensor& base, int64_t B, int64_t n, int64_t ldc, const at::TensorOptions& opt) {
  auto t = at::full({B, ldc}, -std::numeric_limits<double>::infinity(), opt);
  if (base.defined()) t.narrow(1, 0, n).copy_(base);
  else t.narrow(1, 0, n).zero_();
  return t;
}

template <typename T>
Feats<T> feats(const Tensor& rowmajor, const Tensor& tr, int64_t b) {
  Feats<T> f;
  if (!rowmajor.defined()) return f;
  f.k = rowmajor.size(2);
  f.rowmajor = rowmajor.data_ptr<T>() + b * rowmajor.size(1) * f.k;
  f.ld = tr.size(2);
  f.T_ = tr.data_ptr<T>() + b * f.k * f.ld;
  return f;
}

// Everything one pass needs, laid out once per call (O((n + m)(d + k)) memory).
struct Side {
  Tensor rows, colsT, rowb, colb;  // rows (B, nr, d) ; colsT (B, d, ldc) ; rowb (B, nr) or undefined ; colb (B, ldc)
  int64_t nc = 0, ldc = 0;
  double alpha = 1;
  bool sqdist = false;
};

// Layout of scores for rows r against cols c with metric; extra row / column biases added.
Side make_side(const Tensor& r, const Tensor& c, double scale, bool sq, const Tensor& row_bias,
               const Tensor& col_bias) {
  Side s;
  const int64_t B = r.size(0), d = r.size(2);
  s.nc = c.size(1);
  s.ldc = engine::round_up(std::max<int64_t>(s.nc, 1), r.scalar_type() == at::kFloat ? 32 : 16);
  s.rows = r;
  s.colsT = transposed_padded(c, s.ldc);
  Tensor rb = row_bias, cb = col_bias;
  if (sq && d > kDirectSqMaxDim) {
    auto rn = -scale * r.pow(2).sum(2), cn = -scale * c.pow(2).sum(2);
    rb = rb.defined() ? rb + rn : rn;
    cb = cb.defined() ? cb + cn : cn;
    s.alpha = 2 * scale;
  } else if (sq) {
    s.alpha = -scale;
    s.sqdist = true;
  } else {
    s.alpha = scale;
  }
  s.rowb = rb.defined() ? rb.contiguous() : rb;
  s.colb = padded_bias(cb, B, s.nc, s.ldc, r.options());
  return s;
}

template <typename T>
Pairs<T> pairs(const Side& s, int64_t b) {
  Pairs<T> P;
  P.nr = s.rows.size(1);
  P.d = s.rows.size(2);
  P.rows = s.rows.data_ptr<T>() + b * P.nr * P.d;
  P.nc = s.nc;
  P.ldc = s.ldc;
  P.colsT = s.colsT.data_ptr<T>() + b * P.d * s.ldc;
  P.alpha = (T)s.alpha;
  P.sqdist = s.sqdist;
  P.rowb = s.rowb.defined() ? s.rowb.data_ptr<T>() + b * P.nr : nullptr;
  P.colb = s.colb.data_ptr<T>() + b * s.ldc;
  return P;
}

std::tuple<Tensor, Tensor> pairwise_lse_fwd(const Tensor& x_, const Tensor& y_, const std::optional<Tensor>& cb_,
                                            const std::optional<Tensor>& v_, double scale, c10::string_view metric) {
  const bool sq = is_sqeuclidean(metric);
  check_inputs(x_, y_, cb_, v_);
  const auto x = x_.contiguous(), y = y_.contiguous();
  const int64_t B = x.size(0), n = x.size(1);
  const Tensor v = v_ ? v_->contiguous() : Tensor();
  const int64_t k = v.defined() ? v.size(2) : 0;
  auto lse = at::empty({B, n}, x.options());
  auto out = at::zeros({B, n, k}, x.options());
  if (B == 0 || n == 0) return {lse, out};
  const Side s = make_side(x, y, scale, sq, Tensor(), cb_ ? cb_->contiguous() : Tensor());
  const Tensor vT = v.defined() ? transposed_padded(v, s.ldc) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_lse_fwd", [&] {
    std::vector<Pairs<scalar_t>> Ps(B);
    std::vector<Feats<scalar_t>> Vs(B);
    for (int64_t b = 0; b < B; ++b) {
      Ps[b] = pairs<scalar_t>(s, b);
      Ps[b].rowb = nullptr;  // a per-row constant: added to lse below, softmax does not see it
      Vs[b] = feats<scalar_t>(v, vT, b);
    }
    engine::lse_rows<scalar_t>(Ps.data(), Vs.data(), B, lse.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  if (s.rowb.defined()) lse.add_(s.rowb);
  return {lse, out};
}

template <typename T>
BwdTerms<T> terms(const Tensor& ra, const Tensor& ca, const Tensor& rv, const Tensor& cv, const Tensor& cvT,
                  const Tensor& cf, const Tensor& cfT, bool want_acc2, int64_t b) {
  BwdTerms<T> t;
  if (ra.defined()) t.ra = ra.data_ptr<T>() + b * ra.size(1);
  if (ca.defined()) t.ca = ca.data_ptr<T>() + b * ca.size(1);
  if (rv.defined()) t.rv = rv.data_ptr<T>() + b * rv.size(1) * rv.size(2);
  t.cv = feats<T>(cv, cvT, b);
  t.colfeat = feats<T>(cf, cfT, b);
  t.want_acc2 = want_acc2;
  return t;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pairwise_lse_bwd(
    const Tensor& x_, const Tensor& y_, const std::optional<Tensor>& cb_, const std::optional<Tensor>& v_,
    const Tensor& lse_, const std::optional<Tensor>& out_, const Tensor& grad_lse_,
    const std::optional<Tensor>& grad_out_, double scale, c10::string_view metric, bool need_rows, bool need_cols) {
  const bool sq = is_sqeuclidean(metric);
  check_inputs(x_, y_, cb_, v_);
  const auto x = x_.contiguous(), y = y_.contiguous();
  const int64_t B = x.size(0), n = x.size(1), m = y.size(1), d = x.size(2);
  const bool has_v = v_.has_value();
  TORCH_CHECK(!has_v || (out_ && grad_out_), "pairwise_lse_bwd: values need out and grad_out");
  const Tensor v = has_v ? v_->contiguous() : Tensor();
  const Tensor cb = cb_ ? cb_->contiguous() : Tensor();
  auto gx = at::zeros_like(x), gy = at::zeros_like(y);
  auto gc = cb_ ? at::zeros({B, m}, x.options()) : at::zeros({0}, x.options());
  auto gv = has_v ? at::zeros_like(v) : at::zeros({0}, x.options());
  if (B == 0 || n == 0 || m == 0) return {gx, gy, gc, gv};

  const auto lse = lse_.contiguous();
  // Rows with every column masked (lse = -inf) get weight 0, not exp(-inf + inf).
  const auto neg_lse = at::where(at::isfinite(lse) | at::isnan(lse), -lse,
                                 at::full({}, -std::numeric_limits<double>::infinity(), lse.options()));
  Tensor a = grad_lse_.contiguous(), go;
  if (has_v) {
    go = grad_out_->contiguous();
    a = a - (go * out_->contiguous()).sum(2);
  }
  const double coefA = sq ? 2 * scale : scale, coefB = sq ? -2 * scale : 0.0;

  // Row pass: gx. Either pass is skipped when none of its gradients is wanted (they stay 0).
  if (need_rows) {
    const Side s = make_side(x, y, scale, sq, neg_lse, cb);
    const Tensor vT = has_v ? transposed_padded(v, s.ldc) : Tensor();
    const Tensor yT = transposed_padded(y, s.ldc);
    auto acc = at::empty_like(x), rsum = at::empty({B, n}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_lse_bwd_rows", [&] {
      std::vector<Pairs<scalar_t>> Ps(B);
      std::vector<BwdTerms<scalar_t>> Ts(B);
      for (int64_t b = 0; b < B; ++b) {
        Ps[b] = pairs<scalar_t>(s, b);
        Ts[b] = terms<scalar_t>(a, Tensor(), go, v, vT, y, yT, false, b);
      }
      engine::softmax_bwd_rows<scalar_t>(Ps.data(), Ts.data(), B, acc.data_ptr<scalar_t>(),
                                         rsum.data_ptr<scalar_t>(), nullptr);
    });
    gx = coefA * acc + coefB * rsum.unsqueeze(2) * x;
  }
  // Column pass: gy, gcol_bias, gvalues (rows are y, columns are x).
  if (need_cols) {
    const Side s = make_side(y, x, scale, sq, cb, neg_lse);
    const Tensor goT = has_v ? transposed_padded(go, s.ldc) : Tensor();
    const Tensor xT = transposed_padded(x, s.ldc);
    auto ca = at::zeros({B, s.ldc}, x.options());
    ca.narrow(1, 0, n).copy_(a);
    auto acc = at::empty_like(y), rsum = at::empty({B, m}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_lse_bwd_cols", [&] {
      std::vector<Pairs<scalar_t>> Ps(B);
      std::vector<BwdTerms<scalar_t>> Ts(B);
      for (int64_t b = 0; b < B; ++b) {
        Ps[b] = pairs<scalar_t>(s, b);
        Ts[b] = terms<scalar_t>(Tensor(), ca, v, go, goT, x, xT, has_v, b);
      }
      engine::softmax_bwd_rows<scalar_t>(Ps.data(), Ts.data(), B, acc.data_ptr<scalar_t>(),
                                         rsum.data_ptr<scalar_t>(), has_v ? gv.data_ptr<scalar_t>() : nullptr);
    });
    gy = coefA * acc + coefB * rsum.unsqueeze(2) * y;
    if (cb_) gc = rsum;
  }
  return {gx, gy, gc, gv};
}

}  // namespace
}  // namespace hotpath

TORCH_LIBRARY_IMPL(hotpath, CPU, m) {
  m.impl("pairwise_lse_fwd", &hotpath::pairwise_lse_fwd);
  m.impl("pairwise_lse_bwd", &hotpath::pairwise_lse_bwd);
}
