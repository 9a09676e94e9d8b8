// Low-bit float and ternary linear kernels (issue 7): FP4 (MXFP4 / NVFP4), FP8 (E4M3 / E5M2)
// weight-only, and ternary weights with int8 activations. Layouts: python/hotpath/reference/quant_lowbit.py.
//
// FP4 decode is a table lookup: per scale block the 16-entry E2M1 table is multiplied by the block
// scale once, and vpermps maps 16 nibble indices (zero-extended bytes; vpermps reads only the low
// 4 bits of each lane, the high nibble is a 4-bit shift away) straight to scaled weights.
// FP8 decode is bit arithmetic: an E4M3 byte moved into an fp16 (sign, exponent, mantissa shifted)
// is the same value times 2^-8 (subnormals included), an E5M2 byte is the top half of an fp16;
// vcvtph2ps then gives float32. Ternary weights are two bit planes used as AVX-512 byte masks
// (64 weights a step): z = x where pos, -x where neg, then vpdpbusd(acc, all-ones, z) sums the
// bytes into int32 lanes, so no weight is ever multiplied.
// M <= 16 runs the decode-and-FMA kernels; larger M dequantizes tiles of rows to float32 in parallel
// and calls at::mm (compute-bound there, the decode is amortized over M).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

float e2m1_value(int c) {
  static const float t[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
  return t[c & 15];
}

float e4m3_value(int c) {
  int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
  float v;
  if (e == 15 && m == 7) return NAN;
  if (e == 0) v = std::ldexp((float)m, -9);
  else v = std::ldexp(1.f + m / 8.f, e - 7);
  return s ? -v : v;
}

float e5m2_value(int c) {
  int s = c >> 7, e = (c >> 2) & 31, m = c & 3;
  float v;
  if (e == 31) v = m ? NAN : INFINITY;
  else if (e == 0) v = std::ldexp((float)m, -16);
  else v = std::ldexp(1.f + m / 4.f, e - 15);
  return s ? -v : v;
}

float e8m0_value(int c) { return c == 255 ? NAN : std::ldexp(1.f, c - 127); }

struct Tables {
  float e4m3[256], e5m2[256], e8m0[256];
  // the 16 E2M1 values times each of the 256 block scales (E8M0 for MXFP4, E4M3 for NVFP4): one
  // 64-byte load gives a block's scaled decode table (no broadcast and multiply per block)
  alignas(64) float fp4_e8m0[256 * 16];
  alignas(64) float fp4_e4m3[256 * 16];
  Tables() {
    for (int c = 0; c < 256; ++c) { e4m3[c] = e4m3_value(c); e5m2[c] = e5m2_value(c); e8m0[c] = e8m0_value(c); }
    for (int c = 0; c < 256; ++c)
      for (int i = 0; i < 16; ++i) {
        fp4_e8m0[c * 16 + i] = e2m1_value(i) * e8m0[c];
        fp4_e4m3[c * 16 + i] = e2m1_value(i) * e4m3[c];
      }
  }
};
const Tables& tables() { static Tables t; return t; }

// ---------------------------------------------------------------- FP4
struct Fp4W {
  const uint8_t* packed; const uint8_t* scales; int64_t N, K, rowbytes, nblk, block; const float* stab; float gscale;
  const float* ptab;  // (256, 16): e2m1 value * block scale, per scale code
};

// Dequantize rows [n0, n1) to out (row stride K), float32: (e2m1 * block_scale) * tensor_scale.
void fp4_dequant_rows(const Fp4W& w, int64_t n0, int64_t n1, float* out) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* p = w.packed + n * w.rowbytes;
    const uint8_t* sc = w.scales + n * w.nblk;
    float* o = out + (n - n0) * w.K;
    int64_t k = 0;
#ifdef __AVX512F__
    const __m512 g = _mm512_set1_ps(w.gscale);
    for (; k + 32 <= w.K; k += 32) {
      __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + k / 2)));
      __m512 t0 = _mm512_load_ps(w.ptab + 16 * sc[k / w.block]);
      __m512 t1 = _mm512_load_ps(w.ptab + 16 * sc[(k + 16) / w.block]);
      _mm512_storeu_ps(o + k, _mm512_mul_ps(_mm512_permutexvar_ps(idx, t0), g));
      _mm512_storeu_ps(o + k + 16, _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), t1), g));
    }
