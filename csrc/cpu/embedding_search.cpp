// Quantized embedding search (issue 7): streaming top-k over int8 codes (VNNI dot products) or
// binary codes (popcount Hamming). The n x Q score matrix is never stored: each thread owns a
// range of queries and their top-k lists, streams the keys in chunks that stay in L2, and runs
// every query tile over the chunk; a score enters a list only when it beats the list's current
// k-th best (strictly: equal scores keep the smaller index, as the reference's stable sort).
//
// Loop order: a small chunk of keys (L1) against all query tiles of the thread.
// int8: keys are stored as unsigned bytes k + 128 in the VNNI layout [n/16][d/4][16][4], so one
// vpdpbusd (u8 keys x s8 query bytes, broadcast from memory) does 64 multiply-adds for 16 keys;
// sum_j q_j (k_j + 128) = q.k + 128 sum_j q_j, so the query sum corrects it exactly in int32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

// Sorted top-k list (descending score, ties by ascending index).
struct TopK {
  int64_t k, size = 0;
  float* v;
  int64_t* i;
  float thresh() const { return size < k ? -std::numeric_limits<float>::infinity() : v[k - 1]; }
  bool full() const { return size == k; }
  void push(float s, int64_t idx) {
    if (size == k && !(s > v[k - 1])) return;
    int64_t p = size < k ? size++ : k - 1;
    while (p > 0 && (v[p - 1] < s || (v[p - 1] == s && i[p - 1] > idx))) { v[p] = v[p - 1]; i[p] = i[p - 1]; --p; }
    v[p] = s;
    i[p] = idx;
  }
};


