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

// out_j = u + h_j - c_j * ie; returns max_j out_j (-inf for m = 0).
template <typename T>
T shifted_row(const T* c, const T* h, T u, T ie, int64_t m, T* out) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const V iev = VV::set1(ie), uv = VV::set1(u);
  V mv = VV::set1(ninf<T>());
  int64_t j = 0;
  for (; j + W <= m; j += W) {
    const V s = uv + VV::load(h + j) - VV::load(c + j) * iev;
    VV::store(out + j, s);
    mv = VV::vmax(mv, s);
  }
  T mx = VV::hmax(mv);
  for (; j < m; ++j) {
    out[j] = u + h[j] - c[j] * ie;
    mx = out[j] > mx ? out[j] : mx;
  }
  return mx;
}

// x_j <- exp(x_j - mx), for x_j <= mx
template <typename T>
void exp_shifted(T* x, T mx, int64_t m) {
  using VV = Vec<T>;
  const typename VV::V mv = VV::set1(mx);
  int64_t j = 0;
  for (; j + VV::W <= m; j += VV::W) VV::store(x + j, VV::exp_nonpos(VV::load(x + j) - mv));
  for (; j < m; ++j) x[j] = std::exp(x[j] - mx);
}

// LSE_j[h_j - c_j * ie] over one row of length m; buf holds m scratch values.
template <typename T>
T row_lse(const T* c, const T* h, int64_t m, T ie, T* buf) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const T mx = shifted_row<T>(c, h, T(0), ie, m, buf);
  if (mx == ninf<T>()) {
    for (int64_t k = 0; k < m; ++k)
      if (buf[k] != buf[k]) return std::numeric_limits<T>::quiet_NaN();
    return ninf<T>();
  }
  const V mxv = VV::set1(mx);
  V acc{};
  int64_t j = 0;
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

// ---------------------------------------------------------------------------------------------
// Fused small-problem loop: stabilized kernel-domain softmins.
//
// A softmin over the inner index k of an (outer o) x (inner k) cost,
//   out_o = -eps * LSE_k[ wlog_k + (pot_k - C_ok) / eps ],
// is exact for any shift. Side keeps K_ko = exp(wlog_k + (base_k - C_ok)/eps - M_o), with base
// the potential at the last rebuild and M_o the row max at that time (so K <= 1: no overflow;
// entries flushed to 0 are below e^-87 of the row max). Then
//   out_o = -eps * (M_o + tau + log sum_k K_ko * exp((pot_k - base_k)/eps - tau))
// costs one multiply-add per entry and one exp / log per vector element, instead of one exp per
// entry. K is rebuilt (one exp per entry, i.e. one log-domain pass) whenever eps changes or a
// potential moved by more than tau * eps since the last rebuild (POT's sinkhorn_stabilized
// absorption): with |pot - base| <= tau eps the weights lie in [e^-2tau, 1], so the sum is a
// normal number at least e^-2tau (the arg-max entry is 1) and the terms lost to underflow are
// below e^-(87 - 2 tau) of it. Layout: inner-major, K[k * ld + o], ld = outer rounded up to the
// vector width, so both the rebuild and the sums are vertical vector loops (no horizontal max /
// sum per row) and the row and column softmins of one cost use the same code on C^T and C.
template <typename T> struct Tau;
template <> struct Tau<float> { static constexpr float v = 30.0f; };
template <> struct Tau<double> { static constexpr double v = 100.0; };

// natural log of positive normal lanes (others are fixed up by the caller)
inline hotpath::simd::vf32 vlog(hotpath::simd::vf32 x) {
  using I = hotpath::simd::vi32;
  const I xi = (I)x;
  I e = ((xi >> 23) & 0xff) - 126;
  hotpath::simd::vf32 m = (hotpath::simd::vf32)((xi & 0x007fffff) | 0x3f000000);  // x = m 2^e, m in [0.5, 1)
  const I small = m < 0.70710678118654752f;              // -1 where true
  e = e + small;
  m = m + (hotpath::simd::vf32)((I)m & small) - 1.0f;                 // 2m - 1 or m - 1: in [-0.293, 0.414]
  const hotpath::simd::vf32 z = m * m;
  hotpath::simd::vf32 y = m * 7.0376836292E-2f - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  const hotpath::simd::vf32 ef = __builtin_convertvector(e, hotpath::simd::vf32);
  y = y + ef * -2.12194440e-4f - 0.5f * z;
  return m + y + ef * 0.693359375f;
}
inline hotpath::simd::vf64 vlog(hotpath::simd::vf64 x) {  // float64: the accuracy path, libm lane by lane
  hotpath::simd::vf64 r;
  for (int i = 0; i < 8; ++i) r[i] = std::log(x[i]);
  return r;
}

