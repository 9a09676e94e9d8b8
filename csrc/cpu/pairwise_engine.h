// The streaming pairwise engine (CPU): tiles of rows against tiles of columns,
//   score_ij = alpha * K(r_i, c_j) + rowb_i + colb_j,   K = <r, c>  or  |r - c|^2,
// computed by a register-blocked micro-kernel into an L1-sized tile buffer, then consumed by an
// epilogue (online log-sum-exp with softmax-weighted values, or the softmax backward). The
// n x m matrix never exists; memory is O((n + m) (d + k)). Other op families include this
// header and reuse score_tile() with epilogues of their own.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "simd.h"

namespace hotpath {
namespace engine {

using simd::Vec;

#if defined(__AVX512F__)
constexpr int kMicroRows = 8;   // 8 x 2 zmm accumulators fit the 32 vector registers
#else
constexpr int kMicroRows = 4;   // 16 registers on AVX2 / NEON: keep accumulators in registers
#endif
constexpr int kRowBlock = 32;   // rows per parallel task
constexpr int kColTile = 256;   // columns per tile: kRowBlock x kColTile floats = 32 KB

template <typename T>
inline int64_t col_pad() { return 2 * Vec<T>::W; }

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// One problem (one batch element): rows (nr, d) against columns given transposed, padded.
template <typename T>
struct Pairs {
  const T* rows = nullptr;   // (nr, d) row-major
  int64_t nr = 0;
  const T* colsT = nullptr;  // (d, ldc) transposed, zero beyond nc
  int64_t nc = 0, ldc = 0;   // ldc: padded column count, a multiple of col_pad<T>()
  int64_t d = 0;
  T alpha = 1;
  bool sqdist = false;
  const T* rowb = nullptr;   // (nr) or null
  const T* colb = nullptr;   // (ldc), -inf beyond nc; never null
};

template <typename T, int RN, bool SQ>
inline void micro_tile(const T* x, int64_t d, const T* yT, int64_t ldc, T alpha, const T* cb,
                       T* S, int64_t ldS) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  V acc[RN][2];
  for (int r = 0; r < RN; ++r) acc[r][0] = acc[r][1] = V{};
  for (int64_t k = 0; k < d; ++k) {
    const V y0 = VV::load(yT + k * ldc), y1 = VV::load(yT + k * ldc + W);
    for (int r = 0; r < RN; ++r) {
      const V xb = VV::set1(x[r * d + k]);
      if (SQ) {
        const V t0 = xb - y0, t1 = xb - y1;
        acc[r][0] += t0 * t0;
        acc[r][1] += t1 * t1;
      } else {
        acc[r][0] += xb * y0;
        acc[r][1] += xb * y1;
      }
    }
  }
  const V a = VV::set1(alpha), c0 = VV::load(cb), c1 = VV::load(cb + W);
  for (int r = 0; r < RN; ++r) {
    VV::store(S + r * ldS, a * acc[r][0] + c0);
    VV::store(S + r * ldS + W, a * acc[r][1] + c1);
  }
}

template <typename T, bool SQ>
inline void score_tile_impl(const Pairs<T>& P, int64_t i0, int R, int64_t j0, int TC, T* S) {
  const int64_t step = col_pad<T>();
  for (int64_t c = 0; c < TC; c += step) {
    const T* yT = P.colsT + j0 + c;
    const T* cb = P.colb + j0 + c;
    int r = 0;
    for (; r + kMicroRows <= R; r += kMicroRows)
      micro_tile<T, kMicroRows, SQ>(P.rows + (i0 + r) * P.d, P.d, yT, P.ldc, P.alpha, cb, S + r * TC + c, TC);
    for (; r < R; ++r)
      micro_tile<T, 1, SQ>(P.rows + (i0 + r) * P.d, P.d, yT, P.ldc, P.alpha, cb, S + r * TC + c, TC);
  }
  if (P.rowb) {
    for (int r = 0; r < R; ++r) {
      const T b = P.rowb[i0 + r];
      T* s = S + r * TC;
      for (int c = 0; c < TC; ++c) s[c] += b;
    }
  }
}

// Wide inner products go to BLAS on the tile (at::mm_out on views, no copies): from d = 48 its
// packed GEMM beats the register-blocked micro-kernel and the call overhead is amortized.
constexpr int64_t kBlasMinDim = 48;

template <typename T>
inline void score_tile_blas(const Pairs<T>& P, int64_t i0, int R, int64_t j0, int TC, T* S) {
  using VV = Vec<T>;
  at::NoGradGuard no_grad;  // grad mode is thread local: pool threads do not inherit no_grad
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto Xb = at::from_blob(const_cast<T*>(P.rows + i0 * P.d), {R, P.d}, opt);
  auto Yb = at::from_blob(const_cast<T*>(P.colsT + j0), {P.d, TC}, {P.ldc, 1}, opt);
  auto Sb = at::from_blob(S, {R, TC}, opt);
  at::mm_out(Sb, Xb, Yb);
  const typename VV::V a = VV::set1(P.alpha);
  for (int r = 0; r < R; ++r) {
    const typename VV::V b = VV::set1(P.rowb ? P.rowb[i0 + r] : T(0));
    T* s = S + r * TC;
    for (int c = 0; c < TC; c += VV::W) VV::store(s + c, a * VV::load(s + c) + VV::load(P.colb + j0 + c) + b);
  }
}

// S[r][c] = score(i0 + r, j0 + c) for r < R, c < TC (TC a multiple of col_pad<T>()).
template <typename T>
inline void score_tile(const Pairs<T>& P, int64_t i0, int R, int64_t j0, int TC, T* S) {
  if (P.sqdist) score_tile_impl<T, true>(P, i0, R, j0, TC, S);
  else if (P.d >= kBlasMinDim) score_tile_blas<T>(P, i0, R, j0, TC, S);
  else score_tile_impl<T, false>(P, i0, R, j0, TC, S);
}

// out[kk] += sum_c a[c] * BT[kk * ldb + c] for kk < kdim   (features transposed; small kdim)
template <typename T>
inline void acc_dotT(const T* a, const T* BT, int64_t ldb, int TC, int64_t kdim, T* out) {
  using VV = Vec<T>;
  for (int64_t kk = 0; kk < kdim; ++kk) {
    typename VV::V s{};
    const T* b = BT + kk * ldb;
    for (int c = 0; c < TC; c += VV::W) s += VV::load(a + c) * VV::load(b + c);
    out[kk] += VV::hsum(s);
  }
}

// out[:] += sum_{c < nvalid} a[c] * B[c, :]   (features row-major; large kdim)
template <typename T>
inline void acc_axpy(const T* a, const T* B, int nvalid, int64_t kdim, T* out) {
  for (int c = 0; c < nvalid; ++c) {
    const T w = a[c];
    if (w == T(0)) continue;
    const T* b = B + c * kdim;
#pragma omp simd
    for (int64_t kk = 0; kk < kdim; ++kk) out[kk] += w * b[kk];
  }
}

// Features in both layouts, so each accumulation picks the faster form for its width.
template <typename T>
struct Feats {
  const T* rowmajor = nullptr;  // (n, k)
  const T* T_ = nullptr;        // (k, ld) zero-padded
  int64_t k = 0, ld = 0;
  void accumulate(const T* a, int64_t j0, int TC, int nvalid, T* out) const {
    if (k == 0) return;
    if (k < 16) acc_dotT<T>(a, T_ + j0, ld, TC, k, out);
    else acc_axpy<T>(a, rowmajor + j0 * k, nvalid, k, out);
  }
};

// Forward: lse (nr) and out (nr, k) = softmax-weighted values, online over column tiles.
// Batched: problem b is Ps[b] with values Vs[b]; lse (B, nr), out (B, nr, k); all Ps share nr.
template <typename T>
void lse_rows(const Pairs<T>* Ps, const Feats<T>* Vs, int64_t B, T* lse_all, T* out_all) {
  using VV = Vec<T>;
  using V = typename VV::V;
  const int64_t nblocks = (Ps[0].nr + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, B * nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> Sbuf(kRowBlock * kColTile);
    T* S = Sbuf.data();
    T mx[kRowBlock], sm[kRowBlock];
    bool nan[kRowBlock], pinf[kRowBlock];
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t bi = task / nblocks;
      const Pairs<T>& P = Ps[bi];
      const Feats<T>& vals = Vs[bi];
      T* lse = lse_all + bi * P.nr;
      T* out = out_all + bi * P.nr * vals.k;
      const int64_t i0 = (task % nblocks) * kRowBlock;
      const int R = (int)std::min<int64_t>(kRowBlock, P.nr - i0);
      for (int r = 0; r < R; ++r) { mx[r] = simd::neg_inf<T>(); sm[r] = 0; nan[r] = false; pinf[r] = false; }
      T* o = out + i0 * vals.k;
      std::fill(o, o + R * vals.k, T(0));
      for (int64_t j0 = 0; j0 < P.nc; j0 += kColTile) {
        const int TC = (int)std::min<int64_t>(kColTile, P.ldc - j0);
        const int nvalid = (int)std::min<int64_t>(TC, P.nc - j0);
        score_tile<T>(P, i0, R, j0, TC, S);
        for (int r = 0; r < R; ++r) {
          T* s = S + r * TC;
          // padded columns score x * 0 + (-inf): NaN for an infinite x, which the vector max
          // could return; they must read -inf like any masked column
          for (int c = nvalid; c < TC; ++c) s[c] = simd::neg_inf<T>();
          V m = VV::set1(simd::neg_inf<T>());
          for (int c = 0; c < TC; c += VV::W) m = VV::vmax(m, VV::load(s + c));
          const T tmax = VV::hmax(m);
          if (tmax == simd::neg_inf<T>()) {  // all masked, or NaN scores (max skips NaN)
            for (int c = 0; c < nvalid; ++c) nan[r] |= (s[c] != s[c]);
            continue;
          }
          if (tmax == -simd::neg_inf<T>()) {
            // a +inf score makes the row's lse +inf (as torch.logsumexp), unless a NaN appears;
            // shifting by an infinite max would give inf - inf = NaN, so the row stops summing
            pinf[r] = true;
            for (int c = 0; c < nvalid; ++c) nan[r] |= (s[c] != s[c]);
            continue;
          }
          if (pinf[r]) {
            for (int c = 0; c < nvalid; ++c) nan[r] |= (s[c] != s[c]);
            continue;
          }
          if (tmax > mx[r]) {
            const T f = mx[r] == simd::neg_inf<T>() ? T(0) : std::exp(mx[r] - tmax);
            sm[r] *= f;
            for (int64_t kk = 0; kk < vals.k; ++kk) o[r * vals.k + kk] *= f;
            mx[r] = tmax;
          }
          const V mv = VV::set1(mx[r]);
          V acc{};
          for (int c = 0; c < TC; c += VV::W) {
            const V e = VV::exp_nonpos(VV::load(s + c) - mv);
            acc += e;
            if (vals.k) VV::store(s + c, e);
          }
          sm[r] += VV::hsum(acc);
          vals.accumulate(s, j0, TC, nvalid, o + r * vals.k);
        }
      }
      for (int r = 0; r < R; ++r) {
        const int64_t i = i0 + r;
        if (nan[r] || sm[r] != sm[r]) {
          lse[i] = std::numeric_limits<T>::quiet_NaN();
          for (int64_t kk = 0; kk < vals.k; ++kk) o[r * vals.k + kk] = std::numeric_limits<T>::quiet_NaN();
        } else if (pinf[r]) {
          lse[i] = -simd::neg_inf<T>();  // the reference's softmax weights of an infinite row are 0
          for (int64_t kk = 0; kk < vals.k; ++kk) o[r * vals.k + kk] = T(0);
        } else if (mx[r] == simd::neg_inf<T>()) {
          lse[i] = simd::neg_inf<T>();  // every column masked: out stays 0
        } else {
          lse[i] = mx[r] + std::log(sm[r]);
          const T inv = T(1) / sm[r];
          for (int64_t kk = 0; kk < vals.k; ++kk) o[r * vals.k + kk] *= inv;
        }
      }
    }
  });
}

