// Portable SIMD helpers for hotpath's CPU kernels.
//
// GCC/Clang vector extensions: one source that compiles to AVX-512 zmm code under
// -march=native on AVX-512 hosts, to pairs of ymm ops on AVX2 hosts and to NEON on ARM, so no
// host ever meets an instruction it lacks. Vectors hold 64 bytes (16 floats / 8 doubles).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace hotpath {
namespace simd {

typedef float vf32 __attribute__((vector_size(64), aligned(64)));
typedef double vf64 __attribute__((vector_size(64), aligned(64)));
typedef int32_t vi32 __attribute__((vector_size(64), aligned(64)));
typedef int64_t vi64 __attribute__((vector_size(64), aligned(64)));

template <typename T> struct Vec;

template <> struct Vec<float> {
  using V = vf32;
  using I = vi32;
  static constexpr int W = 16;
  static inline V load(const float* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
  static inline void store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static inline V set1(float a) { return V{} + a; }
#if defined(__AVX512F__)
  static inline float hsum(V v) { return _mm512_reduce_add_ps((__m512)v); }
  static inline float hmax(V v) { return _mm512_reduce_max_ps((__m512)v); }
#else
  static inline float hsum(V v) { float s = 0; for (int i = 0; i < W; ++i) s += v[i]; return s; }
  static inline float hmax(V v) { float s = v[0]; for (int i = 1; i < W; ++i) s = v[i] > s ? v[i] : s; return s; }
#endif
  static inline V vmax(V a, V b) { return a > b ? a : b; }
  // exp for arguments <= 0 (scores minus a running max); -inf and anything below the float
  // range give exactly 0. Cephes-style: 2^n * P(r), r = x - n ln2 in [-ln2/2, ln2/2], ~1 ulp.
  static inline V exp_nonpos(V x) {
#if defined(__AVX512F__)
    // 2^t = 2^n * 2^f with f in [-1/2, 1/2]; vscalefps applies 2^n (NaN stays NaN): about half
    // the instructions of the integer-exponent version below.
    const __m512 t = _mm512_mul_ps((__m512)x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    // results below 2^-126 are flushed to 0: denormal sums cost microcode assists (10x slower)
    const __mmask16 normal = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    return (V)_mm512_maskz_scalef_ps(normal, p, n);
#else
    return exp_nonpos_generic(x);
#endif
  }
  static inline V exp_nonpos_generic(V x) {
    const V lo = set1(-87.33654f);
    I under = x < lo;          // -inf and underflow -> exactly 0; NaN compares false and stays NaN
    x = x < lo ? lo : x;
    V n = x * 1.44269504088896341f;
    n = (n + 12582912.0f) - 12582912.0f;  // round to nearest (|n| < 2^22)
    V r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    V p = set1(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    I e = (__builtin_convertvector(n, I) + 127) << 23;
    V res = p * (V)e;
    return (V)((I)res & ~under);
  }
};

template <> struct Vec<double> {
  using V = vf64;
  using I = vi64;
  static constexpr int W = 8;
  static inline V load(const double* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
  static inline void store(double* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static inline V set1(double a) { return V{} + a; }
  static inline double hsum(V v) { double s = 0; for (int i = 0; i < W; ++i) s += v[i]; return s; }
  static inline double hmax(V v) { double s = v[0]; for (int i = 1; i < W; ++i) s = v[i] > s ? v[i] : s; return s; }
  static inline V vmax(V a, V b) { return a > b ? a : b; }
  // float64 is the accuracy path (gradcheck, references): libm exp, lane by lane.
  static inline V exp_nonpos(V x) { V r; for (int i = 0; i < W; ++i) r[i] = std::exp(x[i]); return r; }
};

template <typename T> inline T neg_inf() { return -std::numeric_limits<T>::infinity(); }

// sum_j x_j y_j over m entries, vector accumulation then a horizontal sum
template <typename T>
inline T dot(const T* x, const T* y, int64_t m) {
  using VV = Vec<T>;
  typename VV::V s{};
  int64_t j = 0;
  for (; j + VV::W <= m; j += VV::W) s += VV::load(x + j) * VV::load(y + j);
  T r = VV::hsum(s);
  for (; j < m; ++j) r += x[j] * y[j];
  return r;
}

}  // namespace simd
}  // namespace hotpath