template <typename T>
struct Side {
  using VV = Vec<T>;
  using V = typename VV::V;
  static constexpr int W = VV::W;
  int64_t no = 0, ni = 0, ld = 0, ldi = 0;
  std::vector<T> Ct, K, M, base, d, acc, tmp;
  std::vector<char> zr;  // K row k is all zero (wlog_k + base_k / eps was -inf)
  const T* wlog = nullptr;
  T eps_built = 0;
  bool built = false;

  // cost(o, k) = C[o * so + k * sk]; copied once into the inner-major padded layout
  void init(const T* C, int64_t no_, int64_t ni_, int64_t so, int64_t sk, const T* wlog_) {
    no = no_, ni = ni_, wlog = wlog_;
    ld = (no + W - 1) / W * W;
    ldi = (ni + W - 1) / W * W;
    Ct.assign(ni * ld, T(0));
    K.resize(ni * ld);
    M.resize(ld);
    acc.resize(ld);
    tmp.resize(ld);
    base.resize(ni);
    d.assign(ldi, ninf<T>());
    zr.resize(ni);
    for (int64_t k = 0; k < ni; ++k)
      for (int64_t o = 0; o < no; ++o) Ct[k * ld + o] = C[o * so + k * sk];
    built = false;
  }

  void build(const T* pot, T e) {
    const T ie = T(1) / e;
    const V iev = VV::set1(ie);
    std::copy(pot, pot + ni, base.begin());
    eps_built = e;
    built = true;
    std::fill(M.begin(), M.end(), ninf<T>());
    for (int64_t k = 0; k < ni; ++k) {
      const T hk = wlog[k] + pot[k] * ie;
      zr[k] = hk == ninf<T>();
      if (zr[k]) continue;
      const V hv = VV::set1(hk);
      const T* c = Ct.data() + k * ld;
      for (int64_t o = 0; o < ld; o += W) VV::store(&M[o], VV::vmax(VV::load(&M[o]), hv - VV::load(c + o) * iev));
    }
    // outputs with no finite score: shift 0, their sums are 0 and give +inf (as the LSE);
    // NaN and +inf maxima stay and give NaN, as the LSE does
    for (int64_t o = 0; o < ld; ++o) if (M[o] == ninf<T>()) M[o] = 0;
    for (int64_t k = 0; k < ni; ++k) {
      T* kr = K.data() + k * ld;
      if (zr[k]) { std::fill(kr, kr + ld, T(0)); continue; }
      const V hv = VV::set1(wlog[k] + pot[k] * ie);
      const T* c = Ct.data() + k * ld;
      for (int64_t o = 0; o < ld; o += W)
        VV::store(kr + o, VV::exp_nonpos(hv - VV::load(c + o) * iev - VV::load(&M[o])));
    }
  }

