// hotpath_cpu contrastive kernels: streaming sweeps over (row block) x (column tile) score
// tiles with fused epilogues, so the n x m score matrix never exists (memory O((n + m) d) plus
// one tile per thread).
//
// Tile scores come from one BLAS GEMM per tile (at::mm_out into a per-thread buffer: inside
// at::parallel_for it runs single threaded), so the dot products run at GEMM speed; the
// epilogues (online log-sum-exp with optional row / column outputs and diagonal exclusion,
// softmax weights, softplus / sigmoid, masked arg-max / arg-min on labels, top-k buffers) are
// vectorized with simd.h. Column-side gradients get their own sweep (rows and columns swapped):
// no atomics, deterministic for a given thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "simd.h"

namespace hotpath {
namespace {

using at::Tensor;
using simd::Vec;

constexpr int64_t kRB = 128;   // rows per task
constexpr int64_t kTC = 1024;  // columns per tile (a multiple of every vector width)

template <typename T> inline T ninf() { return -std::numeric_limits<T>::infinity(); }

void check_2d(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 2, "contrastive: ", name, " must be 2-D (n, d)");
  TORCH_CHECK(x.device().is_cpu(), "contrastive (C++): ", name, " must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "contrastive: ", name, " must be float32 or float64");
}

void check_pair(const Tensor& x, const Tensor& y) {
  check_2d(x, "x");
  check_2d(y, "y");
  TORCH_CHECK(x.size(1) == y.size(1), "contrastive: x and y feature sizes differ");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "contrastive: x and y dtypes differ");
}

Tensor vec_or_empty(const std::optional<Tensor>& t, int64_t n, const Tensor& like, const char* name) {
  if (!t || t->numel() == 0) return Tensor();
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, "contrastive: ", name, " must have shape (", n, ")");
  return t->to(like.scalar_type()).contiguous();
}

// S (R x C, row stride C) = X[i0:i0+R] @ Y[j0:j0+C]^T, written into buf.
// Grad mode is thread local: the pool's worker threads do not inherit the caller's no-grad
// state, so each BLAS call states it (inputs may require grad; these are plain kernels).
template <typename T>
inline T* gemm_tile(const Tensor& X, const Tensor& Y, int64_t i0, int64_t R, int64_t j0, int64_t C, T* buf) {
  at::NoGradGuard no_grad;
  auto S = at::from_blob(buf, {R, C}, X.options());
  at::mm_out(S, X.narrow(0, i0, R), Y.narrow(0, j0, C).t());
  return buf;
}

// acc[i0:i0+R] += W (R x C) @ Y[j0:j0+C]
template <typename T>
inline void gemm_acc(const Tensor& acc, const T* W, const Tensor& Y, int64_t i0, int64_t R, int64_t j0, int64_t C) {
  at::NoGradGuard no_grad;
  auto Wt = at::from_blob(const_cast<T*>(W), {R, C}, Y.options());
  auto a = acc.narrow(0, i0, R);
  a.addmm_(Wt, Y.narrow(0, j0, C));
}

// log1p(u) for u in [0, 1], vectorized (float: atanh series, ~1 ulp; double: libm per lane).
template <typename T> struct Log1p;
template <> struct Log1p<float> {
  using V = Vec<float>::V;
  static inline V apply(V u) {
    using VV = Vec<float>;
    V v = u + 1.0f;
    const auto big = v > 1.41421356f;
    const V half = big ? VV::set1(0.5f) : VV::set1(1.0f);
    const V k = big ? VV::set1(0.69314718056f) : VV::set1(0.0f);
    const V w = v * half;
    const V f = w - 1.0f;
    const V s = f / (f + 2.0f);
    const V s2 = s * s;
    V p = VV::set1(2.0f / 9.0f);
    p = p * s2 + 2.0f / 7.0f;
    p = p * s2 + 2.0f / 5.0f;
    p = p * s2 + 2.0f / 3.0f;
    p = p * s2 + 2.0f;
    // (u - (v - 1)) / v restores the low bits of u lost when forming v = 1 + u.
    return k + s * p + (u - (v - 1.0f)) / v;
  }
};
template <> struct Log1p<double> {
  using V = Vec<double>::V;
  static inline V apply(V u) { V r; for (int i = 0; i < Vec<double>::W; ++i) r[i] = std::log1p(u[i]); return r; }
};

