// hotpath_cpu::wasserstein1d_fwd, sliced_wasserstein_fwd, histogram_w1_fwd.
//
// One 1-D problem = two weighted empirical measures on the line. W_p^p is the integral over
// t in [0, 1] of |Qu(t) - Qv(t)|^p, Qu / Qv the quantile functions: after sorting both sides, a
// single merge walk over the cumulative weights visits every segment where (Qu, Qv) is constant.
// The same walk yields the gradients (fused forward + backward: the ops return them when asked,
// the autograd wrappers only scale them by the incoming gradient):
//   d/du_i   = sum over segments with u index i of  seg * c'(u_i - v_j)
//   d/dFu(i) = c(u_i, v_j) - c(u_{i+1}, v_j)     (breakpoint i of the u CDF, j the v index there)
//   d/dw_k   = sum_{i >= k} d/dFu(i), then through the normalization w / sum(w).
// The last breakpoint of each side is exactly 1 (total mass), so no rounding residue is left.
// Uniform weights use integer breakpoints (i+1)/n vs (j+1)/m: exact ties, no rounding at all;
// n == m uniform is the sorted-difference fast path.
// Problems run in parallel with at::parallel_for (deterministic: no shared accumulators).
// Sorting is an LSD radix sort on the order-preserving integer image of the floats, with int32
// indices (stable, so ties keep their input order).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "simd.h"

