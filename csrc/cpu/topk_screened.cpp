// Exact top-k by inner product with a bfloat16 screen (float32 inputs, CPU).
//
// The all-pairs scores come from a bfloat16 GEMM (oneDNN through at::mm_out: AMX or
// AVX512-BF16 tiles, 5-8x the float32 GEMM), and only the few keys that can still be in a
// query's top-k are rescored in float32. The screen is exact, from a rigorous bound on the
// bfloat16 score error: inputs rounded to bf16 (relative u = 2^-8 each), exact products
// accumulated in float32 (gamma_d = d 2^-24), output rounded to bf16 (u), so
//   |s' - s| <= c |q| |k|,   c = 3u + 4u^2 + 2 gamma_d (1 + u)^3 + slack
// (the second gamma_d covers the float32 rescoring itself; Cauchy-Schwarz gives
// sum_l |q_l k_l| <= |q| |k|). Per query, tau is the k-th largest lower bound s' - c|q||k| seen
// so far, and every key whose upper bound s' + c|q||k| reaches tau is kept. A true top-k key j
// has upper_j >= s_j >= s_(k) >= final tau >= tau at its tile, so it is always kept; the float32
// dot products of the kept keys then give the top-k (ties: lower key index, as topk_dot).
// A query whose candidate list will not shrink (many near-equal scores) is flagged, and the
// caller runs the float32 path for it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "simd.h"