  // out_o = scale * (-eps) * LSE_k[wlog_k + (pot_k - C_ok)/eps], o < no
  void softmin(const T* pot, T e, T scale, T* out) {
    const T ie = T(1) / e, tau = Tau<T>::v;
    bool rebuild = !built || e != eps_built;
    if (!rebuild) {
      for (int64_t k = 0; k < ni; ++k) {
        if (zr[k]) { rebuild |= pot[k] != base[k] && wlog[k] != ninf<T>(); continue; }
        const T dk = (pot[k] - base[k]) * ie;
        if (!(std::abs(dk) <= tau)) { rebuild = true; break; }  // NaN rebuilds too
        d[k] = dk - tau;
      }
    }
    if (rebuild) {
      build(pot, e);
      for (int64_t k = 0; k < ni; ++k) d[k] = zr[k] ? ninf<T>() : (pot[k] - base[k]) * ie - tau;
    } else {
      for (int64_t k = 0; k < ni; ++k) if (zr[k]) d[k] = ninf<T>();
    }
    for (int64_t k = 0; k < ldi; k += W) VV::store(&d[k], VV::exp_nonpos(VV::load(&d[k])));  // weights, -inf -> 0
    const T* w = d.data();
    int64_t o = 0;
    for (; o + 4 * W <= ld; o += 4 * W) {
      V a0{}, a1{}, a2{}, a3{};
      const T* kr = K.data() + o;
      for (int64_t k = 0; k < ni; ++k, kr += ld) {
        const V wk = VV::set1(w[k]);
        a0 += VV::load(kr) * wk;
        a1 += VV::load(kr + W) * wk;
        a2 += VV::load(kr + 2 * W) * wk;
        a3 += VV::load(kr + 3 * W) * wk;
      }
      VV::store(&acc[o], a0);
      VV::store(&acc[o + W], a1);
      VV::store(&acc[o + 2 * W], a2);
      VV::store(&acc[o + 3 * W], a3);
    }
    for (; o < ld; o += W) {
      V a0{};
      const T* kr = K.data() + o;
      for (int64_t k = 0; k < ni; ++k, kr += ld) a0 += VV::load(kr) * VV::set1(w[k]);
      VV::store(&acc[o], a0);
    }
    const T s = -e * scale;
    const V tv = VV::set1(tau);
    for (o = 0; o < ld; o += W) VV::store(&tmp[o], (VV::load(&M[o]) + tv + vlog(VV::load(&acc[o]))) * s);
    for (o = 0; o < no; ++o) {
      const T v = acc[o];
      out[o] = (v >= std::numeric_limits<T>::min() && v <= std::numeric_limits<T>::max())
                   ? tmp[o] : s * (M[o] + tau + std::log(v));  // 0, inf, NaN: libm semantics
    }
  }
};

// POT's sinkhorn_log loop on one (n, m) cost, in a stabilized kernel domain: one pass over the
// cost per iteration instead of two log-domain passes with one exp per entry each.
//
// Both softmins read one row-major kernel K_ij = exp(beta_j - C_ij/eps - R_i), with beta_j =
// b_log_j + g_j/eps at the last rebuild (b_log of zero-weight columns taken as 0, so their
// columns still exist for the column softmin) and R_i the row max (K <= 1, each row has a 1).
//   row softmin:  LSE_j[k_j - C_ij/eps] = R_i + tau + log sum_j K_ij w_j,
//                 w_j = exp(k_j - beta_j - tau) in [e^-2tau, 1] (0 for zero-weight columns)
//   column:       LSE_i[h_i - C_ij/eps] = Z - beta_j + log sum_i K_ij exp(R_i + h_i - Z)
// h_i = a_log_i + f_i/eps needs no absorption: R_i + h_i stays near a_log_i, as R_i tracks
// -f_i/eps. The column sums take each row's new f_i while its block of K is still in cache, so
// one read of K gives the f update and the next g (POT's alternating order). K is rebuilt (one
// exp per entry) when some |k_j - beta_j| passes tau. A row or column sum below Tiny (dominant
// entries flushed, zero, or non-finite) is recomputed exactly in the log domain, which also
// keeps the log-domain semantics of -inf and NaN.
template <typename T> struct Tiny;
template <> struct Tiny<float> { static constexpr float v = 1e-20f; };
template <> struct Tiny<double> { static constexpr double v = 1e-200; };

template <typename T>
inline bool usable_sum(T s) { return s >= Tiny<T>::v && s <= std::numeric_limits<T>::max(); }