namespace hotpath {
namespace {

using at::Tensor;

// ---------------------------------------------------------------- radix sort with indices
template <typename T> struct KeyOf;
template <> struct KeyOf<float> { using K = uint32_t; };
template <> struct KeyOf<double> { using K = uint64_t; };

template <typename T, typename K = typename KeyOf<T>::K>
inline K to_key(T x) {
  K b;
  std::memcpy(&b, &x, sizeof b);
  constexpr K sign = K(1) << (sizeof(K) * 8 - 1);
  return (b & sign) ? ~b : (b | sign);  // negative: reverse order; positive: above all negatives
}

template <typename T, typename K = typename KeyOf<T>::K>
inline T from_key(K k) {
  constexpr K sign = K(1) << (sizeof(K) * 8 - 1);
  K b = (k & sign) ? (k ^ sign) : ~k;
  T x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

template <typename T>
struct SortBuf {
  using K = typename KeyOf<T>::K;
  std::vector<K> k0, k1;
  std::vector<int32_t> i0, i1;
  std::vector<uint64_t> p0, p1;  // float32: key and index packed in one 64-bit item
};

// Insertion sort of (key, index) pairs: cheaper than histogram passes for tiny problems.
template <typename K>
void insertion_sort(K* k0, int32_t* i0, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    K k = k0[i];
    int32_t id = i0[i];
    int64_t j = i - 1;
    while (j >= 0 && k0[j] > k) {
      k0[j + 1] = k0[j];
      i0[j + 1] = i0[j];
      --j;
    }
    k0[j + 1] = k;
    i0[j + 1] = id;
  }
}

// LSD radix sort (P digits of BITS bits) of items whose sort key sits in bits [lo_bit, ...);
// passes whose digit is the same for every item are skipped. Returns the buffer holding the result.
template <typename I, int P, int BITS>
I* radix_items(I* a, I* b, int64_t n, int lo_bit) {
  constexpr int R = 1 << BITS;
  std::array<uint32_t, R * P> hist{};
  for (int64_t i = 0; i < n; ++i) {
    const I k = a[i] >> lo_bit;
    for (int p = 0; p < P; ++p) hist[p * R + ((k >> (BITS * p)) & (R - 1))]++;
  }
  I* src = a;
  I* dst = b;
  for (int p = 0; p < P; ++p) {
    uint32_t* h = hist.data() + p * R;
    const int sh = lo_bit + BITS * p;
    if (h[(src[0] >> sh) & (R - 1)] == (uint32_t)n) continue;
    uint32_t off = 0;
    for (int d = 0; d < R; ++d) {
      uint32_t c = h[d];
      h[d] = off;
      off += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const I k = src[i];
      dst[h[(k >> sh) & (R - 1)]++] = k;
    }
    std::swap(src, dst);
  }
  return src;
}

// sorted[k] = x[idx[k]], ascending, stable (LSD radix on the order-preserving integer image).
template <typename T>
void argsort(const T* x, int64_t stride, int64_t n, T* sorted, int32_t* idx, SortBuf<T>& sb) {
  using K = typename KeyOf<T>::K;
  if (n <= 48) {
    sb.k0.resize(n);
    sb.i0.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      sb.k0[i] = to_key<T>(x[i * stride]);
      sb.i0[i] = (int32_t)i;
    }
    insertion_sort(sb.k0.data(), sb.i0.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      sorted[i] = from_key<T>(sb.k0[i]);
      idx[i] = sb.i0[i];
    }
    return;
  }
  if (sizeof(K) == 4) {
    // one 8-byte item per element: each scatter pass writes one stream per bucket, not two
    sb.p0.resize(n);
    sb.p1.resize(n);
    uint64_t* a = sb.p0.data();
    for (int64_t i = 0; i < n; ++i) a[i] = ((uint64_t)to_key<T>(x[i * stride]) << 32) | (uint64_t)(uint32_t)i;
    // large problems: 3 passes of 11 bits (fewer sweeps); small ones: 4 passes of 8 bits
    // (a 2048-bucket histogram costs more than it saves below ~16k items)
    const uint64_t* r = n >= 16384 ? radix_items<uint64_t, 3, 11>(a, sb.p1.data(), n, 32)
                                   : radix_items<uint64_t, 4, 8>(a, sb.p1.data(), n, 32);
    for (int64_t i = 0; i < n; ++i) {
      sorted[i] = from_key<T>((K)(r[i] >> 32));
      idx[i] = (int32_t)(uint32_t)r[i];
    }
    return;
  }
  // float64: key array sorted by radix, indices carried alongside
  sb.k0.resize(n);
  sb.k1.resize(n);
  sb.i0.resize(n);
  sb.i1.resize(n);
  K* k0 = sb.k0.data();
  K* k1 = sb.k1.data();
  int32_t* i0 = sb.i0.data();
  int32_t* i1 = sb.i1.data();
  for (int64_t i = 0; i < n; ++i) {
    k0[i] = to_key<T>(x[i * stride]);
    i0[i] = (int32_t)i;
  }
  constexpr int P = sizeof(K);
  std::array<uint32_t, 256 * P> hist{};
  for (int64_t i = 0; i < n; ++i) {
    K k = k0[i];
    for (int p = 0; p < P; ++p) hist[p * 256 + ((k >> (8 * p)) & 255)]++;
  }
  K* src = k0;
  K* dst = k1;
  int32_t* isrc = i0;
  int32_t* idst = i1;
  for (int p = 0; p < P; ++p) {
    uint32_t* h = hist.data() + p * 256;
    if (h[(src[0] >> (8 * p)) & 255] == (uint32_t)n) continue;
    uint32_t off = 0;
    for (int d = 0; d < 256; ++d) {
      uint32_t c = h[d];
      h[d] = off;
      off += c;
    }
    const int sh = 8 * p;
    for (int64_t i = 0; i < n; ++i) {
      K k = src[i];
      uint32_t pos = h[(k >> sh) & 255]++;
      dst[pos] = k;
      idst[pos] = isrc[i];
    }
    std::swap(src, dst);
    std::swap(isrc, idst);
  }
  for (int64_t i = 0; i < n; ++i) {
    sorted[i] = from_key<T>(src[i]);
    idx[i] = isrc[i];
  }
}

// ---------------------------------------------------------------- ground cost |d|^p
// PK: 1 -> p = 1, 2 -> p = 2, 0 -> general p (pow).
template <int PK>
inline double cst(double d, double p) {
  if (PK == 1) return std::fabs(d);
  if (PK == 2) return d * d;
  return std::pow(std::fabs(d), p);
}

// derivative; exactly 0 at d = 0 (equal inputs get zero, not NaN, gradients); NaN propagates.
template <int PK>
inline double dcst(double d, double p) {
  if (d != d) return d;
  if (PK == 1) return (double)((d > 0) - (d < 0));
  if (PK == 2) return 2.0 * d;
  double a = std::fabs(d);
  if (a == 0) return 0.0;
  return std::copysign(p * std::pow(a, p - 1.0), d);
}

// Gradient buffers in the sorted domain (double accumulators), null when not wanted.
struct Grads {
  double* gu = nullptr;   // (n) d/d sorted u
  double* gv = nullptr;   // (m)
  double* gFu = nullptr;  // (n) d/d Fu(i), i < n-1
  double* gFv = nullptr;  // (m)
};

// Merge walk over weighted breakpoints (wu, wv normalized, sorted with the values).
template <typename T, int PK>
double walk_weighted(const T* us, const double* wu, int64_t n, const T* vs, const double* wv, int64_t m, double p,
                     const Grads& g) {
  int64_t i = 0, j = 0;
  double cu = (n == 1) ? 1.0 : wu[0];
  double cv = (m == 1) ? 1.0 : wv[0];
  double t = 0.0, acc = 0.0;
  while (i < n - 1 || j < m - 1) {
    const bool adv_u = (j == m - 1) || (i < n - 1 && cu <= cv);
    const double tn = adv_u ? cu : cv;
    const double seg = tn > t ? tn - t : 0.0;
    const double d = (double)us[i] - (double)vs[j];
    const double c = cst<PK>(d, p);
    acc += seg * c;
    if (g.gu) {
      const double gg = seg * dcst<PK>(d, p);
      g.gu[i] += gg;
      g.gv[j] -= gg;
    }
    if (adv_u) {
      if (g.gFu) g.gFu[i] = c - cst<PK>((double)us[i + 1] - (double)vs[j], p);
      ++i;
      cu = (i == n - 1) ? 1.0 : cu + wu[i];
    } else {
      if (g.gFv) g.gFv[j] = c - cst<PK>((double)us[i] - (double)vs[j + 1], p);
      ++j;
      cv = (j == m - 1) ? 1.0 : cv + wv[j];
    }
    if (tn > t) t = tn;
  }
  const double seg = t < 1.0 ? 1.0 - t : 0.0;
  const double d = (double)us[n - 1] - (double)vs[m - 1];
  acc += seg * cst<PK>(d, p);
  if (g.gu) {
    const double gg = seg * dcst<PK>(d, p);
    g.gu[n - 1] += gg;
    g.gv[m - 1] -= gg;
  }
  return acc;
}

// Uniform weights: breakpoints (i+1)/n and (j+1)/m compared exactly as integers (i+1)m vs (j+1)n.
template <typename T, int PK>
double walk_uniform(const T* us, int64_t n, const T* vs, int64_t m, double p, const Grads& g) {
  if (n == m) {
    const double inv = 1.0 / (double)n;
    double acc = 0.0;
    if (g.gu) {
      for (int64_t i = 0; i < n; ++i) {
        const double d = (double)us[i] - (double)vs[i];
        acc += cst<PK>(d, p);
        const double gg = inv * dcst<PK>(d, p);
        g.gu[i] = gg;
        g.gv[i] = -gg;
      }
    } else {
      for (int64_t i = 0; i < n; ++i) acc += cst<PK>((double)us[i] - (double)vs[i], p);
    }
    return acc * inv;
  }
  const double inv = 1.0 / ((double)n * (double)m);
  int64_t i = 0, j = 0, cu = m, cv = n, t = 0;
  double acc = 0.0;
  while (i < n - 1 || j < m - 1) {
    const bool adv_u = (j == m - 1) || (i < n - 1 && cu <= cv);
    const int64_t tn = adv_u ? cu : cv;
    const double seg = (double)(tn - t) * inv;
    const double d = (double)us[i] - (double)vs[j];
    acc += seg * cst<PK>(d, p);
    if (g.gu) {
      const double gg = seg * dcst<PK>(d, p);
      g.gu[i] += gg;
      g.gv[j] -= gg;
    }
    if (adv_u) {
      ++i;
      cu += m;
    } else {
      ++j;
      cv += n;
    }
    t = tn;
  }
  const double seg = (double)(n * m - t) * inv;
  const double d = (double)us[n - 1] - (double)vs[m - 1];
  acc += seg * cst<PK>(d, p);
  if (g.gu) {
    const double gg = seg * dcst<PK>(d, p);
    g.gu[n - 1] += gg;
    g.gv[m - 1] -= gg;
  }
  return acc;
}

template <typename T>
struct Scratch {
  SortBuf<T> sb;
  std::vector<T> us, vs;
  std::vector<int32_t> iu, iv;
  std::vector<double> wu, wv, gu, gv, gFu, gFv;
};

// Outputs of one problem, in the caller's (unsorted) order; null when not wanted.
template <typename T>
struct Out {
  T* gu = nullptr;
  T* gv = nullptr;
  T* guw = nullptr;
  T* gvw = nullptr;
};

// Weighted side: normalized sorted weights into w (double). raw == null -> uniform.
template <typename T>
double sorted_weights(const T* raw, const int32_t* idx, int64_t n, std::vector<double>& w) {
  w.resize(n);
  if (raw == nullptr) {
    std::fill(w.begin(), w.end(), 1.0 / (double)n);
    return 1.0;
  }
  double s = 0.0;
  for (int64_t k = 0; k < n; ++k) s += (double)raw[k];
  // divided, not multiplied by 1 / s: a dominant weight normalizes to exactly 1 (as in the
  // reference and POT), so 1 - cumsum does not turn its rounding error into a segment of a far point
  for (int64_t k = 0; k < n; ++k) w[k] = (double)raw[idx ? idx[k] : k] / s;
  return s;
}

// d/dw for raw weights from d/dFu: reverse cumsum (d/dw_norm), then through w / sum(w).
template <typename T>
void weight_grad(const double* gF, const double* wn, const int32_t* idx, int64_t n, double total, double scale,
                 T* out) {
  // gwn[k] = sum_{i=k}^{n-2} gF[i]; projected: (gwn[k] - sum_k gwn[k] wn[k]) / total.
  // Two reverse sweeps (the first for the dot product) instead of a temporary.
  double run = 0.0, dot = 0.0;
  for (int64_t k = n - 1; k >= 0; --k) {
    if (k < n - 1) run += gF[k];
    dot += run * wn[k];
  }
  const double f = scale / total;
  run = 0.0;
  for (int64_t k = n - 1; k >= 0; --k) {
    if (k < n - 1) run += gF[k];
    out[idx ? idx[k] : k] = (T)((run - dot) * f);
  }
}

// The NaN answer of one problem: value and every requested gradient NaN.
template <typename T>
double nan_problem(int64_t n, int64_t m, const T* uw, const T* vw, const Out<T>& o) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  if (o.gu) std::fill(o.gu, o.gu + n, nan);
  if (o.gv) std::fill(o.gv, o.gv + m, nan);
  if (o.guw && uw) std::fill(o.guw, o.guw + n, nan);
  if (o.gvw && vw) std::fill(o.gvw, o.gvw + m, nan);
  return std::numeric_limits<double>::quiet_NaN();
}