#endif
    for (; k < w.K; ++k) {
      int64_t c = k >> 5, j = k & 31;
      int code = j < 16 ? (p[c * 16 + j] & 15) : (p[c * 16 + j - 16] >> 4);
      o[k] = (e2m1_value(code) * w.stab[sc[k / w.block]]) * w.gscale;
    }
  }
}

// y[m, n] for rows [n0, n1) of W and MM rows of x (MM = 1..4), decode + FMA.
template <int MM>
void fp4_gemv_rows(const Fp4W& w, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t K = w.K, nfull = K / 32, tail = K % 32;  // tail is 0 or 16 (K % 16 == 0)
#ifdef __AVX512F__
  const bool nv = w.block == 16;
  int64_t n = n0;
  constexpr int R = MM == 1 ? 4 : 2;  // rows of W at once: independent FMA chains
  for (; n + R <= n1; n += R) {
    __m512 acc[MM][R][2];
    for (int m = 0; m < MM; ++m) for (int r = 0; r < R; ++r) acc[m][r][0] = acc[m][r][1] = _mm512_setzero_ps();
    for (int64_t c = 0; c < nfull; ++c) {
      __m512 wl[R], wh[R];
      for (int r = 0; r < R; ++r) {
        const uint8_t* p = w.packed + (n + r) * w.rowbytes + c * 16;
        const uint8_t* sc = w.scales + (n + r) * w.nblk;
        __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
        __m512 t0, t1;
        if (nv) {
          t0 = _mm512_load_ps(w.ptab + 16 * sc[2 * c]);
          t1 = _mm512_load_ps(w.ptab + 16 * sc[2 * c + 1]);
        } else {
          t0 = t1 = _mm512_load_ps(w.ptab + 16 * sc[c]);
        }
        wl[r] = _mm512_permutexvar_ps(idx, t0);
        wh[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), t1);
      }
      for (int m = 0; m < MM; ++m) {
        __m512 xl = _mm512_loadu_ps(x + m * ldx + c * 32), xh = _mm512_loadu_ps(x + m * ldx + c * 32 + 16);
        for (int r = 0; r < R; ++r) {
          acc[m][r][0] = _mm512_fmadd_ps(wl[r], xl, acc[m][r][0]);
          acc[m][r][1] = _mm512_fmadd_ps(wh[r], xh, acc[m][r][1]);
        }
      }
    }
    if (tail) {
      const int64_t c = nfull;
      for (int r = 0; r < R; ++r) {
        const uint8_t* p = w.packed + (n + r) * w.rowbytes + c * 16;
        const uint8_t* sc = w.scales + (n + r) * w.nblk;
        __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
        __m512 wl = _mm512_permutexvar_ps(idx, _mm512_load_ps(w.ptab + 16 * sc[(c * 32) / w.block]));
        for (int m = 0; m < MM; ++m) acc[m][r][0] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(x + m * ldx + c * 32), acc[m][r][0]);
      }
    }
    for (int m = 0; m < MM; ++m)
      for (int r = 0; r < R; ++r)
        y[m * ldy + n + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][r][0], acc[m][r][1])) * w.gscale;
  }
  if (n < n1) {
    std::vector<float> row(K);
    for (; n < n1; ++n) {
      Fp4W one = w;
      fp4_dequant_rows(one, n, n + 1, row.data());
      for (int m = 0; m < MM; ++m) {
        __m512 acc = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(row.data() + k), _mm512_loadu_ps(x + m * ldx + k), acc);
        float s = _mm512_reduce_add_ps(acc);
        for (; k < K; ++k) s += row[k] * x[m * ldx + k];
        y[m * ldy + n] = s;
      }
    }
  }
#else
  std::vector<float> row(K);
  for (int64_t n = n0; n < n1; ++n) {
    fp4_dequant_rows(w, n, n + 1, row.data());
    for (int m = 0; m < MM; ++m) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += row[k] * x[m * ldx + k];
      y[m * ldy + n] = s;
    }
  }
#endif
}