template <typename T> inline T softplus_s(T z) { return std::max(z, T(0)) + std::log1p(std::exp(-std::abs(z))); }
template <typename T> inline T sigmoid_s(T z) {
  const T e = std::exp(-std::abs(z));
  return z >= 0 ? T(1) / (T(1) + e) : e / (T(1) + e);
}

// ---------------------------------------------------------------------------------------------
// lse_sweep: lse_row_i = LSE_j scale <x_i, y_j>, and (want_col) lse_col_j = LSE_i of the same
// scores, both in one sweep. Rows are split into one contiguous chunk per thread; each chunk keeps
// running column maxima / sums for all m columns, merged at the end in chunk order.
// exclude_diag drops the (i, i) pairs (x compared with itself, SupCon's denominator).
template <typename T>
void lse_sweep_impl(const Tensor& X, const Tensor& Y, T scale, bool want_col, bool exclude_diag,
                    T* lse_row, T* lse_col) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const int64_t n = X.size(0), m = Y.size(0);
  const int64_t nblocks = (n + kRB - 1) / kRB;
  const int64_t nchunks = want_col ? std::max<int64_t>(1, std::min<int64_t>(nblocks, at::get_num_threads())) : nblocks;
  std::vector<T> cmax(want_col ? nchunks * m : 0, ninf<T>()), csum(want_col ? nchunks * m : 0, T(0));
  // a +inf score makes its row's / column's lse +inf (as torch.logsumexp) unless a NaN appears:
  // shifting by an infinite max would give inf - inf = NaN, so those rows / columns stop summing
  // and only look for NaN (cnan: a NaN seen in a column before or after it became infinite)
  std::vector<uint8_t> cinf(want_col ? nchunks * m : 0, 0), cnan(want_col ? nchunks * m : 0, 0);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<T> buf(kRB * kTC);
    std::vector<T> rmax(kRB), rsum(kRB), tmax(kTC);
    std::vector<uint8_t> rinf(kRB);
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t blo = ch * nblocks / nchunks, bhi = (ch + 1) * nblocks / nchunks;
      T* cm = want_col ? cmax.data() + ch * m : nullptr;
      T* cs = want_col ? csum.data() + ch * m : nullptr;
      for (int64_t blk = blo; blk < bhi; ++blk) {
        const int64_t i0 = blk * kRB, R = std::min(kRB, n - i0);
        std::fill(rmax.begin(), rmax.end(), ninf<T>());
        std::fill(rsum.begin(), rsum.end(), T(0));
        std::fill(rinf.begin(), rinf.end(), 0);
        for (int64_t j0 = 0; j0 < m; j0 += kTC) {
          const int64_t C = std::min(kTC, m - j0);
          T* S = gemm_tile<T>(X, Y, i0, R, j0, C, buf.data());
          const int64_t Cv = C / W * W;
          const V sc = VV::set1(scale);
          for (int64_t r = 0; r < R; ++r) {
            T* s = S + r * C;
            for (int64_t c = 0; c < Cv; c += W) VV::store(s + c, sc * VV::load(s + c));
            for (int64_t c = Cv; c < C; ++c) s[c] *= scale;
            const int64_t dg = i0 + r - j0;
            if (exclude_diag && dg >= 0 && dg < C) s[dg] = ninf<T>();
          }
          // rows: online max / sum
          for (int64_t r = 0; r < R; ++r) {
            T* s = S + r * C;
            V mv = VV::set1(ninf<T>());
            for (int64_t c = 0; c < Cv; c += W) mv = VV::vmax(mv, VV::load(s + c));
            T mx = VV::hmax(mv);
            for (int64_t c = Cv; c < C; ++c) mx = std::max(mx, s[c]);
            bool nan = false;
            if (mx == ninf<T>()) {
              for (int64_t c = 0; c < C; ++c) nan |= (s[c] != s[c]);
              if (nan) rsum[r] = std::numeric_limits<T>::quiet_NaN();
              continue;
            }
            if (mx == -ninf<T>() || rinf[r]) {
              rinf[r] = 1;
              for (int64_t c = 0; c < C; ++c)
                if (s[c] != s[c]) rsum[r] = std::numeric_limits<T>::quiet_NaN();
              continue;
            }
            if (mx > rmax[r]) {
              rsum[r] *= (rmax[r] == ninf<T>()) ? T(0) : std::exp(rmax[r] - mx);
              rmax[r] = mx;
            }
            const V m0 = VV::set1(rmax[r]);
            V acc{};
            for (int64_t c = 0; c < Cv; c += W) acc += VV::exp_nonpos(VV::load(s + c) - m0);
            T tail = 0;
            for (int64_t c = Cv; c < C; ++c) tail += std::exp(s[c] - rmax[r]);
            rsum[r] += VV::hsum(acc) + tail;
          }
          if (!want_col) continue;
          // columns: tile maxima, rescale running sums once per tile, then add exps
          std::fill(tmax.begin(), tmax.begin() + C, ninf<T>());
          for (int64_t r = 0; r < R; ++r) {
            const T* s = S + r * C;
            for (int64_t c = 0; c < Cv; c += W) VV::store(tmax.data() + c, VV::vmax(VV::load(tmax.data() + c), VV::load(s + c)));
            for (int64_t c = Cv; c < C; ++c) tmax[c] = std::max(tmax[c], s[c]);
          }
          uint8_t* ci = cinf.data() + ch * m + j0;
          uint8_t* cn = cnan.data() + ch * m + j0;
          for (int64_t c = 0; c < C; ++c) {
            T& M = cm[j0 + c];
            if (tmax[c] == -ninf<T>() || ci[c]) {
              if (!ci[c] && cs[j0 + c] != cs[j0 + c]) cn[c] = 1;  // a NaN summed before it turned infinite
              ci[c] = 1;
              tmax[c] = -ninf<T>();  // its sums below are discarded
              continue;
            }
            if (tmax[c] > M) {
              cs[j0 + c] *= (M == ninf<T>()) ? T(0) : std::exp(M - tmax[c]);
              M = tmax[c];
            }
            tmax[c] = (M == ninf<T>()) ? T(0) : M;  // shift; all-masked columns add exp(-inf) = 0
          }
          for (int64_t r = 0; r < R; ++r) {
            const T* s = S + r * C;
            T* csj = cs + j0;
            for (int64_t c = 0; c < Cv; c += W)
              VV::store(csj + c, VV::load(csj + c) + VV::exp_nonpos(VV::load(s + c) - VV::load(tmax.data() + c)));
            for (int64_t c = Cv; c < C; ++c) csj[c] += std::exp(s[c] - tmax[c]);
          }
          for (int64_t c = 0; c < C; ++c) {
            if (!ci[c]) continue;
            bool nan = false;
            for (int64_t r = 0; r < R && !nan; ++r) nan = S[r * C + c] != S[r * C + c];
            cn[c] |= nan;
            cs[j0 + c] = T(0);
          }
        }
        for (int64_t r = 0; r < R; ++r)
          lse_row[i0 + r] = (rsum[r] != rsum[r]) ? rsum[r]
                            : rinf[r] ? -ninf<T>()
                            : (rmax[r] == ninf<T>() ? ninf<T>() : rmax[r] + std::log(rsum[r]));
      }
    }
  });
  if (!want_col) return;
  // merge chunk partials in a fixed order (deterministic)
  at::parallel_for(0, m, 4096, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      T M = ninf<T>();
      bool nan = false, inf = false;
      for (int64_t ch = 0; ch < nchunks; ++ch) {
        const T v = cmax[ch * m + j];
        nan |= (v != v) || (csum[ch * m + j] != csum[ch * m + j]) || cnan[ch * m + j];
        inf |= cinf[ch * m + j] != 0;
        if (!cinf[ch * m + j]) M = std::max(M, v);
      }
      if (nan) { lse_col[j] = std::numeric_limits<T>::quiet_NaN(); continue; }
      if (inf) { lse_col[j] = -ninf<T>(); continue; }
      if (M == ninf<T>()) { lse_col[j] = ninf<T>(); continue; }
      T s = 0;
      for (int64_t ch = 0; ch < nchunks; ++ch)
        if (cmax[ch * m + j] != ninf<T>()) s += csum[ch * m + j] * std::exp(cmax[ch * m + j] - M);
      lse_col[j] = M + std::log(s);
    }
  });
}