template <typename T>
double solve_sorted(const T* us, const int32_t* iu, int64_t n, const T* uw, const T* vs, const int32_t* iv,
                    int64_t m, const T* vw, double p, double scale, const Out<T>& o, Scratch<T>& s) {
  const bool weighted = uw != nullptr || vw != nullptr;
  const bool want_vals = o.gu != nullptr || o.gv != nullptr;
  const bool want_w = o.guw != nullptr || o.gvw != nullptr;
  // NaN rule, as the reference: a problem with a NaN or infinite value is NaN (otherwise an
  // infinite value gives inf or NaN depending on whether a zero-length segment meets it). Sorted
  // values (the radix order puts NaN of either sign at an end) need only their two ends checked.
  if (!std::isfinite((double)us[0]) || !std::isfinite((double)us[n - 1]) || !std::isfinite((double)vs[0]) ||
      !std::isfinite((double)vs[m - 1]))
    return nan_problem(n, m, uw, vw, o);
  Grads g;
  if (want_vals) {
    s.gu.assign(n, 0.0);
    s.gv.assign(m, 0.0);
    g.gu = s.gu.data();
    g.gv = s.gv.data();
  }
  if (want_w) {
    s.gFu.assign(n, 0.0);
    s.gFv.assign(m, 0.0);
    g.gFu = s.gFu.data();
    g.gFv = s.gFv.data();
  }
  const int pk = p == 1.0 ? 1 : (p == 2.0 ? 2 : 0);
  double su = 1.0, sv = 1.0, cost;
  if (weighted) {
    su = sorted_weights(uw, iu, n, s.wu);
    sv = sorted_weights(vw, iv, m, s.wv);
    // A NaN or infinite weight: the walk's comparisons would skip NaN breakpoints and return a
    // finite number. NaN rule: the value and every gradient are NaN.
    if (!std::isfinite(su) || !std::isfinite(sv)) return nan_problem(n, m, uw, vw, o);
    const double* wu = s.wu.data();
    const double* wv = s.wv.data();
    cost = pk == 1   ? walk_weighted<T, 1>(us, wu, n, vs, wv, m, p, g)
           : pk == 2 ? walk_weighted<T, 2>(us, wu, n, vs, wv, m, p, g)
                     : walk_weighted<T, 0>(us, wu, n, vs, wv, m, p, g);
  } else {
    cost = pk == 1   ? walk_uniform<T, 1>(us, n, vs, m, p, g)
           : pk == 2 ? walk_uniform<T, 2>(us, n, vs, m, p, g)
                     : walk_uniform<T, 0>(us, n, vs, m, p, g);
  }
  if (want_vals) {
    if (o.gu)
      for (int64_t i = 0; i < n; ++i) o.gu[iu ? iu[i] : i] = (T)(g.gu[i] * scale);
    if (o.gv)
      for (int64_t j = 0; j < m; ++j) o.gv[iv ? iv[j] : j] = (T)(g.gv[j] * scale);
  }
  if (o.guw && uw) weight_grad<T>(g.gFu, s.wu.data(), iu, n, su, scale, o.guw);
  if (o.gvw && vw) weight_grad<T>(g.gFv, s.wv.data(), iv, m, sv, scale, o.gvw);
  return cost;
}