// Shared driver: M <= 16 -> decode kernels (4 activation rows per pass); larger M -> tiles dequantized in parallel + at::mm.
template <typename GemvFn, typename DequantFn>
at::Tensor run_linear(const at::Tensor& x, int64_t N, int64_t K, GemvFn gemv, DequantFn dequant, const std::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (M <= 16) {
    at::parallel_for(0, (N + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
      const int64_t n0 = b0 * 16, n1 = std::min(N, b1 * 16);
      for (int64_t m = 0; m < M;) {
        const int64_t mm = std::min<int64_t>(4, M - m);
        gemv(mm, xp + m * K, K, yp + m * N, N, n0, n1);
        m += mm;
      }
    });
  } else {
    const int64_t TN = std::max<int64_t>(64, std::min<int64_t>(N, (int64_t)(4 << 20) / std::max<int64_t>(K, 1)));
    at::Tensor wt = at::empty({std::min(TN, N), K}, x.options());
    for (int64_t t0 = 0; t0 < N; t0 += TN) {
      const int64_t t1 = std::min(N, t0 + TN);
      float* wp = wt.data_ptr<float>();
      at::parallel_for(t0, t1, 8, [&](int64_t a, int64_t b) { dequant(a, b, wp + (a - t0) * K); });
      y.narrow(1, t0, t1 - t0).copy_(at::mm(x, wt.narrow(0, 0, t1 - t0).t()));
    }
  }
  if (bias.has_value()) y.add_(bias->to(at::kFloat).view({1, N}));
  return y;
}

void check_x(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be a contiguous 2-D float32 tensor");
  TORCH_CHECK(x.size(1) == K, "x has ", x.size(1), " features, the weight expects ", K);
}

void check_bias(const std::optional<at::Tensor>& bias, int64_t N) {
  if (bias.has_value()) TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N && bias->is_contiguous(), "bias must be (N,) contiguous");
}

at::Tensor fp4_linear(at::Tensor x, at::Tensor packed, at::Tensor scales, int64_t scale_kind, int64_t block,
                      at::Tensor tensor_scale, std::optional<at::Tensor> bias) {
  TORCH_CHECK(block == 16 || block == 32, "block must be 16 or 32");
  TORCH_CHECK(scale_kind == 0 || scale_kind == 1, "scale_kind must be 0 (E8M0) or 1 (E4M3)");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.is_contiguous(), "packed must be contiguous (N, K/2) uint8");
  TORCH_CHECK(scales.dim() == 2 && scales.scalar_type() == at::kByte && scales.is_contiguous(), "scales must be contiguous uint8 (N, K/block)");
  TORCH_CHECK(tensor_scale.numel() == 1 && tensor_scale.scalar_type() == at::kFloat, "tensor_scale must be one float32");
  const int64_t N = packed.size(0), K = x.size(1);
  check_x(x, K);
  TORCH_CHECK(K % block == 0, "K must be a multiple of the block");
  TORCH_CHECK(packed.size(1) == (K + 31) / 32 * 16, "packed has the wrong row length for K = ", K);
  TORCH_CHECK(scales.size(0) == N && scales.size(1) == K / block, "scales must be (N, K / block)");
  check_bias(bias, N);
  Fp4W w{packed.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), N, K, packed.size(1), K / block, block,
         scale_kind == 0 ? tables().e8m0 : tables().e4m3, tensor_scale.item<float>(),
         scale_kind == 0 ? tables().fp4_e8m0 : tables().fp4_e4m3};
  auto gemv = [&](int64_t mm, const float* xp, int64_t ldx, float* yp, int64_t ldy, int64_t n0, int64_t n1) {
    if (mm == 1) fp4_gemv_rows<1>(w, xp, ldx, yp, ldy, n0, n1);
    else if (mm == 2) fp4_gemv_rows<2>(w, xp, ldx, yp, ldy, n0, n1);
    else if (mm == 3) fp4_gemv_rows<3>(w, xp, ldx, yp, ldy, n0, n1);
    else fp4_gemv_rows<4>(w, xp, ldx, yp, ldy, n0, n1);
  };
  auto dq = [&](int64_t a, int64_t b, float* out) { fp4_dequant_rows(w, a, b, out); };
  return run_linear(x, N, K, gemv, dq, bias);
}

at::Tensor fp4_dequantize(at::Tensor packed, at::Tensor scales, int64_t scale_kind, int64_t block, at::Tensor tensor_scale, int64_t K) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() && scales.is_contiguous() && scales.scalar_type() == at::kByte, "uint8 contiguous inputs");
  TORCH_CHECK(K % block == 0 && packed.size(1) == (K + 31) / 32 * 16 && scales.size(1) == K / block, "bad shapes");
  const int64_t N = packed.size(0);
  Fp4W w{packed.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), N, K, packed.size(1), K / block, block,
         scale_kind == 0 ? tables().e8m0 : tables().e4m3, tensor_scale.item<float>(),
         scale_kind == 0 ? tables().fp4_e8m0 : tables().fp4_e4m3};
  at::Tensor out = at::empty({N, K}, packed.options().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t a, int64_t b) { fp4_dequant_rows(w, a, b, op + a * K); });
  return out;
}