std::tuple<Tensor, Tensor> lse_sweep(const Tensor& x_, const Tensor& y_, double scale, bool want_col, bool exclude_diag) {
  check_pair(x_, y_);
  const auto X = x_.detach().contiguous(), Y = y_.detach().contiguous();
  const int64_t n = X.size(0), m = Y.size(0);
  TORCH_CHECK(!exclude_diag || n == m, "lse_sweep: exclude_diag needs n == m");
  auto lr = at::full({n}, -std::numeric_limits<double>::infinity(), X.options());
  auto lc = want_col ? at::full({m}, -std::numeric_limits<double>::infinity(), X.options()) : at::empty({0}, X.options());
  if (n == 0 || m == 0) return {lr, lc};
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "lse_sweep", [&] {
    lse_sweep_impl<scalar_t>(X, Y, (scalar_t)scale, want_col, exclude_diag, lr.data_ptr<scalar_t>(),
                             want_col ? lc.data_ptr<scalar_t>() : nullptr);
  });
  return {lr, lc};
}

// ---------------------------------------------------------------------------------------------
// softmax_acc: acc_i = sum_j w_ij y_j with
//   w_ij = ra_i exp(s_ij - rl_i) + ca_j exp(s_ij - cl_j),   s_ij = scale <x_i, y_j>
// (either term may be absent). rl / cl are the log-sum-exps of the forward, so each exponent is
// <= 0. With ra = cl absent it is one softmax's backward; both terms give CLIP's symmetric
// gradient for one side in one sweep. exclude_diag drops (i, i).
template <typename T>
void softmax_acc_impl(const Tensor& X, const Tensor& Y, T scale, const T* ra, const T* rl, const T* ca,
                      const T* cl, bool exclude_diag, const Tensor& acc) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const int64_t n = X.size(0), m = Y.size(0);
  const int64_t nblocks = (n + kRB - 1) / kRB;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> buf(kRB * kTC), cadj(kTC), cav(kTC);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * kRB, R = std::min(kRB, n - i0);
      for (int64_t j0 = 0; j0 < m; j0 += kTC) {
        const int64_t C = std::min(kTC, m - j0);
        const int64_t Cv = C / W * W;
        T* S = gemm_tile<T>(X, Y, i0, R, j0, C, buf.data());
        if (ca) {
          for (int64_t c = 0; c < C; ++c) {
            const T l = cl[j0 + c];
            // a column whose lse is -inf (all masked) or whose weight is 0 contributes nothing
            cadj[c] = std::isfinite(l) ? -l : (l != l ? l : ninf<T>());
            cav[c] = ca[j0 + c];
          }
        }
        const V sc = VV::set1(scale);
        for (int64_t r = 0; r < R; ++r) {
          T* s = S + r * C;
          const int64_t i = i0 + r;
          const T rw = ra ? ra[i] : T(0);
          const T rsh = ra ? (std::isfinite(rl[i]) ? -rl[i] : (rl[i] != rl[i] ? rl[i] : ninf<T>())) : T(0);
          const V rwv = VV::set1(rw), rshv = VV::set1(rsh);
          // The scores are rounded as lse_sweep rounds them, in a pass of their own: fused into
          // z + shift (an FMA) the unrounded product would miss the forward's lse by up to half
          // an ulp of the score, and at |s| ~ 1e5 (small temperatures) that is a weight off by
          // exp(0.004), at |s| ~ 1e34 exp(1e27) = inf.
          for (int64_t c = 0; c < Cv; c += W) VV::store(s + c, sc * VV::load(s + c));
          for (int64_t c = Cv; c < C; ++c) s[c] *= scale;
          for (int64_t c = 0; c < Cv; c += W) {
            const V z = VV::load(s + c);
            V w{};
            if (ra) w = rwv * VV::exp_nonpos(z + rshv);
            if (ca) w += VV::load(cav.data() + c) * VV::exp_nonpos(z + VV::load(cadj.data() + c));
            VV::store(s + c, w);
          }
          for (int64_t c = Cv; c < C; ++c) {
            const T z = s[c];
            T w = 0;
            if (ra) w = rw * std::exp(z + rsh);
            if (ca) w += cav[c] * std::exp(z + cadj[c]);
            s[c] = w;
          }
          const int64_t dg = i - j0;
          if (exclude_diag && dg >= 0 && dg < C) s[dg] = 0;
        }
        gemm_acc<T>(acc, S, Y, i0, R, j0, C);
      }
    }
  });
}