// Sorts (unless presorted) then solves. u / v read with a stride (1 for rows).
template <typename T>
double solve(const T* u, int64_t n, const T* uw, const T* v, int64_t m, const T* vw, double p, bool presorted,
             double scale, const Out<T>& o, Scratch<T>& s) {
  if (presorted) return solve_sorted<T>(u, nullptr, n, uw, v, nullptr, m, vw, p, scale, o, s);
  s.us.resize(n);
  s.vs.resize(m);
  s.iu.resize(n);
  s.iv.resize(m);
  argsort<T>(u, 1, n, s.us.data(), s.iu.data(), s.sb);
  argsort<T>(v, 1, m, s.vs.data(), s.iv.data(), s.sb);
  return solve_sorted<T>(s.us.data(), s.iu.data(), n, uw, s.vs.data(), s.iv.data(), m, vw, p, scale, o, s);
}

void check_float(const Tensor& t, const char* name, at::ScalarType st) {
  TORCH_CHECK(t.device().is_cpu(), name, ": CPU tensors only");
  TORCH_CHECK(t.scalar_type() == st, name, ": dtype must match (float32 or float64), got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

template <typename T>
const T* opt_ptr(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// ---------------------------------------------------------------- wasserstein_1d
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> wasserstein1d_fwd(
    const Tensor& u, const Tensor& v, const std::optional<Tensor>& uw, const std::optional<Tensor>& vw, double p,
    bool presorted, bool grad_values, bool grad_weights) {
  TORCH_CHECK(u.dim() == 2 && v.dim() == 2 && u.size(0) == v.size(0), "wasserstein1d: u (B, n) and v (B, m) expected");
  TORCH_CHECK(u.size(1) > 0 && v.size(1) > 0, "wasserstein1d: empty samples");
  TORCH_CHECK(u.size(1) < (int64_t(1) << 31) && v.size(1) < (int64_t(1) << 31), "wasserstein1d: too many samples");
  TORCH_CHECK(p >= 1.0, "wasserstein1d: p must be >= 1");
  const auto st = u.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "wasserstein1d: float32 or float64 only");
  check_float(u, "u", st);
  check_float(v, "v", st);
  const int64_t B = u.size(0), n = u.size(1), m = v.size(1);
  if (uw) {
    check_float(*uw, "u_weights", st);
    TORCH_CHECK(uw->sizes() == u.sizes(), "wasserstein1d: u_weights must be (B, n)");
  }
  if (vw) {
    check_float(*vw, "v_weights", st);
    TORCH_CHECK(vw->sizes() == v.sizes(), "wasserstein1d: v_weights must be (B, m)");
  }
  auto cost = at::empty({B}, u.options());
  Tensor gu, gv, guw, gvw;
  // distinct empty tensors: outputs of a custom op must not alias each other
  auto none = [&] { return at::empty({0}, u.options()); };
  gu = grad_values ? at::empty_like(u) : none();
  gv = grad_values ? at::empty_like(v) : none();
  guw = grad_weights && uw ? at::empty_like(u) : none();
  gvw = grad_weights && vw ? at::empty_like(v) : none();
  AT_DISPATCH_FLOATING_TYPES(st, "wasserstein1d_fwd", [&] {
    const scalar_t* pu = u.data_ptr<scalar_t>();
    const scalar_t* pv = v.data_ptr<scalar_t>();
    const scalar_t* puw = opt_ptr<scalar_t>(uw);
    const scalar_t* pvw = opt_ptr<scalar_t>(vw);
    scalar_t* pc = cost.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / (n + m));
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      Scratch<scalar_t> s;
      for (int64_t b = b0; b < b1; ++b) {
        Out<scalar_t> o;
        if (grad_values) {
          o.gu = gu.data_ptr<scalar_t>() + b * n;
          o.gv = gv.data_ptr<scalar_t>() + b * m;
        }
        if (grad_weights && puw) o.guw = guw.data_ptr<scalar_t>() + b * n;
        if (grad_weights && pvw) o.gvw = gvw.data_ptr<scalar_t>() + b * m;
        pc[b] = (scalar_t)solve<scalar_t>(pu + b * n, n, puw ? puw + b * n : nullptr, pv + b * m, m,
                                          pvw ? pvw + b * m : nullptr, p, presorted, 1.0, o, s);
      }
    });
  });
  return {cost, gu, gv, guw, gvw};
}