// ---------------------------------------------------------------- FP8
struct Fp8W { const uint8_t* codes; const float* scales; int64_t N, K; bool e4m3; };

#ifdef __AVX512F__
// 32 FP8 codes -> two vectors of 16 float32 (E4M3: value * 2^-8; E5M2: exact value).
inline void fp8_decode32(const uint8_t* p, bool e4m3, __m512& lo, __m512& hi) {
  __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)p));
  __m512i h;
  if (e4m3) {
    h = _mm512_or_si512(_mm512_slli_epi16(_mm512_and_si512(v, _mm512_set1_epi16(0x80)), 8),
                        _mm512_slli_epi16(_mm512_and_si512(v, _mm512_set1_epi16(0x7F)), 7));
    // S.1111.111 is NaN in E4M3 but a finite fp16 after the shift: map it to an fp16 NaN.
    __mmask32 nan = _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, _mm512_set1_epi16(0x7F)), _mm512_set1_epi16(0x7F));
    h = _mm512_mask_mov_epi16(h, nan, _mm512_set1_epi16(0x7E00));
  } else {
    h = _mm512_slli_epi16(v, 8);
  }
  lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
  hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}
#endif

void fp8_dequant_rows(const Fp8W& w, int64_t n0, int64_t n1, float* out) {
  const float* tab = w.e4m3 ? tables().e4m3 : tables().e5m2;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* c = w.codes + n * w.K;
    float s = w.scales[n];
    float* o = out + (n - n0) * w.K;
    int64_t k = 0;
#ifdef __AVX512F__
    const __m512 sv = _mm512_set1_ps(w.e4m3 ? s * 256.f : s);
    for (; k + 32 <= w.K; k += 32) {
      __m512 lo, hi;
      fp8_decode32(c + k, w.e4m3, lo, hi);
      _mm512_storeu_ps(o + k, _mm512_mul_ps(lo, sv));
      _mm512_storeu_ps(o + k + 16, _mm512_mul_ps(hi, sv));
    }
#endif
    for (; k < w.K; ++k) o[k] = tab[c[k]] * s;
  }
}

template <int MM>
void fp8_gemv_rows(const Fp8W& w, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t K = w.K;
  const float* tab = w.e4m3 ? tables().e4m3 : tables().e5m2;
  int64_t n = n0;
#ifdef __AVX512F__
  const float post = w.e4m3 ? 256.f : 1.f;  // the fp16 holds the E4M3 value times 2^-8
  constexpr int R = MM == 1 ? 4 : 2;
  for (; n + R <= n1; n += R) {
    __m512 acc[MM][R][2];
    for (int m = 0; m < MM; ++m) for (int r = 0; r < R; ++r) acc[m][r][0] = acc[m][r][1] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      __m512 lo[R], hi[R];
      for (int r = 0; r < R; ++r) fp8_decode32(w.codes + (n + r) * K + k, w.e4m3, lo[r], hi[r]);
      for (int m = 0; m < MM; ++m) {
        __m512 xl = _mm512_loadu_ps(x + m * ldx + k), xh = _mm512_loadu_ps(x + m * ldx + k + 16);
        for (int r = 0; r < R; ++r) {
          acc[m][r][0] = _mm512_fmadd_ps(lo[r], xl, acc[m][r][0]);
          acc[m][r][1] = _mm512_fmadd_ps(hi[r], xh, acc[m][r][1]);
        }
      }
    }
    for (int m = 0; m < MM; ++m)
      for (int r = 0; r < R; ++r) {
        float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][r][0], acc[m][r][1])) * post;
        for (int64_t kk = k; kk < K; ++kk) s += tab[w.codes[(n + r) * K + kk]] * x[m * ldx + kk];
        y[m * ldy + n + r] = s * w.scales[n + r];
      }
  }
#endif
  for (; n < n1; ++n)
    for (int m = 0; m < MM; ++m) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += tab[w.codes[n * K + k]] * x[m * ldx + k];
      y[m * ldy + n] = s * w.scales[n];
    }
}