template <typename T>
void alternating_one(const T* C, int64_t n, int64_t m, const T* ab, const T* bb, T e, T dx, T dy,
                     int64_t max_iter, double tol, int64_t check_every, T* f, T* g, int64_t* itp, T* ep) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  constexpr int64_t RB = 16;  // rows per block (a multiple of W): their K rows stay in cache between the two sums
  const T ie = T(1) / e, tau = Tau<T>::v;
  const int64_t mp = (m + W - 1) / W * W;
  std::vector<T> h(n), k(m), beta(mp, T(0)), bt(m), w(mp, T(0)), L(m), lv(mp), Rm(n), K(n * m);
  for (int64_t j = 0; j < m; ++j) bt[j] = bb[j] == ninf<T>() ? T(0) : bb[j];
  for (int64_t i = 0; i < n; ++i) h[i] = ab[i] + f[i] * ie;
  std::fill(g, g + m, T(0));

  auto rebuild = [&] {
    for (int64_t j = 0; j < m; ++j) beta[j] = bt[j] + g[j] * ie;
    at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* kr = K.data() + i * m;
        T mx = shifted_row<T>(C + i * m, beta.data(), T(0), ie, m, kr);
        if (!(mx > ninf<T>()) || mx == std::numeric_limits<T>::infinity()) mx = 0;  // its sums fall back
        Rm[i] = mx;
        exp_shifted<T>(kr, mx, m);
      }
    });
  };

  // Column sums sum_i K_ij exp(R_i + h_i - Z) into L (as the LSE), one accumulator and shift per
  // chunk of rows, merged in a fixed order; with rows, each row's f_i (and h_i) is updated first.
  const int64_t nchunk = std::max<int64_t>(
      1, std::min<int64_t>(at::in_parallel_region() ? 1 : at::get_num_threads(), (n + RB - 1) / RB));
  std::vector<T> acc(nchunk * mp), zsh(nchunk);
  // Rows alternate direction from sweep to sweep: the K rows a thread read last are still in its
  // L2 when the next sweep starts on them (each thread always owns the same chunk).
  bool rev = false;
  auto sweep = [&](bool rows) {
    rev = !rev;
    std::fill(acc.begin(), acc.end(), T(0));
    at::parallel_for(0, nchunk, 1, [&](int64_t c0, int64_t c1) {
      std::vector<T> buf(rows ? m : 0);
      for (int64_t c = c0; c < c1; ++c) {
        T* a = acc.data() + c * mp;
        T Z = ninf<T>();
        const int64_t r0 = n * c / nchunk, r1 = n * (c + 1) / nchunk, nblk = (r1 - r0 + RB - 1) / RB;
        for (int64_t bi = 0; bi < nblk; ++bi) {
          const int64_t i0 = r0 + (rev ? nblk - 1 - bi : bi) * RB;
          const int64_t nr = std::min(RB, r1 - i0);
          const T* kb = K.data() + i0 * m;
          alignas(64) T sums[RB], lsum[RB], zl[RB], z[RB];
          if (rows) {  // the rows' new f_i: logs taken a vector of rows at a time
            for (int64_t r = 0; r < RB; ++r) sums[r] = r < nr ? hotpath::simd::dot<T>(kb + r * m, w.data(), m) : T(1);
            for (int64_t r = 0; r < RB; r += W) VV::store(lsum + r, vlog(VV::load(sums + r)));
            for (int64_t r = 0; r < nr; ++r) {
              const int64_t i = i0 + r;
              const T lse = usable_sum(sums[r]) ? Rm[i] + tau + lsum[r]
                                                : row_lse<T>(C + i * m, k.data(), m, ie, buf.data());
              f[i] = -e * dx * lse;
              h[i] = ab[i] + f[i] * ie;
            }
          }
          T zb = ninf<T>();
          for (int64_t r = 0; r < RB; ++r) {
            zl[r] = r < nr ? Rm[i0 + r] + h[i0 + r] : ninf<T>();
            if (zl[r] > zb && zl[r] < std::numeric_limits<T>::infinity()) zb = zl[r];
          }
          if (zb > Z) {  // a larger shift: rescale what this chunk has summed so far
            if (Z > ninf<T>()) {
              const V sc = VV::set1(std::exp(Z - zb));
              for (int64_t j = 0; j < mp; j += W) VV::store(a + j, VV::load(a + j) * sc);
            }
            Z = zb;
          }
          const V zv = VV::set1(Z);
          for (int64_t r = 0; r < RB; r += W) VV::store(z + r, VV::exp_nonpos(VV::load(zl + r) - zv));
          for (int64_t r = 0; r < nr; ++r) {  // zero-weight rows give 0 (also while Z is -inf); NaN, +inf: libm
            if (zl[r] == ninf<T>()) z[r] = 0;
            else if (!(zl[r] - Z <= 0)) z[r] = std::exp(zl[r] - Z);
          }
          int64_t j = 0;
          for (; j + W <= m; j += W) {
            V s = VV::load(a + j);
            for (int64_t r = 0; r < nr; ++r) s += VV::load(kb + r * m + j) * VV::set1(z[r]);
            VV::store(a + j, s);
          }
          for (; j < m; ++j)
            for (int64_t r = 0; r < nr; ++r) a[j] += kb[r * m + j] * z[r];
        }
        zsh[c] = Z;
      }
    });
    T Zg = ninf<T>();
    for (int64_t c = 0; c < nchunk; ++c) Zg = zsh[c] > Zg ? zsh[c] : Zg;
    for (int64_t c = 0; c < nchunk; ++c) {
      const T sc = zsh[c] > ninf<T>() ? std::exp(zsh[c] - Zg) : T(1);  // a -inf chunk summed zeros
      const T* ac = acc.data() + c * mp;
      for (int64_t j = 0; j < m; ++j) acc[j] = (c == 0 ? T(0) : acc[j]) + ac[j] * sc;
    }
    const V zv = VV::set1(Zg);
    for (int64_t j = 0; j + W <= mp; j += W)  // padding lanes of acc hold 0: log gives -inf there
      VV::store(&lv[j], zv - VV::load(&beta[j]) + vlog(VV::load(&acc[j])));
    T mx1, sm1;
    for (int64_t j = 0; j < m; ++j) {
      if (usable_sum(acc[j])) L[j] = lv[j];
      else col_lse<T>(C, n, m, h.data(), ie, j, j + 1, &L[j], &mx1, &sm1);
    }
  };
  // g <- dy * softmin_cols from L; K is rebuilt once some potential drifted past tau
  auto update_g = [&] {
    bool stale = false;
    for (int64_t j = 0; j < m; ++j) {
      g[j] = -e * dy * L[j];
      stale |= std::abs(bt[j] + g[j] * ie - beta[j]) > tau;
    }
    if (stale) rebuild();
  };

  rebuild();  // at g = 0
  sweep(false);
  update_g();
  for (int64_t it = 0; it < max_iter; ++it) {
    for (int64_t j = 0; j < m; ++j) {
      k[j] = bb[j] + g[j] * ie;
      w[j] = bb[j] == ninf<T>() ? ninf<T>() : bt[j] + g[j] * ie - beta[j] - tau;  // <= 0 unless NaN
    }
    for (int64_t j = 0; j + W <= mp; j += W) {
      const V d = VV::load(&w[j]);
      VV::store(&w[j], VV::exp_nonpos(VV::vmax(d, VV::set1(T(-200)))));  // exp_nonpos's domain
    }
    for (int64_t j = 0; j < m; ++j) {  // NaN weights stay NaN; -inf (zero-weight columns) gives 0
      const T d = bb[j] == ninf<T>() ? ninf<T>() : bt[j] + g[j] * ie - beta[j] - tau;
      if (!(d >= T(-200))) w[j] = std::exp(d);
    }
    sweep(true);
    *itp = it + 1;
    if (it % check_every == 0) {
      // column marginal sum_i P_ij = b_j exp(g_j/eps + LSE_i[a_log_i + (f_i - C_ij)/eps])
      double s = 0;
      for (int64_t j = 0; j < m; ++j) {
        const double mj = std::exp((double)bb[j] + (double)g[j] / (double)e + (double)L[j]);
        const double dj = (bb[j] == ninf<T>() ? 0.0 : mj) - std::exp((double)bb[j]);
        s += dj * dj;
      }
      *ep = (T)std::sqrt(s);
      if (!(s >= 0) || std::sqrt(s) < tol) break;  // converged, or NaN: stop, never hang
    }
    if (it + 1 == max_iter) break;  // POT's last update is f's
    update_g();
  }
}

