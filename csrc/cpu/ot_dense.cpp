// Log-domain Sinkhorn kernels on dense cost matrices (CPU).
//
//   softmin over rows:    f_i = -eps * LSE_j[ h_j - C_ij / eps ]
//   softmin over columns: g_j = -eps * LSE_i[ h_i - C_ij / eps ]
//
// Both read C row-major once per call (the column form keeps a running max / sum per column
// block, vectorized along j), so no transposed copy of C is ever made. On top of them:
//   ot_sinkhorn_alternating: POT's sinkhorn_log loop (g then f, marginal error every k its)
//   ot_sinkhorn_symmetric:   GeomLoss's symmetric loop with an epsilon schedule, on
//                            (B, n, m) costs: the fused small-problem path, many iterations
//                            inside one call, parallel over the batch.
// Zero weights enter as -inf in h; an all -inf slice gives -inf (never NaN); NaN propagates.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "simd.h"

namespace {

using hotpath::simd::Vec;

template <typename T>
inline T ninf() { return -std::numeric_limits<T>::infinity(); }

// LSE_j[h_j - c_j * ie] over one row of length m; buf holds m scratch values.
template <typename T>
T row_lse(const T* c, const T* h, int64_t m, T ie, T* buf) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const V iev = VV::set1(ie);
  V mv = VV::set1(ninf<T>());
  int64_t j = 0;
  for (; j + W <= m; j += W) {
    const V s = VV::load(h + j) - VV::load(c + j) * iev;
    VV::store(buf + j, s);
    mv = VV::vmax(mv, s);
  }
  T mx = VV::hmax(mv);
  for (; j < m; ++j) {
    const T s = h[j] - c[j] * ie;
    buf[j] = s;
    mx = s > mx ? s : mx;
  }
  if (mx == ninf<T>()) {
    for (int64_t k = 0; k < m; ++k)
      if (buf[k] != buf[k]) return std::numeric_limits<T>::quiet_NaN();
    return ninf<T>();
  }
  const V mxv = VV::set1(mx);
  V acc{};
  j = 0;
  for (; j + W <= m; j += W) acc += VV::exp_nonpos(VV::load(buf + j) - mxv);
  T sum = VV::hsum(acc);
  for (; j < m; ++j) sum += std::exp(buf[j] - mx);
  return mx + std::log(sum);
}

// out_j = LSE_i[h_i - C_ij * ie] for columns j in [j0, j1); mx, sm scratch of length j1 - j0.
template <typename T>
void col_lse(const T* C, int64_t n, int64_t m, const T* h, T ie, int64_t j0, int64_t j1, T* out, T* mx, T* sm) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const int64_t len = j1 - j0;
  const V iev = VV::set1(ie);
  std::fill(mx, mx + len, ninf<T>());
  std::fill(sm, sm + len, T(0));
  for (int64_t i = 0; i < n; ++i) {
    const T hi = h[i];
    if (hi == ninf<T>()) continue;  // zero-weight row: contributes exp(-inf) = 0
    const T* c = C + i * m + j0;
    const V hv = VV::set1(hi);
    int64_t j = 0;
    for (; j + W <= len; j += W) VV::store(mx + j, VV::vmax(VV::load(mx + j), hv - VV::load(c + j) * iev));
    for (; j < len; ++j) { const T s = hi - c[j] * ie; mx[j] = s > mx[j] ? s : mx[j]; }
  }
  // columns with no finite score: shift 0, so they sum to 0 and give -inf
  for (int64_t j = 0; j < len; ++j) if (!(mx[j] > ninf<T>()) && mx[j] == mx[j]) mx[j] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T hi = h[i];
    if (hi == ninf<T>()) continue;
    const T* c = C + i * m + j0;
    const V hv = VV::set1(hi);
    int64_t j = 0;
    for (; j + W <= len; j += W)
      VV::store(sm + j, VV::load(sm + j) + VV::exp_nonpos(hv - VV::load(c + j) * iev - VV::load(mx + j)));
    for (; j < len; ++j) sm[j] += std::exp(hi - c[j] * ie - mx[j]);
  }
  for (int64_t j = 0; j < len; ++j) {
    bool nan = mx[j] != mx[j];
    if (!nan && sm[j] == T(0)) {  // no finite score; NaN scores leave NaN in mx or sm
      out[j] = ninf<T>();
      for (int64_t i = 0; i < n; ++i) {
        const T s = h[i] - C[i * m + j0 + j] * ie;
        if (s != s) { out[j] = std::numeric_limits<T>::quiet_NaN(); break; }
      }
    } else {
      out[j] = mx[j] + std::log(sm[j]);
    }
  }
}