std::tuple<at::Tensor, at::Tensor> embedding_search_int8(at::Tensor qq, at::Tensor qstep, at::Tensor keys, at::Tensor packed,
                                                         at::Tensor key_scale, int64_t k) {
  const int64_t n = keys.size(0);  // the plain int8 keys serve the other backends; only their count is read here
  TORCH_CHECK(qq.dim() == 2 && qq.scalar_type() == at::kChar && qq.is_contiguous(), "queries must be contiguous (Q, d) int8");
  TORCH_CHECK(qstep.dim() == 1 && qstep.size(0) == qq.size(0) && qstep.scalar_type() == at::kFloat, "qstep must be (Q,) float32");
  TORCH_CHECK(key_scale.dim() == 1 && key_scale.size(0) == n && key_scale.scalar_type() == at::kFloat && key_scale.is_contiguous(), "key_scale must be (n,) float32");
  TORCH_CHECK(k >= 1 && k <= n, "k must be in [1, n]");
  const int64_t Q = qq.size(0), d = qq.size(1), d4 = (d + 3) / 4, n16 = (n + 15) / 16;
  TORCH_CHECK(d >= 1, "embedding_search_int8: d must be >= 1, got ", d);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.numel() == n16 * d4 * 64 && packed.is_contiguous(), "packed keys do not match n, d");
  at::Tensor vals = at::empty({Q, k}, qstep.options());
  at::Tensor idx = at::empty({Q, k}, qstep.options().dtype(at::kLong));
  // queries padded to d4*4 with zeros; their sums for the +128 correction
  constexpr int QT = 6;
  const int64_t Qp = (Q + QT - 1) / QT * QT + QT;  // full query tiles only: zero rows are computed, never reported
  std::vector<int8_t> qpad(Qp * d4 * 4, 0);
  std::vector<int32_t> qsum(std::max<int64_t>(1, Q), 0);
  const int8_t* qp = qq.data_ptr<int8_t>();
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t t = 0; t < d; ++t) { qpad[q * d4 * 4 + t] = qp[q * d + t]; qsum[q] += qp[q * d + t]; }
  const uint8_t* kp = packed.data_ptr<uint8_t>();
  const float* ks = key_scale.data_ptr<float>();
  float* vp = vals.data_ptr<float>();
  int64_t* ip = idx.data_ptr<int64_t>();
  // 32 keys (d = 384: 12 KB) stay in L1 while every query tile of the thread runs over them; the
  // queries (a few hundred KB) stream from L2 as 4-byte broadcasts. (Chunks of ~1 MB, i.e. keys
  // from L2 for every tile, ran at half the speed: two 64-byte key loads per 12 vpdpbusd.)
  const int64_t chunk16 = 2;
  const int nthreads = at::get_num_threads();
  const int64_t per = (Q + nthreads - 1) / nthreads;
  at::parallel_for(0, nthreads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      const int64_t q0 = th * per, q1 = std::min(Q, q0 + per);
      if (q0 >= q1) continue;
      std::vector<TopK> lists;
      for (int64_t q = q0; q < q1; ++q) lists.push_back(TopK{k, 0, vp + q * k, ip + q * k});
      for (int64_t c0 = 0; c0 < n16; c0 += chunk16) {
        const int64_t c1 = std::min(n16, c0 + chunk16);
        for (int64_t qa = q0; qa < q1; qa += QT) {
          const int nq = (int)std::min<int64_t>(QT, q1 - qa);
          int64_t b = c0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
          for (; b + 2 <= c1; b += 2) {
            __m512i acc[QT][2];
            for (int i = 0; i < QT; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
            const uint8_t* k0 = kp + b * d4 * 64;
            const uint8_t* k1 = k0 + d4 * 64;
            const int32_t* qrow = (const int32_t*)(qpad.data() + qa * d4 * 4);
            for (int64_t t = 0; t < d4; ++t) {
              __m512i kv0 = _mm512_loadu_si512((const void*)(k0 + t * 64));
              __m512i kv1 = _mm512_loadu_si512((const void*)(k1 + t * 64));
#pragma GCC unroll 8
              for (int i = 0; i < QT; ++i) {
                __m512i qv = _mm512_set1_epi32(qrow[i * d4 + t]);
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], kv0, qv);
                acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], kv1, qv);
              }
            }
            // spill once, with constant indices, so the accumulators live in registers in the loop
            alignas(64) int32_t accb[QT][2][16];
#pragma GCC unroll 8
            for (int i = 0; i < QT; ++i) {
              _mm512_store_si512((void*)accb[i][0], acc[i][0]);
              _mm512_store_si512((void*)accb[i][1], acc[i][1]);
            }
            for (int i = 0; i < nq; ++i) {
              TopK& L = lists[qa + i - q0];
              const __m512i corr = _mm512_set1_epi32(128 * qsum[qa + i]);
              for (int h = 0; h < 2; ++h) {
                const int64_t j0 = (b + h) * 16;
                __m512 sc;
                if (j0 + 16 <= n) sc = _mm512_loadu_ps(ks + j0);
                else { __mmask16 mk = (__mmask16)((1u << (n - j0)) - 1u); sc = _mm512_maskz_loadu_ps(mk, ks + j0); }
                __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512((const void*)accb[i][h]), corr)), sc);
                __mmask16 hit = _mm512_cmp_ps_mask(s, _mm512_set1_ps(L.thresh()), _CMP_GT_OQ);
                if (j0 + 16 > n) hit &= (__mmask16)((1u << (n - j0)) - 1u);
                if (!L.full()) hit = j0 + 16 > n ? (__mmask16)((1u << (n - j0)) - 1u) : (__mmask16)0xFFFF;
                if (hit) {
                  alignas(64) float tmp[16];
                  _mm512_store_ps(tmp, s);
                  for (int l = 0; l < 16; ++l) if ((hit >> l) & 1) L.push(tmp[l], j0 + l);
                }
              }
            }
          }
#endif
          for (; b < c1; ++b) {  // scalar path (and the odd last block)
            const uint8_t* kb = kp + b * d4 * 64;
            for (int i = 0; i < nq; ++i) {
              TopK& L = lists[qa + i - q0];
              const int8_t* qv = qpad.data() + (qa + i) * d4 * 4;
              for (int l = 0; l < 16; ++l) {
                const int64_t j = b * 16 + l;
                if (j >= n) break;
                int32_t s = 0;
                for (int64_t t = 0; t < d4; ++t)
                  for (int u = 0; u < 4; ++u) s += (int32_t)qv[t * 4 + u] * ((int32_t)kb[t * 64 + l * 4 + u] - 128);
                L.push((float)s * ks[j], j);
              }
            }
          }
        }
      }
      for (int64_t q = q0; q < q1; ++q) {
        const float st = qstep.data_ptr<float>()[q];
        for (int64_t r = 0; r < k; ++r) vp[q * k + r] *= st;
      }
    }
  });
  return {vals, idx};
}