Tensor softmax_acc(const Tensor& x_, const Tensor& y_, double scale, const std::optional<Tensor>& ra_,
                   const std::optional<Tensor>& rl_, const std::optional<Tensor>& ca_,
                   const std::optional<Tensor>& cl_, bool exclude_diag) {
  check_pair(x_, y_);
  const auto X = x_.detach().contiguous(), Y = y_.detach().contiguous();
  const int64_t n = X.size(0), m = Y.size(0);
  TORCH_CHECK(!exclude_diag || n == m, "softmax_acc: exclude_diag needs n == m");
  const Tensor ra = vec_or_empty(ra_, n, X, "ra"), rl = vec_or_empty(rl_, n, X, "rl");
  const Tensor ca = vec_or_empty(ca_, m, X, "ca"), cl = vec_or_empty(cl_, m, X, "cl");
  TORCH_CHECK(ra.defined() == rl.defined(), "softmax_acc: ra and rl go together");
  TORCH_CHECK(ca.defined() == cl.defined(), "softmax_acc: ca and cl go together");
  auto acc = at::zeros({n, Y.size(1)}, X.options());
  if (n == 0 || m == 0 || (!ra.defined() && !ca.defined())) return acc;
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "softmax_acc", [&] {
    softmax_acc_impl<scalar_t>(X, Y, (scalar_t)scale, ra.defined() ? ra.data_ptr<scalar_t>() : nullptr,
                               rl.defined() ? rl.data_ptr<scalar_t>() : nullptr,
                               ca.defined() ? ca.data_ptr<scalar_t>() : nullptr,
                               cl.defined() ? cl.data_ptr<scalar_t>() : nullptr, exclude_diag, acc);
  });
  return acc;
}