at::Tensor fp8_linear(at::Tensor x, at::Tensor codes, at::Tensor scales, c10::string_view fmt, std::optional<at::Tensor> bias) {
  TORCH_CHECK(fmt == "e4m3" || fmt == "e5m2", "fmt must be \"e4m3\" or \"e5m2\"");
  const bool e4m3 = fmt == "e4m3";
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte && codes.is_contiguous(), "codes must be contiguous (N, K) uint8");
  TORCH_CHECK(scales.dim() == 1 && scales.scalar_type() == at::kFloat && scales.size(0) == codes.size(0) && scales.is_contiguous(), "scales must be (N,) float32");
  const int64_t N = codes.size(0), K = codes.size(1);
  check_x(x, K);
  check_bias(bias, N);
  Fp8W w{codes.data_ptr<uint8_t>(), scales.data_ptr<float>(), N, K, e4m3};
  auto gemv = [&](int64_t mm, const float* xp, int64_t ldx, float* yp, int64_t ldy, int64_t n0, int64_t n1) {
    if (mm == 1) fp8_gemv_rows<1>(w, xp, ldx, yp, ldy, n0, n1);
    else if (mm == 2) fp8_gemv_rows<2>(w, xp, ldx, yp, ldy, n0, n1);
    else if (mm == 3) fp8_gemv_rows<3>(w, xp, ldx, yp, ldy, n0, n1);
    else fp8_gemv_rows<4>(w, xp, ldx, yp, ldy, n0, n1);
  };
  auto dq = [&](int64_t a, int64_t b, float* out) { fp8_dequant_rows(w, a, b, out); };
  return run_linear(x, N, K, gemv, dq, bias);
}

// ---------------------------------------------------------------- Ternary
// Per-row int8 activations (as the reference): xq = rint(x * (127 / amax)), step = amax / 127.
// xq is zero-padded to Kp; xn = -xq (no overflow: |xq| <= 127).
void quantize_rows_int8(const float* x, int64_t K, int64_t Kp, int8_t* xq, int8_t* xn, float* step) {
  float amax = 0.f;
  bool finite = true;
  for (int64_t k = 0; k < K; ++k) { float a = std::fabs(x[k]); finite &= std::isfinite(x[k]); amax = a > amax ? a : amax; }
  std::memset(xq, 0, Kp);
  std::memset(xn, 0, Kp);
  if (!finite) { *step = NAN; return; }
  if (amax == 0.f) { *step = 0.f; return; }
  const float inv = 127.f / amax;
  for (int64_t k = 0; k < K; ++k) {
    float v = std::nearbyint(x[k] * inv);
    v = v > 127.f ? 127.f : (v < -127.f ? -127.f : v);
    xq[k] = (int8_t)v;
    xn[k] = (int8_t)-v;
  }
  *step = amax / 127.f;
}

// int32 sums over rows [n0, n1) (n1 - n0 <= 16) for one activation row: add where pos, subtract
// where neg. out is indexed from n0.
// AVX-512: 64 weights per step; the two bit planes (64-bit words, used as byte masks) select
// z = x where pos, -x where neg, 0 elsewhere (two masked byte moves), and vpdpbusd with an all-ones
// u8 operand sums each 4 bytes of z into an int32 lane: a horizontal add, the weight path has no
// multiplications. 3 vector uops per 64 weights (the int16 mask add / sub needed 4).
void ternary_rows(const uint32_t* pos, const uint32_t* neg, int64_t nw, const int8_t* xq, const int8_t* xn, int32_t* out,
                  int64_t n0, int64_t n1) {
  int64_t n = n0;
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
  constexpr int R = 4;
  const int64_t nv = nw / 2;  // full 64-bit words
  const __m512i ones = _mm512_set1_epi8(1);
  for (; n + R <= n1; n += R) {
    __m512i acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    const uint32_t* pr = pos + n * nw;
    const uint32_t* nr = neg + n * nw;
    int64_t v = 0;
    for (; v + 2 <= nv; v += 2) {
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m512i xv = _mm512_loadu_si512((const void*)(xq + (v + h) * 64));
        const __m512i xnv = _mm512_loadu_si512((const void*)(xn + (v + h) * 64));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          uint64_t pw, nwd;
          std::memcpy(&pw, pr + r * nw + (v + h) * 2, 8);
          std::memcpy(&nwd, nr + r * nw + (v + h) * 2, 8);
          __m512i z = _mm512_maskz_mov_epi8(_cvtu64_mask64(pw), xv);
          z = _mm512_mask_mov_epi8(z, _cvtu64_mask64(nwd), xnv);
          acc[r][h] = _mm512_dpbusd_epi32(acc[r][h], ones, z);
        }
      }
    }
    for (; v * 2 < nw; ++v) {  // a last 64-bit word, or a last 32-bit word (x is zero past Kp)
      const __m512i xv = _mm512_loadu_si512((const void*)(xq + v * 64));
      const __m512i xnv = _mm512_loadu_si512((const void*)(xn + v * 64));
      const bool half = v * 2 + 1 == nw;
      for (int r = 0; r < R; ++r) {
        uint64_t pw = pr[r * nw + v * 2], nwd = nr[r * nw + v * 2];
        if (!half) { pw |= (uint64_t)pr[r * nw + v * 2 + 1] << 32; nwd |= (uint64_t)nr[r * nw + v * 2 + 1] << 32; }
        __m512i z = _mm512_maskz_mov_epi8(_cvtu64_mask64(pw), xv);
        z = _mm512_mask_mov_epi8(z, _cvtu64_mask64(nwd), xnv);
        acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], ones, z);
      }
    }
    for (int r = 0; r < R; ++r) out[n + r - n0] = _mm512_reduce_add_epi32(_mm512_add_epi32(acc[r][0], acc[r][1]));
  }