// ---------------------------------------------------------------- sliced Wasserstein
// x (B, N, D), y (B, M, D), a (B, N) / b (B, M) optional, theta (D, L). Returns per-direction
// W_p^p (B, L) and, when asked, the gradients of sum_l W_p^p(l) w.r.t. x, y, a, b and theta
// (the last one per batch entry, (B, D, L)).
// Projections of narrow clouds are computed on the fly per direction; wide ones (D > 8) go
// through a GEMM first. Per-sample gradients of the projected values are written to a (B, Lb, N)
// buffer per block of Lb directions and contracted with theta / x by GEMMs (deterministic).
constexpr int64_t kOnTheFlyMaxDim = 8;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sliced_wasserstein_fwd(
    const Tensor& x, const Tensor& y, const std::optional<Tensor>& a, const std::optional<Tensor>& b,
    const Tensor& theta, double p, bool need_gx, bool need_gy, bool need_ga, bool need_gb, bool need_gtheta) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3 && x.size(0) == y.size(0) && x.size(2) == y.size(2),
              "sliced_wasserstein: x (B, N, D) and y (B, M, D) expected");
  TORCH_CHECK(theta.dim() == 2 && theta.size(0) == x.size(2), "sliced_wasserstein: theta must be (D, L)");
  TORCH_CHECK(x.size(1) > 0 && y.size(1) > 0, "sliced_wasserstein: empty point cloud");
  TORCH_CHECK(x.size(1) < (int64_t(1) << 31) && y.size(1) < (int64_t(1) << 31), "sliced_wasserstein: too many points");
  TORCH_CHECK(p >= 1.0, "sliced_wasserstein: p must be >= 1");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "sliced_wasserstein: float32 or float64 only");
  check_float(x, "x", st);
  check_float(y, "y", st);
  check_float(theta, "theta", st);
  const int64_t B = x.size(0), N = x.size(1), M = y.size(1), D = x.size(2), L = theta.size(1);
  if (a) {
    check_float(*a, "a", st);
    TORCH_CHECK(a->dim() == 2 && a->size(0) == B && a->size(1) == N, "sliced_wasserstein: a must be (B, N)");
  }
  if (b) {
    check_float(*b, "b", st);
    TORCH_CHECK(b->dim() == 2 && b->size(0) == B && b->size(1) == M, "sliced_wasserstein: b must be (B, M)");
  }
  const bool need_vals = need_gx || need_gy || need_gtheta;
  const bool ga = need_ga && a.has_value(), gb = need_gb && b.has_value();
  const bool fly = D <= kOnTheFlyMaxDim;
  auto opt = x.options();
  auto costs = at::empty({B, L}, opt);
  auto none = [&] { return at::empty({0}, opt); };
  Tensor gx = need_gx ? at::zeros({B, N, D}, opt) : none();
  Tensor gy = need_gy ? at::zeros({B, M, D}, opt) : none();
  Tensor gA = ga ? at::zeros({B, N}, opt) : none();
  Tensor gB = gb ? at::zeros({B, M}, opt) : none();
  Tensor gth = need_gtheta ? at::empty({B, D, L}, opt) : none();
  // Directions are processed in blocks so the (B, Lb, N) buffers (per-sample gradients of the
  // projections, or the projections themselves when D is wide) stay within ~4M elements per side,
  // while a block still has enough problems to keep every thread busy.
  int64_t Lb = L;
  if (need_vals || ga || gb || !fly) {
    const int64_t budget = int64_t(1) << 22;
    const int64_t Bp = std::max<int64_t>(B, 1);
    Lb = std::max<int64_t>(1, budget / (Bp * std::max(N, M)));
    Lb = std::max<int64_t>(Lb, (2 * at::get_num_threads() + Bp - 1) / Bp);
    Lb = std::min(Lb, L);
  }
  for (int64_t l0 = 0; l0 < L; l0 += Lb) {
    const int64_t lb = std::min(Lb, L - l0);
    auto thb = theta.narrow(1, l0, lb);       // (D, lb)
    auto thT = thb.t().unsqueeze(0);          // (1, lb, D)
    Tensor Gx, Gy, Ga, Gb, px, py;
    if (need_vals) {
      Gx = at::empty({B, lb, N}, opt);
      Gy = at::empty({B, lb, M}, opt);
    }
    if (ga) Ga = at::empty({B, lb, N}, opt);
    if (gb) Gb = at::empty({B, lb, M}, opt);
    if (!fly) {
      px = at::matmul(thT, x.transpose(1, 2)).contiguous();  // (B, lb, N)
      py = at::matmul(thT, y.transpose(1, 2)).contiguous();
    }
    AT_DISPATCH_FLOATING_TYPES(st, "sliced_wasserstein_fwd", [&] {
      const scalar_t* X = x.data_ptr<scalar_t>();
      const scalar_t* Y = y.data_ptr<scalar_t>();
      const scalar_t* TH = theta.data_ptr<scalar_t>();
      const scalar_t* A = opt_ptr<scalar_t>(a);
      const scalar_t* Bw = opt_ptr<scalar_t>(b);
      const scalar_t* PX = fly ? nullptr : px.data_ptr<scalar_t>();
      const scalar_t* PY = fly ? nullptr : py.data_ptr<scalar_t>();
      scalar_t* C = costs.data_ptr<scalar_t>();
      const int64_t grain = std::max<int64_t>(1, 16384 / (N + M));
      at::parallel_for(0, B * lb, grain, [&](int64_t q0, int64_t q1) {
        Scratch<scalar_t> s;
        std::vector<scalar_t> bx, by;
        if (fly) {
          bx.resize(N);
          by.resize(M);
        }
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t bi = q / lb, l = l0 + q % lb;
          const scalar_t *ux, *vy;
          if (fly) {
            scalar_t th[kOnTheFlyMaxDim];
            for (int64_t d = 0; d < D; ++d) th[d] = TH[d * L + l];
            const scalar_t* xb = X + bi * N * D;
            const scalar_t* yb = Y + bi * M * D;
            // accumulated in double: float32 products are exact there, so a projection that
            // cancels (1e30 - 1e30) is 0 whether or not the compiler contracts into FMAs
            for (int64_t i = 0; i < N; ++i) {
              double acc = 0;
              for (int64_t d = 0; d < D; ++d) acc += (double)xb[i * D + d] * (double)th[d];
              bx[i] = (scalar_t)acc;
            }
            for (int64_t j = 0; j < M; ++j) {
              double acc = 0;
              for (int64_t d = 0; d < D; ++d) acc += (double)yb[j * D + d] * (double)th[d];
              by[j] = (scalar_t)acc;
            }
            ux = bx.data();
            vy = by.data();
          } else {
            ux = PX + q * N;
            vy = PY + q * M;
          }
          Out<scalar_t> o;
          if (need_vals) {
            o.gu = Gx.data_ptr<scalar_t>() + q * N;
            o.gv = Gy.data_ptr<scalar_t>() + q * M;
          }
          if (ga) o.guw = Ga.data_ptr<scalar_t>() + q * N;
          if (gb) o.gvw = Gb.data_ptr<scalar_t>() + q * M;
          C[bi * L + l] = (scalar_t)solve<scalar_t>(ux, N, A ? A + bi * N : nullptr, vy, M,
                                                    Bw ? Bw + bi * M : nullptr, p, false, 1.0, o, s);
        }
      });
    });
    // contractions of this block's per-sample gradients (GEMMs, deterministic)
    if (need_gx) gx.add_(at::matmul(Gx.transpose(1, 2), thT));  // (B, N, D)
    if (need_gy) gy.add_(at::matmul(Gy.transpose(1, 2), thT));
    if (need_gtheta) gth.narrow(2, l0, lb).copy_((at::matmul(Gx, x) + at::matmul(Gy, y)).transpose(1, 2));
    if (ga) gA.add_(Ga.sum(1));
    if (gb) gB.add_(Gb.sum(1));
  }
  return {costs, gx, gy, gA, gB, gth};
}