constexpr int64_t kColBlock = 256;

// f = scale * softmin over rows (out (n)) or columns (out (m)) of one problem; parallel inside.
template <typename T>
void softmin_one(const T* C, int64_t n, int64_t m, const T* h, T eps, bool rows, T scale, T* out) {
  const T ie = T(1) / eps;
  if (rows) {
    at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
      std::vector<T> buf(m + 1);
      for (int64_t i = i0; i < i1; ++i) out[i] = -eps * scale * row_lse<T>(C + i * m, h, m, ie, buf.data());
    });
  } else {
    const int64_t nb = (m + kColBlock - 1) / kColBlock;
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      std::vector<T> mx(kColBlock), sm(kColBlock);
      for (int64_t bb = b0; bb < b1; ++bb) {
        const int64_t j0 = bb * kColBlock, j1 = std::min(m, j0 + kColBlock);
        col_lse<T>(C, n, m, h, ie, j0, j1, out + j0, mx.data(), sm.data());
        for (int64_t j = j0; j < j1; ++j) out[j] *= -eps * scale;
      }
    });
  }
}

// Run body(b) for every problem: in parallel over the batch when it is large enough to keep
// every thread busy, else one problem at a time with parallelism inside (nested parallel_for
// calls run inline, so the same body serves both).
template <typename F>
void for_each_problem(int64_t B, F body) {
  if (B >= at::get_num_threads() && B > 1) {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) { for (int64_t b = b0; b < b1; ++b) body(b); });
  } else {
    for (int64_t b = 0; b < B; ++b) body(b);
  }
}

void check_cost(const at::Tensor& C) {
  TORCH_CHECK(C.dim() == 3, "C must be (B, n, m), got ", C.sizes());
  TORCH_CHECK(C.scalar_type() == at::kFloat || C.scalar_type() == at::kDouble, "C must be float32 or float64");
  TORCH_CHECK(C.is_contiguous(), "C must be contiguous");
  TORCH_CHECK(C.device().is_cpu(), "C must be a CPU tensor");
}

void check_vec(const at::Tensor& v, const at::Tensor& C, int64_t len, const char* name) {
  TORCH_CHECK(v.dim() == 2 && v.size(0) == C.size(0) && v.size(1) == len, name, " must be (B, ", len, "), got ", v.sizes());
  TORCH_CHECK(v.scalar_type() == C.scalar_type(), name, " must have the dtype of C");
  TORCH_CHECK(v.is_contiguous(), name, " must be contiguous");
}

at::Tensor ot_softmin_dense(at::Tensor C, at::Tensor h, double eps, int64_t dim) {
  check_cost(C);
  TORCH_CHECK(dim == 1 || dim == 2, "dim must be 1 or 2");
  TORCH_CHECK(eps > 0, "eps must be > 0");
  const int64_t B = C.size(0), n = C.size(1), m = C.size(2);
  const bool rows = dim == 2;
  check_vec(h, C, rows ? m : n, "h");
  at::Tensor out = at::empty({B, rows ? n : m}, C.options());
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "ot_softmin_dense", [&] {
    const scalar_t* Cp = C.data_ptr<scalar_t>();
    const scalar_t* hp = h.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_problem(B, [&](int64_t b) {
      softmin_one<scalar_t>(Cp + b * n * m, n, m, hp + b * (rows ? m : n), (scalar_t)eps, rows, 1,
                            op + b * (rows ? n : m));
    });
  });
  return out;
}

template <typename T>
inline T damping(double eps, double rho) { return rho > 0 ? T(1.0 / (1.0 + eps / rho)) : T(1); }