// ---------------------------------------------------------------------------------------------
// SigLIP: z_ij = scale <x_i, y_j> + bias.
//   siglip_rows:  out_i = sum_j softplus(z_ij)
//   siglip_acc:   acc_i = sum_j sigmoid(z_ij) y_j,  rsum_i = sum_j sigmoid(z_ij)
template <typename T>
void siglip_impl(const Tensor& X, const Tensor& Y, T scale, T bias, bool grad, T* rowsum, const Tensor& acc) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const int64_t n = X.size(0), m = Y.size(0);
  const int64_t nblocks = (n + kRB - 1) / kRB;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> buf(kRB * kTC);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * kRB, R = std::min(kRB, n - i0);
      for (int64_t r = 0; r < R; ++r) rowsum[i0 + r] = 0;
      for (int64_t j0 = 0; j0 < m; j0 += kTC) {
        const int64_t C = std::min(kTC, m - j0);
        const int64_t Cv = C / W * W;
        T* S = gemm_tile<T>(X, Y, i0, R, j0, C, buf.data());
        const V sc = VV::set1(scale), bv = VV::set1(bias), zero{}, one = VV::set1(T(1));
        for (int64_t r = 0; r < R; ++r) {
          T* s = S + r * C;
          V acc{};
          T tail = 0;
          for (int64_t c = 0; c < Cv; c += W) {
            const V z = sc * VV::load(s + c) + bv;
            const V az = z < zero ? -z : z;
            const V e = VV::exp_nonpos(-az);  // exp(-|z|), NaN stays NaN
            if (grad) {
              const V q = one / (one + e);
              const V sg = z >= zero ? q : e * q;
              const V sgn = (z != z) ? z : sg;
              acc += sgn;
              VV::store(s + c, sgn);
            } else {
              const V pos = z > zero ? z : zero;
              acc += pos + Log1p<T>::apply(e);
            }
          }
          for (int64_t c = Cv; c < C; ++c) {
            const T z = scale * s[c] + bias;
            if (grad) { const T g = sigmoid_s(z); s[c] = g; tail += g; }
            else tail += softplus_s(z);
          }
          rowsum[i0 + r] += VV::hsum(acc) + tail;
        }
        if (grad) gemm_acc<T>(acc, S, Y, i0, R, j0, C);
      }
    }
  });
}