// ---------------------------------------------------------------- histogram W1
// The prefix sums along K are scans inside 8-lane double vectors (three shift-adds) plus a
// carried total, so a row costs a few vector ops per 8 bins instead of a chain of dependent
// scalar adds per bin.
using V8 = hotpath::simd::vf64;

inline V8 load8(const float* p) {
  typedef float f8 __attribute__((vector_size(32)));
  f8 h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, V8);
}
inline V8 load8(const double* p) { return hotpath::simd::Vec<double>::load(p); }

inline V8 prefix8(V8 x) {  // lane i: x_0 + ... + x_i
  const V8 z{};
  x += __builtin_shufflevector(x, z, 8, 0, 1, 2, 3, 4, 5, 6);
  x += __builtin_shufflevector(x, z, 8, 8, 0, 1, 2, 3, 4, 5);
  x += __builtin_shufflevector(x, z, 8, 8, 8, 8, 0, 1, 2, 3);
  return x;
}
inline V8 suffix8(V8 x) {  // lane i: x_i + ... + x_7
  const V8 z{};
  x += __builtin_shufflevector(x, z, 1, 2, 3, 4, 5, 6, 7, 8);
  x += __builtin_shufflevector(x, z, 2, 3, 4, 5, 6, 7, 8, 8);
  x += __builtin_shufflevector(x, z, 4, 5, 6, 7, 8, 8, 8, 8);
  return x;
}
inline double hsum8(V8 v) { return hotpath::simd::Vec<double>::hsum(v); }