// POT's sinkhorn_log loop, batched, in potentials: g = dy * softmin_cols(a_log + f/eps),
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
    const T *Cp = C.data_ptr<T>(), *al = a_log.data_ptr<T>(), *bl = b_log.data_ptr<T>();
    T *fp = f.data_ptr<T>(), *gp = g.data_ptr<T>(), *ep = err.data_ptr<T>();
    int64_t* itp = n_iter.data_ptr<int64_t>();
    const T e = (T)eps, dx = damping<T>(eps, rho_x), dy = damping<T>(eps, rho_y);
    for_each_problem(B, [&](int64_t b) {
      alternating_one<T>(Cp + b * n * m, n, m, al + b * n, bl + b * m, e, dx, dy, max_iter, tol, check_every,
                         fp + b * n, gp + b * m, itp + b, ep + b);
    });
  });
  return {f, g, n_iter, err};
}

// out_j = (f + g_j - c_j) * ie + (al + bl_j); returns max_j out_j. The potentials are summed
// with the cost before scaling: at |C| / eps beyond the dtype's resolution, f / eps + g / eps -
// C / eps cancels to rounding noise far above 1 (exp of it: 0 or inf), (f + g - C) / eps does not.
template <typename T>
T plan_exponents(const T* c, const T* g, const T* bl, T f, T al, T ie, int64_t m, T* out) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const V iev = VV::set1(ie), fv = VV::set1(f), av = VV::set1(al);
  V mv = VV::set1(ninf<T>());
  int64_t j = 0;
  for (; j + W <= m; j += W) {
    const V s = (fv + VV::load(g + j) - VV::load(c + j)) * iev + (av + VV::load(bl + j));
    VV::store(out + j, s);
    mv = VV::vmax(mv, s);
  }
  T mx = VV::hmax(mv);
  for (; j < m; ++j) {
    out[j] = (f + g[j] - c[j]) * ie + (al + bl[j]);
    mx = out[j] > mx ? out[j] : mx;
  }
  return mx;
}