// POT's sinkhorn_log, batched, in potentials: g = dy * softmin_cols(a_log + f/eps),
// f = dx * softmin_rows(b_log + g/eps); error = |column marginal - b|_2 every check_every its.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ot_sinkhorn_alternating(
    at::Tensor C, at::Tensor a_log, at::Tensor b_log, double eps, double rho_x, double rho_y,
    int64_t max_iter, double tol, int64_t check_every, at::Tensor f0) {
  check_cost(C);
  const int64_t B = C.size(0), n = C.size(1), m = C.size(2);
  check_vec(a_log, C, n, "a_log");
  check_vec(b_log, C, m, "b_log");
  check_vec(f0, C, n, "f0");
  TORCH_CHECK(eps > 0, "eps must be > 0");
  TORCH_CHECK(check_every >= 1, "check_every must be >= 1");
  at::Tensor f = f0.clone(), g = at::zeros_like(b_log);
  at::Tensor n_iter = at::zeros({B}, C.options().dtype(at::kLong));
  at::Tensor err = at::full({B}, std::numeric_limits<double>::infinity(), C.options());
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "ot_sinkhorn_alternating", [&] {
    using T = scalar_t;
    const T* Cp = C.data_ptr<T>();
    const T* al = a_log.data_ptr<T>();
    const T* bl = b_log.data_ptr<T>();
    T* fp = f.data_ptr<T>();
    T* gp = g.data_ptr<T>();
    int64_t* itp = n_iter.data_ptr<int64_t>();
    T* ep = err.data_ptr<T>();
    const T e = (T)eps, ie = T(1) / e, dx = damping<T>(eps, rho_x), dy = damping<T>(eps, rho_y);
    for_each_problem(B, [&](int64_t b) {
      const T* Cb = Cp + b * n * m;
      const T *ab = al + b * n, *bb = bl + b * m;
      T *fb = fp + b * n, *gb = gp + b * m;
      std::vector<T> h(std::max(n, m)), tmp(m);
      for (int64_t it = 0; it < max_iter; ++it) {
        for (int64_t i = 0; i < n; ++i) h[i] = ab[i] + fb[i] * ie;
        softmin_one<T>(Cb, n, m, h.data(), e, false, dy, gb);
        for (int64_t j = 0; j < m; ++j) h[j] = bb[j] + gb[j] * ie;
        softmin_one<T>(Cb, n, m, h.data(), e, true, dx, fb);
        itp[b] = it + 1;
        if (it % check_every == 0) {
          // column marginal sum_i P_ij = b_j exp(g_j/eps + LSE_i[a_log_i + (f_i - C_ij)/eps])
          for (int64_t i = 0; i < n; ++i) h[i] = ab[i] + fb[i] * ie;
          softmin_one<T>(Cb, n, m, h.data(), e, false, T(1), tmp.data());  // = -eps LSE
          double s = 0;
          for (int64_t j = 0; j < m; ++j) {
            const double mj = std::exp((double)bb[j] + ((double)gb[j] - (double)tmp[j]) / eps);
            const double dj = (bb[j] == ninf<T>() ? 0.0 : mj) - std::exp((double)bb[j]);
            s += dj * dj;
          }
          ep[b] = (T)std::sqrt(s);
          if (!(s >= 0) || std::sqrt(s) < tol) break;  // converged, or NaN: stop, never hang
        }
      }
    });
  });
  return {f, g, n_iter, err};
}