template <typename T>
T row_min(const T* x, int64_t K) {  // x[k] < m comparisons, as a scalar loop would (NaN skipped)
  const V8 first = V8{} + (double)x[0];
  V8 m = first;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) { const V8 v = load8(x + k); m = v < m ? v : m; }
  double r = m[0];
  for (int l = 1; l < 8; ++l) r = m[l] < r ? m[l] : r;
  T out = (T)r;
  for (; k < K; ++k) out = x[k] < out ? x[k] : out;
  return out;
}

template <typename T>
struct HistRow {
  const T *p, *q, *s;
  int64_t K;
  T minp() const { return row_min(p, K); }
  T minq() const { return row_min(q, K); }
};

struct HistStats { double sp, sq, cost, ap, aq; };

// One row: masses, cost, and (sw != nullptr) sw_k = sign(P_k - Q_k)(s_{k+1} - s_k) with
// ap = sum_k sw_k P_k, aq = sum_k sw_k Q_k.
template <typename T>
HistStats hist_w1_row(const HistRow<T>& r, double* sw) {
  const int64_t K = r.K, K1 = K - 1, Kv = K1 / 8 * 8;
  V8 vp{}, vq{};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) { vp += load8(r.p + k); vq += load8(r.q + k); }
  double sp = hsum8(vp), sq = hsum8(vq);
  for (; k < K; ++k) { sp += (double)r.p[k]; sq += (double)r.q[k]; }
  // NaN rule of the family (as wasserstein1d): a NaN or infinite mass makes the problem NaN, even
  // where no CDF difference would carry it (K = 1); ap = aq = NaN makes every gradient NaN.
  if (!std::isfinite(sp) || !std::isfinite(sq)) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    return {sp, sq, nan, nan, nan};
  }
  const double ip = 1.0 / sp, iq = 1.0 / sq;
  V8 acc{}, ap{}, aq{};
  double cp = 0, cq = 0;
  for (k = 0; k < Kv; k += 8) {
    const V8 xp = prefix8(load8(r.p + k)) + cp, xq = prefix8(load8(r.q + k)) + cq;
    cp = xp[7];
    cq = xq[7];
    const V8 P = xp * ip, Q = xq * iq;
    const V8 d = P - Q, w = load8(r.s + k + 1) - load8(r.s + k);
    acc += (d < 0 ? -d : d) * w;
    if (sw) {
      V8 sg = __builtin_convertvector((d < 0) - (d > 0), V8);
      sg = d != d ? d : sg;  // NaN propagates
      const V8 swk = sg * w;
      std::memcpy(sw + k, &swk, sizeof swk);
      ap += swk * P;
      aq += swk * Q;
    }
  }
  double cost = hsum8(acc), a_p = hsum8(ap), a_q = hsum8(aq);
  for (; k < K1; ++k) {
    cp += (double)r.p[k];
    cq += (double)r.q[k];
    const double Pk = cp * ip, Qk = cq * iq, dk = Pk - Qk, w = (double)r.s[k + 1] - (double)r.s[k];
    cost += std::fabs(dk) * w;
    if (sw) {
      const double sg = (dk != dk) ? dk : (double)((dk > 0) - (dk < 0));
      sw[k] = sg * w;
      a_p += sw[k] * Pk;
      a_q += sw[k] * Qk;
    }
  }
  return {sp, sq, cost, a_p, a_q};
}