// The entropic plan P_ij = exp(a_log_i + b_log_j + (f_i + g_j - C_ij)/eps) of potentials from
// the loops above and its primal value <P, C> (POT's sinkhorn2), in one pass over C; P itself is
// only written when asked for (it is the gradient wrt C). Row sums in double, summed per
// problem in row order: deterministic for any thread count.
std::tuple<at::Tensor, at::Tensor> ot_dense_plan(at::Tensor C, at::Tensor a_log, at::Tensor b_log, at::Tensor f,
                                                 at::Tensor g, double eps, bool with_plan) {
  check_cost(C);
  const int64_t B = C.size(0), n = C.size(1), m = C.size(2);
  check_vec(a_log, C, n, "a_log");
  check_vec(b_log, C, m, "b_log");
  check_vec(f, C, n, "f");
  check_vec(g, C, m, "g");
  TORCH_CHECK(eps > 0, "eps must be > 0");
  at::Tensor P = with_plan ? at::empty_like(C) : at::empty({0}, C.options());
  at::Tensor rows = at::empty({B * n}, C.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "ot_dense_plan", [&] {
    using T = scalar_t;
    using VV = Vec<T>;
    using V = typename VV::V;
    constexpr int W = VV::W;
    const T *Cp = C.data_ptr<T>(), *al = a_log.data_ptr<T>(), *bl = b_log.data_ptr<T>();
    const T *fp = f.data_ptr<T>(), *gp = g.data_ptr<T>();
    T* Pp = with_plan ? P.data_ptr<T>() : nullptr;
    double* rp = rows.data_ptr<double>();
    const T ie = T(1 / eps);
    at::parallel_for(0, B * n, std::max<int64_t>(1, 16384 / std::max<int64_t>(m, 1)), [&](int64_t r0, int64_t r1) {
      std::vector<T> buf(m);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / n;
        const T* c = Cp + r * m;
        T* p = Pp ? Pp + r * m : buf.data();
        const T mx = plan_exponents<T>(c, gp + b * m, bl + b * m, fp[r], al[r], ie, m, p);
        double s = 0;
        if (mx > ninf<T>() && mx < std::numeric_limits<T>::infinity()) {
          const T em = std::exp(mx);
          const V mv = VV::set1(mx), emv = VV::set1(em);
          V acc{};
          int64_t j = 0;
          for (; j + W <= m; j += W) {
            const V pj = VV::exp_nonpos(VV::load(p + j) - mv) * emv;
            VV::store(p + j, pj);
            acc += pj * VV::load(c + j);
          }
          s = VV::hsum(acc);
          for (; j < m; ++j) { p[j] = std::exp(p[j] - mx) * em; s += (double)p[j] * c[j]; }
        } else {  // all -inf (a zero-weight row), or inf / NaN: libm semantics entry by entry
          for (int64_t j = 0; j < m; ++j) {
            p[j] = std::exp(p[j]);
            if (p[j] != 0) s += (double)p[j] * c[j];
          }
        }
        rp[r] = s;
      }
    });
  });
  at::Tensor primal = rows.view({B, n}).sum(1).to(C.scalar_type());
  return {primal, P};
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
    // parallel over the batch; each problem runs serially on its own kernel-domain state
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      Side<T> rows, cols, selfx, selfy;  // f <- g over C, g <- f over C^T, f_aa over Cxx, g_bb over Cyy
      std::vector<T> zx(n, T(0)), zy(m, T(0)), ft(n), gt(m), fat(debias ? n : 0), gbt(debias ? m : 0);
      for (int64_t b = b0; b < b1; ++b) {
        const T *C = Cp + b * n * m, *ab = al + b * n, *bb = bl + b * m;
        T *f = F + b * n, *g = G + b * m;
        T *fa = debias ? FA + b * n : nullptr, *gb = debias ? GB + b * m : nullptr;
        rows.init(C, n, m, m, 1, bb);
        cols.init(C, m, n, 1, m, ab);
        if (debias) {
          selfx.init(Cxp + b * n * n, n, n, n, 1, ab);
          selfy.init(Cyp + b * m * m, m, m, m, 1, bb);
        }
        T e = (T)el[0];
        T dx = damping<T>(el[0], rho_x), dy = damping<T>(el[0], rho_y);
        cols.softmin(zx.data(), e, dy, g);
        rows.softmin(zy.data(), e, dx, f);
        if (debias) {
          selfx.softmin(zx.data(), e, dx, fa);
          selfy.softmin(zy.data(), e, dy, gb);
        }
        for (int64_t k = 0; k < K; ++k) {
          e = (T)el[k];
          dx = damping<T>(el[k], rho_x);
          dy = damping<T>(el[k], rho_y);
          rows.softmin(g, e, dx, ft.data());
          cols.softmin(f, e, dy, gt.data());
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
            selfx.softmin(fa, e, dx, fat.data());
            selfy.softmin(gb, e, dy, gbt.data());
            for (int64_t i = 0; i < n; ++i) fa[i] = T(0.5) * (fa[i] + fat[i]);
            for (int64_t j = 0; j < m; ++j) gb[j] = T(0.5) * (gb[j] + gbt[j]);
          }
          itp[b] = k + 1;
          if (tol > 0 && (k + 1) % check_every == 0 && !(change >= (T)tol)) break;  // NaN stops too
        }
      }
    });
  });
  return {f_ba, g_ab, f_aa, g_bb, n_iter};
}