#endif
  for (; n < n1; ++n) {
    int32_t s = 0;
    for (int64_t w = 0; w < nw; ++w) {
      uint32_t p = pos[n * nw + w], q = neg[n * nw + w];
      // branch-free: (bit ? -1 : 0) & x
      for (int j = 0; j < 32; ++j) {
        const int32_t xv = xq[w * 32 + j];
        s += (-(int32_t)((p >> j) & 1u) & xv) - (-(int32_t)((q >> j) & 1u) & xv);
      }
    }
    out[n - n0] = s;
  }
}

at::Tensor ternary_linear(at::Tensor x, at::Tensor pos, at::Tensor neg, at::Tensor wscale, std::optional<at::Tensor> bias) {
  TORCH_CHECK(pos.dim() == 2 && pos.scalar_type() == at::kInt && pos.is_contiguous(), "pos must be contiguous (N, ceil(K/32)) int32");
  TORCH_CHECK(neg.sizes() == pos.sizes() && neg.scalar_type() == at::kInt && neg.is_contiguous(), "neg must match pos");
  TORCH_CHECK(wscale.numel() == 1 && wscale.scalar_type() == at::kFloat, "wscale must be one float32");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be a contiguous 2-D float32 tensor");
  const int64_t M = x.size(0), K = x.size(1), N = pos.size(0), nw = pos.size(1);
  TORCH_CHECK(nw == (K + 31) / 32, "bit planes have ", nw, " words per row, K = ", K, " needs ", (K + 31) / 32);
  check_bias(bias, N);
  const int64_t Kp = (nw + 1) / 2 * 64;  // whole 64-weight steps (zero activations past K)
  // one small buffer for the quantized activations (x and -x) and their steps
  std::vector<int8_t> xbuf(std::max<int64_t>(1, 2 * M * Kp));
  std::vector<float> step(std::max<int64_t>(1, M));
  int8_t* xq = xbuf.data();
  int8_t* xn = xbuf.data() + M * Kp;
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, M, 1, [&](int64_t a, int64_t b) {
    for (int64_t m = a; m < b; ++m) quantize_rows_int8(xp + m * K, K, Kp, xq + m * Kp, xn + m * Kp, step.data() + m);
  });
  at::Tensor y = at::empty({M, N}, x.options());
  float* yp = y.data_ptr<float>();
  const float ws = wscale.item<float>();
  const uint32_t* pp = (const uint32_t*)pos.data_ptr<int32_t>();
  const uint32_t* np = (const uint32_t*)neg.data_ptr<int32_t>();
  // contiguous 16-row slabs per thread (parallel_for hands each thread one contiguous range)
  at::parallel_for(0, (N + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
    int32_t acc[16];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * 16, n1 = std::min(N, n0 + 16);
      for (int64_t m = 0; m < M; ++m) {  // the 16-row slab of bit planes stays in L1 across m
        ternary_rows(pp, np, nw, xq + m * Kp, xn + m * Kp, acc, n0, n1);
        const float f = step[m] * ws;
        for (int64_t n = n0; n < n1; ++n) yp[m * N + n] = (float)acc[n - n0] * f;
      }
    }
  });
  // bias in a separate pass: a fused multiply-add here would round differently from the reference
  if (bias.has_value()) y.add_(bias->view({1, N}));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(hotpath, CPU, m) {
  m.impl("fp4_linear", &fp4_linear);
  m.impl("fp4_dequantize", &fp4_dequantize);
  m.impl("fp8_linear", &fp8_linear);
  m.impl("ternary_linear", &ternary_linear);
}