// gp_i = (R_i - ap) / sum p, gq_i = -(R_i - aq) / sum q, R_i = sum_{i <= k < K-1} sw_k.
// gp or gq may be null (that gradient is not wanted: its memory traffic is skipped).
template <typename T>
void hist_w1_grad_row(const double* sw, int64_t K, const HistStats& st, T* gp, T* gq) {
  const double ip = 1.0 / st.sp, iq = 1.0 / st.sq;
  auto put = [&](int64_t i, double r) {
    if (gp) gp[i] = (T)((r - st.ap) * ip);
    if (gq) gq[i] = (T)(-(r - st.aq) * iq);
  };
  double rs = 0;
  int64_t i = K - 1;
  put(i, 0.0);
  // blocks of 8 ending at i - 1, walking down; the first (lowest) indices finish in scalar code
  for (; i - 8 >= 0; i -= 8) {
    const V8 R = suffix8(load8(sw + i - 8)) + rs;
    rs = R[0];
    for (int l = 0; l < 8; ++l) put(i - 8 + l, R[l]);
  }
  for (--i; i >= 0; --i) {
    rs += sw[i];
    put(i, rs);
  }
}

// p, q (B, K) histograms (normalized here), support (B, K) or (1, K) increasing.
// W1 = sum_k |P_k - Q_k| (s_{k+1} - s_k), P / Q the normalized CDFs. With sw_k = sign(P_k - Q_k)
// (s_{k+1} - s_k) and R_i = sum_{k >= i} sw_k: dW/dp_i = (R_i - sum_k sw_k P_k) / sum(p),
// dW/dq_i = -(R_i - sum_k sw_k Q_k) / sum(q): one forward sweep, one reverse sweep per row.
// Also returns stats (B, 4) = (min p, sum p, min q, sum q) per row, gathered in the first sweep,
// so the caller validates the masses without reading them again.
std::tuple<Tensor, Tensor, Tensor, Tensor> histogram_w1_fwd(const Tensor& P, const Tensor& Q, const Tensor& S, bool need_gp,
                                                             bool need_gq) {
  const bool need_grad = need_gp || need_gq;
  TORCH_CHECK(P.dim() == 2 && Q.sizes() == P.sizes(), "histogram_w1: p and q must be (B, K) of one shape");
  TORCH_CHECK(S.dim() == 2 && S.size(1) == P.size(1) && (S.size(0) == 1 || S.size(0) == P.size(0)),
              "histogram_w1: support must be (1, K) or (B, K)");
  const auto st = P.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "histogram_w1: float32 or float64 only");
  check_float(P, "p", st);
  check_float(Q, "q", st);
  check_float(S, "support", st);
  const int64_t B = P.size(0), K = P.size(1);
  TORCH_CHECK(K > 0, "histogram_w1: empty histograms");
  auto cost = at::empty({B}, P.options());
  auto none = [&] { return at::empty({0}, P.options()); };
  Tensor gp = need_gp ? at::empty_like(P) : none(), gq = need_gq ? at::empty_like(Q) : none();
  auto stats = at::empty({B, 4}, P.options());
  const int64_t sstride = S.size(0) == 1 ? 0 : K;
  AT_DISPATCH_FLOATING_TYPES(st, "histogram_w1_fwd", [&] {
    const scalar_t* pp = P.data_ptr<scalar_t>();
    const scalar_t* qq = Q.data_ptr<scalar_t>();
    const scalar_t* ss = S.data_ptr<scalar_t>();
    scalar_t* pc = cost.data_ptr<scalar_t>();
    scalar_t* pst = stats.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 8192 / K);
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      std::vector<double> sw(need_grad ? K + 8 : 0);
      for (int64_t b = b0; b < b1; ++b) {
        const HistRow<scalar_t> row{pp + b * K, qq + b * K, ss + b * sstride, K};
        const HistStats st1 = hist_w1_row(row, need_grad ? sw.data() : nullptr);
        pst[4 * b + 0] = row.minp();
        pst[4 * b + 1] = (scalar_t)st1.sp;
        pst[4 * b + 2] = row.minq();
        pst[4 * b + 3] = (scalar_t)st1.sq;
        pc[b] = (scalar_t)st1.cost;
        if (need_grad)
          hist_w1_grad_row(sw.data(), K, st1, need_gp ? gp.data_ptr<scalar_t>() + b * K : nullptr,
                           need_gq ? gq.data_ptr<scalar_t>() + b * K : nullptr);
      }
    });
  });
  return {cost, gp, gq, stats};
}

}  // namespace
}  // namespace hotpath

TORCH_LIBRARY_IMPL(hotpath, CPU, m) {
  m.impl("wasserstein1d_fwd", &hotpath::wasserstein1d_fwd);
  m.impl("sliced_wasserstein_fwd", &hotpath::sliced_wasserstein_fwd);
  m.impl("histogram_w1_fwd", &hotpath::histogram_w1_fwd);
}