// C[b, i, j] = |x_i - y_j|^2 / 2 (p = 2) or |x_i - y_j| (p = 1), from differences (as the
// reference): the costs of the fused small-problem loop, built in one parallel pass instead of
// a (B, n, m, d) temporary.
at::Tensor ot_cost_matrix(at::Tensor x, at::Tensor y, int64_t p) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3 && x.size(0) == y.size(0) && x.size(2) == y.size(2),
              "x, y must be (B, n, d) and (B, m, d)");
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "x, y must be float32 or float64 of one dtype");
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), "x, y must be CPU tensors");
  TORCH_CHECK(p == 1 || p == 2, "p must be 1 or 2");
  x = x.contiguous();
  y = y.contiguous();
  const int64_t B = x.size(0), n = x.size(1), m = y.size(1), d = x.size(2);
  at::Tensor C = at::empty({B, n, m}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_cost_matrix", [&] {
    using T = scalar_t;
    const T *xp = x.data_ptr<T>(), *yp = y.data_ptr<T>();
    T* cp = C.data_ptr<T>();
    at::parallel_for(0, B * n, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, m * d)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / n;
        const T* xi = xp + r * d;
        const T* yb = yp + b * m * d;
        T* c = cp + r * m;
        for (int64_t j = 0; j < m; ++j) {
          T s = 0;
          for (int64_t k = 0; k < d; ++k) { const T t = xi[k] - yb[j * d + k]; s += t * t; }
          c[j] = p == 2 ? s / 2 : std::sqrt(s);
        }
      }
    });
  });
  return C;
}

}  // namespace

TORCH_LIBRARY_IMPL(hotpath, CPU, m) {
  m.impl("ot_cost_matrix", &ot_cost_matrix);
  m.impl("ot_softmin_dense", &ot_softmin_dense);
  m.impl("ot_sinkhorn_alternating", &ot_sinkhorn_alternating);
  m.impl("ot_dense_plan", &ot_dense_plan);
  m.impl("ot_sinkhorn_symmetric", &ot_sinkhorn_symmetric);
}