Tensor siglip_rows(const Tensor& x_, const Tensor& y_, double scale, double bias) {
  check_pair(x_, y_);
  const auto X = x_.detach().contiguous(), Y = y_.detach().contiguous();
  auto out = at::zeros({X.size(0)}, X.options());
  if (X.size(0) == 0 || Y.size(0) == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "siglip_rows", [&] {
    siglip_impl<scalar_t>(X, Y, (scalar_t)scale, (scalar_t)bias, false, out.data_ptr<scalar_t>(), Tensor());
  });
  return out;
}

std::tuple<Tensor, Tensor> siglip_acc(const Tensor& x_, const Tensor& y_, double scale, double bias) {
  check_pair(x_, y_);
  const auto X = x_.detach().contiguous(), Y = y_.detach().contiguous();
  auto rs = at::zeros({X.size(0)}, X.options());
  auto acc = at::zeros({X.size(0), Y.size(1)}, X.options());
  if (X.size(0) == 0 || Y.size(0) == 0) return {acc, rs};
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "siglip_acc", [&] {
    siglip_impl<scalar_t>(X, Y, (scalar_t)scale, (scalar_t)bias, true, rs.data_ptr<scalar_t>(), acc);
  });
  return {acc, rs};
}

// ---------------------------------------------------------------------------------------------
// hard_mine: per row i, the farthest positive (same label, j != i) and nearest negative
// (different label) by squared Euclidean distance, i.e. by |x_j|^2 - 2 <x_i, x_j> (the row's own
// norm is constant along the row). Label masks are formed on the fly from the label vector.
// Ties keep the lowest index. -1 where a row has no positive / negative.
template <typename T>
void hard_mine_impl(const Tensor& X, const int64_t* lab, int64_t* pidx, int64_t* nidx) {
  const int64_t n = X.size(0);
  const auto sq = X.pow(2).sum(1).contiguous();
  const T* nrm = sq.data_ptr<T>();
  const int64_t nblocks = (n + kRB - 1) / kRB;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> buf(kRB * kTC), pbest(kRB), nbest(kRB);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * kRB, R = std::min(kRB, n - i0);
      for (int64_t r = 0; r < R; ++r) {
        pbest[r] = ninf<T>(); nbest[r] = std::numeric_limits<T>::infinity();
        pidx[i0 + r] = -1; nidx[i0 + r] = -1;
      }
      for (int64_t j0 = 0; j0 < n; j0 += kTC) {
        const int64_t C = std::min(kTC, n - j0);
        T* S = gemm_tile<T>(X, X, i0, R, j0, C, buf.data());
        for (int64_t r = 0; r < R; ++r) {
          const int64_t i = i0 + r;
          const int64_t li = lab[i];
          const T* s = S + r * C;
          T pb = pbest[r], nb = nbest[r];
          int64_t pi = pidx[i], ni = nidx[i];
          for (int64_t c = 0; c < C; ++c) {
            const int64_t j = j0 + c;
            const T v = nrm[j] - T(2) * s[c];
            if (lab[j] == li) {
              if (j != i && (pi < 0 || v > pb)) { pb = v; pi = j; }
            } else if (ni < 0 || v < nb) {
              nb = v; ni = j;
            }
          }
          pbest[r] = pb; nbest[r] = nb; pidx[i] = pi; nidx[i] = ni;
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor> hard_mine(const Tensor& x_, const Tensor& labels_) {
  check_2d(x_, "x");
  TORCH_CHECK(labels_.dim() == 1 && labels_.size(0) == x_.size(0), "hard_mine: labels must have shape (n)");
  TORCH_CHECK(labels_.scalar_type() == at::kLong, "hard_mine: labels must be int64");
  const auto X = x_.detach().contiguous();
  const auto lab = labels_.contiguous();
  const int64_t n = X.size(0);
  auto pi = at::full({n}, -1, lab.options()), ni = at::full({n}, -1, lab.options());
  if (n == 0) return {pi, ni};
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_mine", [&] {
    hard_mine_impl<scalar_t>(X, lab.data_ptr<int64_t>(), pi.data_ptr<int64_t>(), ni.data_ptr<int64_t>());
  });
  return {pi, ni};
}

// ---------------------------------------------------------------------------------------------
// topk_dot: exact top-k keys by inner product for each query, streaming over key tiles with a
// per-row sorted buffer (descending; ties keep the lower key index). A vectorized threshold test
// against the row's current k-th value skips almost every score once the buffer has filled.
template <typename T>
void topk_impl(const Tensor& Q, const Tensor& K, int64_t k, T* vals, int64_t* idx) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const int64_t n = Q.size(0), m = K.size(0);
  constexpr int64_t RB = 256;
  const int64_t nblocks = (n + RB - 1) / RB;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> buf(RB * kTC);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * RB, R = std::min(RB, n - i0);
      for (int64_t r = 0; r < R * k; ++r) { vals[i0 * k + r] = ninf<T>(); idx[i0 * k + r] = -1; }
      for (int64_t j0 = 0; j0 < m; j0 += kTC) {
        const int64_t C = std::min(kTC, m - j0);
        const int64_t Cv = C / W * W;
        const T* S = gemm_tile<T>(Q, K, i0, R, j0, C, buf.data());
        for (int64_t r = 0; r < R; ++r) {
          T* bv = vals + (i0 + r) * k;
          int64_t* bi = idx + (i0 + r) * k;
          const T* s = S + r * C;
          auto insert = [&](int64_t c) {
            const T v = s[c];
            // filled buffer: v must beat the k-th value strictly (equal keeps the earlier key)
            if (bi[k - 1] >= 0 && !(v > bv[k - 1])) return;
            // NaN and -inf scores are never selected: a returned index always names a key
            // that scored above -inf, and the slots left over keep (-inf, -1)
            if (!(v > ninf<T>())) return;
            int64_t p = k - 1;
            while (p > 0 && (bi[p - 1] < 0 || v > bv[p - 1])) { bv[p] = bv[p - 1]; bi[p] = bi[p - 1]; --p; }
            bv[p] = v; bi[p] = j0 + c;
          };
          // block maxima with NaN scores read as -inf: a NaN must not hide a larger score in
          // its block (NaN scores are never selected anyway)
          const V ninfv = VV::set1(ninf<T>());
          auto clean = [&](V x) { return x == x ? x : ninfv; };
          if (bi[k - 1] >= 0 && Cv > 0) {
            // once the buffer is full most tile rows hold nothing above the k-th value: one
            // vectorized max decides that for the whole row
            V mv = clean(VV::load(s));
            for (int64_t c = W; c < Cv; c += W) mv = VV::vmax(mv, clean(VV::load(s + c)));
            if (!(VV::hmax(mv) > bv[k - 1])) {
              for (int64_t c = Cv; c < C; ++c) insert(c);
              continue;
            }
          }
          for (int64_t c = 0; c < Cv; c += W) {
            const T thr = bi[k - 1] >= 0 ? bv[k - 1] : ninf<T>();
            if (bi[k - 1] >= 0 && !(VV::hmax(clean(VV::load(s + c))) > thr)) continue;
            for (int l = 0; l < W; ++l) insert(c + l);
          }
          for (int64_t c = Cv; c < C; ++c) insert(c);
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor> topk_dot(const Tensor& q_, const Tensor& k_, int64_t k) {
  check_pair(q_, k_);
  TORCH_CHECK(k >= 1 && k <= k_.size(0), "topk_dot: k must be in [1, number of keys]");
  const auto Q = q_.detach().contiguous(), K = k_.detach().contiguous();
  const int64_t n = Q.size(0);
  auto vals = at::empty({n, k}, Q.options());
  auto idx = at::empty({n, k}, Q.options().dtype(at::kLong));
  if (n == 0) return {vals, idx};
  AT_DISPATCH_FLOATING_TYPES(Q.scalar_type(), "topk_dot", [&] {
    topk_impl<scalar_t>(Q, K, k, vals.data_ptr<scalar_t>(), idx.data_ptr<int64_t>());
  });
  return {vals, idx};
}

}  // namespace
}  // namespace hotpath

TORCH_LIBRARY_IMPL(hotpath, CPU, m) {
  m.impl("contrastive_lse_sweep", &hotpath::lse_sweep);
  m.impl("contrastive_softmax_acc", &hotpath::softmax_acc);
  m.impl("contrastive_siglip_rows", &hotpath::siglip_rows);
  m.impl("contrastive_siglip_acc", &hotpath::siglip_acc);
  m.impl("contrastive_hard_mine", &hotpath::hard_mine);
  m.impl("contrastive_topk", &hotpath::topk_dot);
}