// GeomLoss's symmetric loop on dense costs. Costs: Cxy (B, n, m), Cxx (B, n, n), Cyy (B, m, m)
// (the last two only with debias). eps_list (K,) float64 on CPU. Initialization at eps_list[0],
// then for each eps: averaged updates of (f_ba, g_ab) and (f_aa, g_bb). With tol > 0 a problem
// stops once the sup-norm change of its potentials in one iteration is below tol (checked every
// check_every iterations).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ot_sinkhorn_symmetric(
    at::Tensor Cxy, at::Tensor Cxx, at::Tensor Cyy, at::Tensor a_log, at::Tensor b_log,
    at::Tensor eps_list, double rho_x, double rho_y, bool debias, double tol, int64_t check_every) {
  check_cost(Cxy);
  const int64_t B = Cxy.size(0), n = Cxy.size(1), m = Cxy.size(2);
  check_vec(a_log, Cxy, n, "a_log");
  check_vec(b_log, Cxy, m, "b_log");
  TORCH_CHECK(eps_list.dim() == 1 && eps_list.numel() >= 1 && eps_list.scalar_type() == at::kDouble && eps_list.device().is_cpu(),
              "eps_list must be a non-empty 1-D float64 CPU tensor");
  TORCH_CHECK(check_every >= 1, "check_every must be >= 1");
  if (debias) {
    check_cost(Cxx);
    check_cost(Cyy);
    TORCH_CHECK(Cxx.size(0) == B && Cxx.size(1) == n && Cxx.size(2) == n, "Cxx must be (B, n, n)");
    TORCH_CHECK(Cyy.size(0) == B && Cyy.size(1) == m && Cyy.size(2) == m, "Cyy must be (B, m, m)");
    TORCH_CHECK(Cxx.scalar_type() == Cxy.scalar_type() && Cyy.scalar_type() == Cxy.scalar_type(), "costs must share a dtype");
  }
  const int64_t K = eps_list.numel();
  const double* el = eps_list.data_ptr<double>();
  for (int64_t k = 0; k < K; ++k) TORCH_CHECK(el[k] > 0, "eps_list must be > 0");
  at::Tensor f_ba = at::empty_like(a_log), g_ab = at::empty_like(b_log);
  at::Tensor f_aa = debias ? at::empty_like(a_log) : at::empty({0}, a_log.options());
  at::Tensor g_bb = debias ? at::empty_like(b_log) : at::empty({0}, b_log.options());
  at::Tensor n_iter = at::zeros({B}, a_log.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(Cxy.scalar_type(), "ot_sinkhorn_symmetric", [&] {
    using T = scalar_t;
    const T* Cp = Cxy.data_ptr<T>();
    const T* Cxp = debias ? Cxx.data_ptr<T>() : nullptr;
    const T* Cyp = debias ? Cyy.data_ptr<T>() : nullptr;
    const T* al = a_log.data_ptr<T>();
    const T* bl = b_log.data_ptr<T>();
    T *F = f_ba.data_ptr<T>(), *G = g_ab.data_ptr<T>();
    T *FA = debias ? f_aa.data_ptr<T>() : nullptr, *GB = debias ? g_bb.data_ptr<T>() : nullptr;
    int64_t* itp = n_iter.data_ptr<int64_t>();
    for_each_problem(B, [&](int64_t b) {
      const T *C = Cp + b * n * m, *ab = al + b * n, *bb = bl + b * m;
      const T* CX = debias ? Cxp + b * n * n : nullptr;
      const T* CY = debias ? Cyp + b * m * m : nullptr;
      T *f = F + b * n, *g = G + b * m;
      T *fa = debias ? FA + b * n : nullptr, *gb = debias ? GB + b * m : nullptr;
      std::vector<T> hx(n), hy(m), ft(n), gt(m), fat(debias ? n : 0), gbt(debias ? m : 0);
      T e = (T)el[0];
      T dx = damping<T>(el[0], rho_x), dy = damping<T>(el[0], rho_y);
      softmin_one<T>(C, n, m, ab, e, false, dy, g);
      softmin_one<T>(C, n, m, bb, e, true, dx, f);
      if (debias) {
        softmin_one<T>(CX, n, n, ab, e, true, dx, fa);
        softmin_one<T>(CY, m, m, bb, e, true, dy, gb);
      }
      for (int64_t k = 0; k < K; ++k) {
        e = (T)el[k];
        const T ie = T(1) / e;
        dx = damping<T>(el[k], rho_x);
        dy = damping<T>(el[k], rho_y);
        for (int64_t j = 0; j < m; ++j) hy[j] = bb[j] + g[j] * ie;
        for (int64_t i = 0; i < n; ++i) hx[i] = ab[i] + f[i] * ie;
        softmin_one<T>(C, n, m, hy.data(), e, true, dx, ft.data());
        softmin_one<T>(C, n, m, hx.data(), e, false, dy, gt.data());
        T change = 0;
        for (int64_t i = 0; i < n; ++i) {
          const T nf = T(0.5) * (f[i] + ft[i]);
          if (ab[i] != ninf<T>()) change = std::max(change, std::abs(nf - f[i]));
          f[i] = nf;
        }
        for (int64_t j = 0; j < m; ++j) {
          const T ng = T(0.5) * (g[j] + gt[j]);
          if (bb[j] != ninf<T>()) change = std::max(change, std::abs(ng - g[j]));
          g[j] = ng;
        }
        if (debias) {
          for (int64_t i = 0; i < n; ++i) hx[i] = ab[i] + fa[i] * ie;
          for (int64_t j = 0; j < m; ++j) hy[j] = bb[j] + gb[j] * ie;
          softmin_one<T>(CX, n, n, hx.data(), e, true, dx, fat.data());
          softmin_one<T>(CY, m, m, hy.data(), e, true, dy, gbt.data());
          for (int64_t i = 0; i < n; ++i) fa[i] = T(0.5) * (fa[i] + fat[i]);
          for (int64_t j = 0; j < m; ++j) gb[j] = T(0.5) * (gb[j] + gbt[j]);
        }
        itp[b] = k + 1;
        if (tol > 0 && (k + 1) % check_every == 0 && !(change >= (T)tol)) break;  // NaN stops too
      }
    });
  });
  return {f_ba, g_ab, f_aa, g_bb, n_iter};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hotpath_cpu, m) {
  m.def("ot_softmin_dense", &ot_softmin_dense);
  m.def("ot_sinkhorn_alternating", &ot_sinkhorn_alternating);
  m.def("ot_sinkhorn_symmetric", &ot_sinkhorn_symmetric);
}