#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__)
// Hamming distances of QT queries x 16 keys (two blocks of 8, transposed [block][word][8]) with
// vpopcntq; a key enters a list only if its distance is below the query's bound hb (the k-th best
// as a Hamming distance), tested in registers, so the top-k buffers are touched only on a hit.
// WT > 0: W known at compile time (fully unrolled); WT = 0: runtime W.
template <int QT, int WT>
inline void binary_tile(const uint64_t* kb, int64_t W_, const uint64_t* qrow, int nq, int64_t j0, __mmask8 valid0,
                        __mmask8 valid1, int64_t d, TopK* lists, int64_t* hb) {
  const int64_t W = WT > 0 ? WT : W_;
  __m512i acc[QT][2];
#pragma GCC unroll 8
  for (int i = 0; i < QT; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
  const uint64_t* kb1 = kb + W * 8;
#pragma GCC unroll 8
  for (int64_t w = 0; w < W; ++w) {
    const __m512i kv0 = _mm512_loadu_si512((const void*)(kb + w * 8));
    const __m512i kv1 = _mm512_loadu_si512((const void*)(kb1 + w * 8));
#pragma GCC unroll 8
    for (int i = 0; i < QT; ++i) {
      const __m512i qv = _mm512_set1_epi64((long long)qrow[i * W + w]);
      acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_xor_si512(kv0, qv)));
      acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_xor_si512(kv1, qv)));
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < QT; ++i) {
    if (i >= nq) break;
    const __m512i bv = _mm512_set1_epi64(hb[i]);
    const __mmask8 m0 = _mm512_mask_cmplt_epi64_mask(valid0, acc[i][0], bv);
    const __mmask8 m1 = _mm512_mask_cmplt_epi64_mask(valid1, acc[i][1], bv);
    if (m0 | m1) {
      alignas(64) int64_t h[16];
      _mm512_store_si512((void*)h, acc[i][0]);
      _mm512_store_si512((void*)(h + 8), acc[i][1]);
      const unsigned m = (unsigned)m0 | ((unsigned)m1 << 8);
      TopK& L = lists[i];
      for (int l = 0; l < 16; ++l)
        if ((m >> l) & 1u) {
          L.push((float)(d - 2 * h[l]), j0 + l);
          // scores d - 2h are exact integers: beating the k-th best s* means h < (d - s*) / 2
          // (later lanes of this tile that no longer beat it are rejected by push)
          if (L.full()) hb[i] = (d - (int64_t)L.thresh()) / 2;
        }
    }
  }
}
#endif