// One side of the softmax backward. With e_ij = exp(score_ij) (the row bias already holds
// -lse, or the column bias does) and dS_ij = e_ij (ra_i + ca_j + <rv_i, cv_j>):
//   acc_i  += sum_j dS_ij colfeat_j     rsum_i += sum_j dS_ij     acc2_i += sum_j e_ij cv_j
template <typename T>
struct BwdTerms {
  const T* ra = nullptr;  // (nr) or null
  const T* ca = nullptr;  // (ldc) or null, zero beyond nc
  const T* rv = nullptr;  // (nr, kv) row-major or null
  Feats<T> cv;            // (nc, kv) columns' vectors (kv = cv.k, may be 0)
  Feats<T> colfeat;       // (nc, d) columns' features
  bool want_acc2 = false;
};

// Batched like lse_rows: acc (B, nr, d), rsum (B, nr), acc2 (B, nr, kv).
template <typename T>
void softmax_bwd_rows(const Pairs<T>* Ps, const BwdTerms<T>* Ts, int64_t B, T* acc_all, T* rsum_all, T* acc2_all) {
  using VV = Vec<T>;
  using V = typename VV::V;
  const int64_t nblocks = (Ps[0].nr + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, B * nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> Sbuf(kRowBlock * kColTile), Ebuf(kColTile);
    T* S = Sbuf.data();
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t bi = task / nblocks;
      const Pairs<T>& P = Ps[bi];
      const BwdTerms<T>& Tm = Ts[bi];
      const int64_t kv = Tm.cv.k, d = Tm.colfeat.k;
      T* acc = acc_all + bi * P.nr * d;
      T* rsum = rsum_all + bi * P.nr;
      T* acc2 = acc2_all ? acc2_all + bi * P.nr * kv : nullptr;
      const int64_t i0 = (task % nblocks) * kRowBlock;
      const int R = (int)std::min<int64_t>(kRowBlock, P.nr - i0);
      std::fill(acc + i0 * d, acc + (i0 + R) * d, T(0));
      std::fill(rsum + i0, rsum + i0 + R, T(0));
      if (Tm.want_acc2) std::fill(acc2 + i0 * kv, acc2 + (i0 + R) * kv, T(0));
      for (int64_t j0 = 0; j0 < P.nc; j0 += kColTile) {
        const int TC = (int)std::min<int64_t>(kColTile, P.ldc - j0);
        const int nvalid = (int)std::min<int64_t>(TC, P.nc - j0);
        score_tile<T>(P, i0, R, j0, TC, S);
        for (int r = 0; r < R; ++r) {
          const int64_t i = i0 + r;
          T* s = S + r * TC;
          T* e = Ebuf.data();
          const V ra = VV::set1(Tm.ra ? Tm.ra[i] : T(0));
          const T* rv = Tm.rv ? Tm.rv + i * kv : nullptr;
          V rs{};
          const V zero{};
          // one sweep over the tile: e = exp(score), w = ra + ca + <rv_i, cv_c>, dS = e * w.
          // score - lse <= 0, but the column pass folds -lse in before the row's bias (the forward
          // adds the bias first): at |score| ~ 1e31 that lands ulps of the score above 0, and
          // exp(1e24) = inf. Clamped to 0 (NaN stays NaN) the weight stays <= 1.
          for (int c = 0; c < TC; c += VV::W) {
            const V sv = VV::load(s + c);
            const V ev = VV::exp_nonpos(sv > zero ? zero : sv);
            V w = ra;
            if (Tm.ca) w += VV::load(Tm.ca + j0 + c);
            for (int64_t kk = 0; kk < kv; ++kk)
              w += VV::set1(rv[kk]) * VV::load(Tm.cv.T_ + kk * Tm.cv.ld + j0 + c);
            const V ds = ev * w;
            rs += ds;
            VV::store(s + c, ds);
            if (Tm.want_acc2) VV::store(e + c, ev);
          }
          rsum[i] += VV::hsum(rs);
          Tm.colfeat.accumulate(s, j0, TC, nvalid, acc + i * d);
          if (Tm.want_acc2) Tm.cv.accumulate(e, j0, TC, nvalid, acc2 + i * kv);
        }
      }
    }
  });
}

}  // namespace engine
}  // namespace hotpath