namespace {

using hotpath::simd::Vec;
using VF = Vec<float>;
using V = VF::V;
constexpr int W = VF::W;

constexpr int64_t kRows = 512;          // queries per GEMM
constexpr int64_t kCols = 2048;         // keys per tile (1.5 MB of bf16 at d = 384: stays in L2)
constexpr int64_t kMaxCand = 1 << 15;   // per query, after pruning: beyond it the query is flagged

struct Row {
  std::vector<float> lb;                // the k largest lower bounds, descending
  std::vector<float> up;                // candidates: upper bound and key index
  std::vector<int64_t> id;
  size_t prune_at = 128;
  bool flagged = false;
  float tau() const { return lb.back(); }
};

inline void push_lower(Row& r, float v) {  // v > r.tau(): insert into the sorted k-buffer
  int64_t p = (int64_t)r.lb.size() - 1;
  while (p > 0 && v > r.lb[p - 1]) { r.lb[p] = r.lb[p - 1]; --p; }
  r.lb[p] = v;
}

void prune(Row& r) {
  const float t = r.tau();
  size_t o = 0;
  for (size_t c = 0; c < r.up.size(); ++c)
    if (r.up[c] >= t) { r.up[o] = r.up[c]; r.id[o] = r.id[c]; ++o; }
  r.up.resize(o);
  r.id.resize(o);
  if (o > (size_t)kMaxCand) { r.flagged = true; r.up.clear(); r.id.clear(); }
  r.prune_at = std::max<size_t>(128, 2 * o);  // amortized O(1) per kept key, small lists
}

inline float bf16_to_float(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// one row of a score tile: s (C bf16 scores), kn (C key norms), cq = c |q|
void scan_row(Row& r, const uint16_t* s, const float* kn, float cq, int64_t j0, int64_t C, float* lo, float* hi) {
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < C; ++c) {
    const float v = bf16_to_float(s[c]), b = cq * kn[c], l = v - b, h = v + b;
    // NaN bounds (NaN or inf - inf scores) become -inf: never kept, as the float32 path never
    // selects NaN, and never able to hide a kept key from the block maxima below
    lo[c] = l == l ? l : ninf;
    hi[c] = h == h ? h : ninf;
  }
  // lower bounds first, so tau is as tight as this tile allows before candidates are kept
  const int64_t Cv = C / W * W;
  for (int64_t c = 0; c < Cv; c += W) {
    if (!(VF::hmax(VF::load(lo + c)) > r.tau())) continue;
    for (int l = 0; l < W; ++l) if (lo[c + l] > r.tau()) push_lower(r, lo[c + l]);
  }
  for (int64_t c = Cv; c < C; ++c) if (lo[c] > r.tau()) push_lower(r, lo[c]);
  if (r.flagged) return;
  for (int64_t c = 0; c < C; ++c) {
    if (c + W <= Cv && !(VF::hmax(VF::load(hi + c)) >= r.tau())) { c += W - 1; continue; }
    if (hi[c] >= r.tau()) { r.up.push_back(hi[c]); r.id.push_back(j0 + c); }
  }
  if (r.up.size() >= r.prune_at) prune(r);
}

// queries (n, d), keys (m, d) float32; returns (values (n, k), indices (n, k), flagged (n,)).
// Each thread owns a contiguous range of keys and screens every query against it (so each key
// is converted to bf16 once, one tile at a time, and stays in L2 across the query blocks); the
// per-thread lower bounds and candidates are merged per query at the end.
std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_dot_screened(const at::Tensor& q_, const at::Tensor& k_, int64_t k) {
  TORCH_CHECK(q_.dim() == 2 && k_.dim() == 2 && q_.size(1) == k_.size(1), "topk_dot_screened: queries (n, d), keys (m, d)");
  TORCH_CHECK(q_.scalar_type() == at::kFloat && k_.scalar_type() == at::kFloat, "topk_dot_screened: float32 inputs");
  TORCH_CHECK(q_.device().is_cpu() && k_.device().is_cpu(), "topk_dot_screened: CPU tensors");
  TORCH_CHECK(k >= 1 && k <= k_.size(0), "topk_dot_screened: k must be in [1, number of keys]");
  at::NoGradGuard no_grad;
  const auto Q = q_.contiguous(), K = k_.contiguous();
  const int64_t n = Q.size(0), m = K.size(0), d = Q.size(1);
  auto vals = at::full({n, k}, -std::numeric_limits<float>::infinity(), Q.options());
  auto idx = at::full({n, k}, -1, Q.options().dtype(at::kLong));
  auto flagged = at::zeros({n}, Q.options().dtype(at::kBool));
  if (n == 0) return {vals, idx, flagged};
  const auto Qb = Q.to(at::kBFloat16);
  const auto qn = Q.norm(2, 1).contiguous(), kn = K.norm(2, 1).contiguous();
  const double u = std::ldexp(1.0, -8), gd = (double)d * std::ldexp(1.0, -24);
  // 1.001: the float32 norms and the products c |q| |k| round too
  const float c = (float)((3 * u + 4 * u * u + 2 * gd * std::pow(1 + u, 3)) * 1.001 + 1e-7);
  const float* qp = Q.data_ptr<float>();
  const float* kp = K.data_ptr<float>();
  const float* qnp = qn.data_ptr<float>();
  const float* knp = kn.data_ptr<float>();
  const int64_t nchunk = std::max<int64_t>(
      1, std::min<int64_t>(at::in_parallel_region() ? 1 : at::get_num_threads(), (m + kCols - 1) / kCols));
  std::vector<std::vector<Row>> state(nchunk, std::vector<Row>(n));
  at::parallel_for(0, nchunk, 1, [&](int64_t c0, int64_t c1) {
    auto S = at::empty({kRows, kCols}, Qb.options());
    auto Kt = at::empty({kCols, d}, Qb.options());
    std::vector<float> lo(kCols), hi(kCols);
    for (int64_t ch = c0; ch < c1; ++ch) {
      std::vector<Row>& rows = state[ch];
      for (Row& r : rows) r.lb.assign(k, -std::numeric_limits<float>::infinity());
      const int64_t m1 = m * (ch + 1) / nchunk;
      for (int64_t j0 = m * ch / nchunk; j0 < m1; j0 += kCols) {
        const int64_t C = std::min(kCols, m1 - j0);
        auto Kc = Kt.narrow(0, 0, C);
        Kc.copy_(K.narrow(0, j0, C));
        for (int64_t i0 = 0; i0 < n; i0 += kRows) {
          const int64_t R = std::min(kRows, n - i0);
          auto St = S.narrow(0, 0, R).narrow(1, 0, C);
          at::mm_out(St, Qb.narrow(0, i0, R), Kc.t());
          const uint16_t* sp = reinterpret_cast<const uint16_t*>(S.data_ptr<at::BFloat16>());
          for (int64_t r = 0; r < R; ++r)
            if (!rows[i0 + r].flagged)
              scan_row(rows[i0 + r], sp + r * St.stride(0), knp + j0, c * qnp[i0 + r], j0, C, lo.data(), hi.data());
        }
      }
    }
  });
  float* vp = vals.data_ptr<float>();
  int64_t* ip = idx.data_ptr<int64_t>();
  bool* fp = flagged.data_ptr<bool>();
  at::parallel_for(0, n, 64, [&](int64_t a, int64_t b) {
    std::vector<float> lbs;
    std::vector<std::pair<float, int64_t>> cand;
    for (int64_t i = a; i < b; ++i) {
      lbs.clear();
      bool fl = false;
      for (int64_t ch = 0; ch < nchunk; ++ch) {
        fl |= state[ch][i].flagged;
        lbs.insert(lbs.end(), state[ch][i].lb.begin(), state[ch][i].lb.end());
      }
      if (fl) { fp[i] = true; continue; }
      // the k-th largest lower bound over all keys (NaN bounds never count)
      std::nth_element(lbs.begin(), lbs.begin() + (k - 1), lbs.end(), [](float x, float y) { return x > y || (x == x && y != y); });
      const float t = lbs[k - 1];
      cand.clear();
      for (int64_t ch = 0; ch < nchunk; ++ch) {
        const Row& row = state[ch][i];
        for (size_t cc = 0; cc < row.up.size(); ++cc)
          if (row.up[cc] >= t) {
            const float v = hotpath::simd::dot<float>(qp + i * d, kp + row.id[cc] * d, d);
            if (v == v) cand.emplace_back(v, row.id[cc]);  // NaN scores are never selected
          }
      }
      const int64_t kk = std::min<int64_t>(k, (int64_t)cand.size());
      std::partial_sort(cand.begin(), cand.begin() + kk, cand.end(), [](const auto& x, const auto& y) {
        return x.first > y.first || (x.first == y.first && x.second < y.second);
      });
      for (int64_t l = 0; l < kk; ++l) { vp[i * k + l] = cand[l].first; ip[i * k + l] = cand[l].second; }
      if (kk < k) fp[i] = true;  // non-finite inputs: the float32 path decides
    }
  });
  return {vals, idx, flagged};
}

// whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16): without them a
// bf16 GEMM is no faster than the float32 one and the screen does not pay
bool cpu_has_bf16_dot() {
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY_IMPL(hotpath, CPU, m) { m.impl("contrastive_topk_screened", &topk_dot_screened); }

// A question about this CPU, not a kernel: whether the screen has fast bf16 dot products.
TORCH_LIBRARY_FRAGMENT(hotpath, m) { m.def("cpu_has_bf16_dot() -> bool", &cpu_has_bf16_dot); }