std::tuple<at::Tensor, at::Tensor> embedding_search_binary(at::Tensor qbits, at::Tensor kbits, int64_t d, int64_t k) {
  TORCH_CHECK(qbits.dim() == 2 && qbits.scalar_type() == at::kByte && qbits.is_contiguous(), "query bits must be contiguous (Q, B) uint8");
  TORCH_CHECK(kbits.dim() == 2 && kbits.scalar_type() == at::kByte && kbits.is_contiguous(), "key bits must be contiguous (n, B) uint8");
  const int64_t Q = qbits.size(0), n = kbits.size(0), B = kbits.size(1), W = B / 8;
  // d = 0 would leave no 64-bit word per row (and a division by zero in the chunk size)
  TORCH_CHECK(d >= 1, "embedding_search_binary: d must be >= 1, got ", d);
  TORCH_CHECK(qbits.size(1) == B && B % 8 == 0 && W >= 1 && W * 64 >= d, "bit rows must be ceil(d/64)*8 bytes");
  TORCH_CHECK(k >= 1 && k <= n, "k must be in [1, n]");
  at::Tensor vals = at::empty({Q, k}, qbits.options().dtype(at::kFloat));
  at::Tensor idx = at::empty({Q, k}, qbits.options().dtype(at::kLong));
  constexpr int QT = 8;
  std::vector<uint64_t> qbuf(((Q + QT - 1) / QT * QT + QT) * W, 0);  // padded to full query tiles
  std::memcpy(qbuf.data(), qbits.data_ptr<uint8_t>(), Q * W * 8);
  const uint64_t* qp = qbuf.data();
  const uint64_t* kp = (const uint64_t*)kbits.data_ptr<uint8_t>();
  float* vp = vals.data_ptr<float>();
  int64_t* ip = idx.data_ptr<int64_t>();
  const int nthreads = at::get_num_threads();
  const int64_t per = (Q + nthreads - 1) / nthreads;
  // ~256 KB of keys per chunk (stays in L2 while all of the thread's query tiles run over it), even
  // number of 8-key blocks (the kernel takes 16 keys at a time)
  const int64_t chunk8 = std::max<int64_t>(2, (int64_t)(1 << 18) / (W * 64) / 2 * 2);
  at::parallel_for(0, nthreads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t th = t0; th < t1; ++th) {
      const int64_t q0 = th * per, q1 = std::min(Q, q0 + per);
      if (q0 >= q1) continue;
      std::vector<TopK> lists;
      for (int64_t q = q0; q < q1; ++q) lists.push_back(TopK{k, 0, vp + q * k, ip + q * k});
      std::vector<int64_t> hb(q1 - q0, d + 1);  // Hamming bound: any distance <= d enters a list that is not full
      std::vector<uint64_t> kt((chunk8 + 2) * W * 8, 0);
      const int64_t nb = (n + 7) / 8;
      for (int64_t c0 = 0; c0 < nb; c0 += chunk8) {
        const int64_t c1 = std::min(nb, c0 + chunk8);
        // transpose the chunk to [block of 8 keys][word][8]: one vector holds word w of 8 keys
        for (int64_t b = c0; b < c1; ++b) {
          uint64_t* dst = kt.data() + (b - c0) * W * 8;
          for (int l = 0; l < 8; ++l) {
            const int64_t j = b * 8 + l;
            if (j < n) for (int64_t w = 0; w < W; ++w) dst[w * 8 + l] = kp[j * W + w];
            else for (int64_t w = 0; w < W; ++w) dst[w * 8 + l] = 0;
          }
        }
        for (int64_t qa = q0; qa < q1; qa += QT) {
          const int nq = (int)std::min<int64_t>(QT, q1 - qa);
#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__)
          auto valid = [&](int64_t b) -> __mmask8 {
            if (b >= nb) return 0;
            return (b + 1) * 8 <= n ? (__mmask8)0xFF : (__mmask8)((1u << (n - b * 8)) - 1u);
          };
          for (int64_t b = c0; b < c1; b += 2) {  // an odd last block pairs with a zero block, masked out
            const uint64_t* kb = kt.data() + (b - c0) * W * 8;
            const __mmask8 v0 = valid(b), v1 = b + 1 < c1 ? valid(b + 1) : (__mmask8)0;
            if (W == 6)
              binary_tile<QT, 6>(kb, W, qp + qa * W, nq, b * 8, v0, v1, d, lists.data() + (qa - q0), hb.data() + (qa - q0));
            else
              binary_tile<QT, 0>(kb, W, qp + qa * W, nq, b * 8, v0, v1, d, lists.data() + (qa - q0), hb.data() + (qa - q0));
          }
#else
          for (int64_t b = c0; b < c1; ++b) {
            const uint64_t* kb = kt.data() + (b - c0) * W * 8;
            for (int i = 0; i < nq; ++i) {
              TopK& L = lists[qa + i - q0];
              for (int l = 0; l < 8; ++l) {
                const int64_t j = b * 8 + l;
                if (j >= n) break;
                int64_t h = 0;
                for (int64_t w = 0; w < W; ++w) h += __builtin_popcountll(kb[w * 8 + l] ^ qp[(qa + i) * W + w]);
                L.push((float)(d - 2 * h), j);
              }
            }
          }
#endif
        }
      }
    }
  });
  return {vals, idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(hotpath, CPU, m) {
  m.impl("embedding_search_int8", &embedding_search_int8);
  m.impl("embedding_search_binary", &embedding_search_binary);
}
