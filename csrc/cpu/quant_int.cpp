// Integer quantized linear layers on CPU: W8A16, W8A8 (dynamic), W4A16, W4A8 (dynamic).
//
// Layouts are documented in python/hotpath/reference/quant_int.py (the reference unpacks them).
// Integer paths accumulate exactly in int32:
//  - AVX-512 VNNI (_mm512_dpbusd_epi32, u8 x s8 -> s32, 4 products per lane, no saturation).
//    W8A8 feeds activations as u8 = qx + 128 and removes 128 * colsum(w) in the epilogue;
//    W4A8 feeds the unsigned nibbles as the u8 operand and the signed activations as s8, and
//    removes zero_point * sum(qx over the group).
//  - AVX2: _mm256_maddubs_epi16 + _mm256_madd_epi16. maddubs saturates at 16 bits, so operands
//    are kept small enough that it never does: W8A8 uses |qx| <= 127 as the u8 operand and
//    sign(w, qx) (|w| <= 127, the formats never emit -128) as s8: 2 * 127 * 127 < 32767;
//    W4A8 uses nibbles <= 15 against |qx| <= 127.
//  - scalar fallback otherwise.
// The ISA is chosen at compile time (built with -march=native).
// Weight-only GEMM (M > GEMV_MAX_M) dequantizes blocks of weight rows to float and calls at::mm.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__linux__)
#define HP_Q_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
#define HP_Q_VNNI512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define HP_Q_AVX2 1
#endif

namespace {

constexpr int64_t GEMV_MAX_M = 4;
// below this many rows the W8A8 GEMM stays on VNNI (AMX tiles hold 16 rows)
constexpr int64_t AMX_MIN_M = 8;

inline int64_t roundup(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// ------------------------------------------------------------------ activation quantization
// Per token, symmetric: sx = amax / 127 (1 for an all-zero row), q = round_half_even(x / sx)
// clamped to [-127, 127]. A non-finite value makes sx NaN (the output row is NaN) and q = 0.
inline float quantize_row(const float* x, int64_t K, int8_t* q) {
  float amax = 0.f;
  bool finite = true;
  int64_t k = 0;
#if defined(__AVX512F__)
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  const __m512 vinf = _mm512_set1_ps(INFINITY);
  for (; k + 16 <= K; k += 16) {
    __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + k));
    bad |= _mm512_cmp_ps_mask(a, vinf, _CMP_NLT_UQ);  // inf or NaN
    vmax = _mm512_max_ps(vmax, a);
  }
  finite = bad == 0;
  amax = _mm512_reduce_max_ps(vmax);
#endif
  for (; k < K; ++k) {
    float a = std::fabs(x[k]);
    if (!(a < INFINITY)) finite = false;
    amax = std::max(amax, a);
  }
  if (!finite) {
    std::memset(q, 0, K);
    return NAN;
  }
  const float sx = amax > 0.f ? amax / 127.f : 1.f;
  k = 0;
#if defined(__AVX512F__)
  const __m512 vs = _mm512_set1_ps(sx), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  for (; k + 16 <= K; k += 16) {
    __m512 v = _mm512_div_ps(_mm512_loadu_ps(x + k), vs);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
  }
#endif
  for (; k < K; ++k) {
    float v = std::nearbyint(x[k] / sx);
    v = std::min(std::max(v, -127.f), 127.f);
    q[k] = static_cast<int8_t>(v);
  }
  return sx;
}

// ------------------------------------------------------------------ integer vector helpers
#if HP_Q_VNNI512
using ivec = __m512i;
using fvec = __m512;
constexpr int L = 16;  // int32 lanes (= output channels) per vector
inline ivec iload(const void* p) { return _mm512_loadu_si512(p); }
inline void istore(void* p, ivec v) { _mm512_storeu_si512(p, v); }
inline ivec izero() { return _mm512_setzero_si512(); }
inline ivec bcast32(const void* p) { int32_t v; std::memcpy(&v, p, 4); return _mm512_set1_epi32(v); }
// acc += sum over 4 bytes of u[i] (unsigned) * s[i] (signed)
inline ivec dp_us(ivec acc, ivec u, ivec s) { return _mm512_dpbusd_epi32(acc, u, s); }
// W8A8: activation operand is qx + 128 (u8), weights s8
constexpr int32_t ACT_OFFSET = 128;
inline ivec dp_act_w8(ivec acc, ivec a, ivec w) { return _mm512_dpbusd_epi32(acc, a, w); }
inline ivec nib_lo(ivec p) { return _mm512_and_si512(p, _mm512_set1_epi8(0x0F)); }
inline ivec nib_hi(ivec p) { return _mm512_and_si512(_mm512_srli_epi16(p, 4), _mm512_set1_epi8(0x0F)); }
inline fvec fzero() { return _mm512_setzero_ps(); }
inline fvec floadu(const float* p) { return _mm512_loadu_ps(p); }
inline void fstoreu(float* p, fvec v) { _mm512_storeu_ps(p, v); }
inline ivec zload_u8(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline fvec group_fma(fvec f, ivec acc, ivec z, int32_t xs, fvec s) {
  ivec corr = _mm512_mullo_epi32(z, _mm512_set1_epi32(xs));
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, corr)), s, f);
}
#elif HP_Q_AVX2
using ivec = __m256i;
using fvec = __m256;
constexpr int L = 8;
inline ivec iload(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline void istore(void* p, ivec v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
inline ivec izero() { return _mm256_setzero_si256(); }
inline ivec bcast32(const void* p) { int32_t v; std::memcpy(&v, p, 4); return _mm256_set1_epi32(v); }
inline ivec dp_us(ivec acc, ivec u, ivec s) {
  // u <= 15 here (nibbles) and |s| <= 127: pair sums <= 3810, no 16-bit saturation
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
constexpr int32_t ACT_OFFSET = 0;
inline ivec dp_act_w8(ivec acc, ivec a, ivec w) {
  // a = qx (s8, |a| <= 127), w (s8, |w| <= 127): |a| * sign(w, a) keeps pairs within 2*127*127
  return dp_us(acc, _mm256_abs_epi8(a), _mm256_sign_epi8(w, a));
}
inline ivec nib_lo(ivec p) { return _mm256_and_si256(p, _mm256_set1_epi8(0x0F)); }
inline ivec nib_hi(ivec p) { return _mm256_and_si256(_mm256_srli_epi16(p, 4), _mm256_set1_epi8(0x0F)); }
inline fvec fzero() { return _mm256_setzero_ps(); }
inline fvec floadu(const float* p) { return _mm256_loadu_ps(p); }
inline void fstoreu(float* p, fvec v) { _mm256_storeu_ps(p, v); }
inline ivec zload_u8(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
inline fvec group_fma(fvec f, ivec acc, ivec z, int32_t xs, fvec s) {
  ivec corr = _mm256_mullo_epi32(z, _mm256_set1_epi32(xs));
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc, corr)), s, f);
}
#else
constexpr int32_t ACT_OFFSET = 0;
constexpr int L = 16;
#endif

// Address of column vector cv (L channels starting at channel cv * L) in a VNNI layout whose
// 16-channel blocks hold `step` bytes per k-step and `ksteps` k-steps.
template <typename T>
inline const T* vec_ptr(const T* base, int64_t cv, int64_t ksteps) {
  const int64_t ch = cv * L;
  return base + (ch / 16) * ksteps * 64 + (ch % 16) * 4;
}

// ------------------------------------------------------------------ W8A8 micro-kernel
#if HP_Q_VNNI512 || HP_Q_AVX2
// C[r][v*L + l] = sum_k A[r][k] * W[channel][k] (+ ACT_OFFSET * colsum), int32, K4 steps of 4 k.
template <int MR, int NV>
void i8_tile(const int8_t* A, int64_t lda, const int8_t* const* bp, int64_t K4, int32_t* C, int64_t ldc) {
  // fully unrolled so GCC keeps the MR x NV accumulators in registers (not on the stack)
  ivec acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = izero();
  const int8_t* b0 = bp[0];
  const int64_t boff[4] = {0, NV > 1 ? bp[1 < NV ? 1 : 0] - b0 : 0, NV > 2 ? bp[2 < NV ? 2 : 0] - b0 : 0,
                           NV > 3 ? bp[3 < NV ? 3 : 0] - b0 : 0};
  for (int64_t k4 = 0; k4 < K4; ++k4) {
    ivec b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) b[v] = iload(b0 + boff[v] + k4 * 64);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const ivec a = bcast32(A + r * lda + k4 * 4);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = dp_act_w8(acc[r][v], a, b[v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) istore(C + r * ldc + v * L, acc[r][v]);
}

// Full-width tile (4 vectors) with named accumulators: GCC spills arrays of this many vector
// registers to the stack, so the hot kernel spells them out. Rows >= MR are compiled away.
template <int MR>
void i8_tile_nv4(const int8_t* A, int64_t lda, const int8_t* const* bp, int64_t K4, int32_t* C, int64_t ldc) {
#define HP_DECL(r) ivec c##r##0 = izero(), c##r##1 = izero(), c##r##2 = izero(), c##r##3 = izero();
  HP_DECL(0) HP_DECL(1) HP_DECL(2) HP_DECL(3) HP_DECL(4) HP_DECL(5)
#undef HP_DECL
  const int8_t *p0 = bp[0], *p1 = bp[1], *p2 = bp[2], *p3 = bp[3];
  for (int64_t k4 = 0; k4 < K4; ++k4) {
    const ivec b0 = iload(p0 + k4 * 64), b1 = iload(p1 + k4 * 64), b2 = iload(p2 + k4 * 64), b3 = iload(p3 + k4 * 64);
#define HP_ROW(r)                                        \
    if constexpr (MR > r) {                              \
      const ivec a = bcast32(A + r * lda + k4 * 4);      \
      c##r##0 = dp_act_w8(c##r##0, a, b0);               \
      c##r##1 = dp_act_w8(c##r##1, a, b1);               \
      c##r##2 = dp_act_w8(c##r##2, a, b2);               \
      c##r##3 = dp_act_w8(c##r##3, a, b3);               \
    }
    HP_ROW(0) HP_ROW(1) HP_ROW(2) HP_ROW(3) HP_ROW(4) HP_ROW(5)
#undef HP_ROW
  }
#define HP_ST(r)                                                                              \
  if constexpr (MR > r) {                                                                     \
    istore(C + r * ldc, c##r##0); istore(C + r * ldc + L, c##r##1);                           \
    istore(C + r * ldc + 2 * L, c##r##2); istore(C + r * ldc + 3 * L, c##r##3);               \
  }
  HP_ST(0) HP_ST(1) HP_ST(2) HP_ST(3) HP_ST(4) HP_ST(5)
#undef HP_ST
}

using i8_tile_fn = void (*)(const int8_t*, int64_t, const int8_t* const*, int64_t, int32_t*, int64_t);
// 6 rows x 4 vectors: 24 accumulators + 4 weight vectors + 1 broadcast fit the 32 zmm registers
constexpr int I8_MR = (L == 16 ? 6 : 4), I8_NV = 4;

template <int MR>
i8_tile_fn i8_pick_nv(int nv) {
  switch (nv) {
    case 1: return i8_tile<MR, 1>;
    case 2: return i8_tile<MR, 2>;
    case 3: return i8_tile<MR, 3>;
    default: return i8_tile_nv4<MR>;
  }
}
i8_tile_fn i8_pick(int mr, int nv) {
  switch (mr) {
    case 1: return i8_pick_nv<1>(nv);
    case 2: return i8_pick_nv<2>(nv);
    case 3: return i8_pick_nv<3>(nv);
    case 4: return i8_pick_nv<4>(nv);
#if HP_Q_VNNI512
    case 5: return i8_pick_nv<5>(nv);
    default: return i8_pick_nv<6>(nv);
#else
    default: return i8_pick_nv<4>(nv);
#endif
  }
}
#endif


// ------------------------------------------------------------------ W8A8 on AMX
// The VNNI weight layout (16 channels x 4 k per 64-byte row, k-steps consecutive) is exactly the
// AMX B-tile layout: 16 consecutive 64-byte rows = 64 k x 16 channels, loaded with stride 64.
// A tiles are 16 activation rows x 64 k (s8, no offset: _tile_dpbssd is signed x signed), so
// neither the +128 offset nor the colsum correction is needed. Used when K % 64 == 0.
#if HP_Q_AMX
// Linux keeps AMX tile data disabled until the process asks for it once.
bool amx_enabled() {
  static const bool ok = [] {
    constexpr int ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tiles 0-3: C (int32 16 x 16), 4-5: A (16 rows x 64 k), 6-7: B (16 k-steps x 64 bytes)
inline void amx_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// C[r][c] for a (16 * MB) x (16 * NB) block: A rows at A (stride lda bytes), weight blocks
// at B0, B0 + bstride; C written as int32 with row stride ldc (elements).
template <int MB, int NB>
void amx_block(const int8_t* A, int64_t lda, const int8_t* B0, int64_t bstride, int64_t K64, int32_t* C, int64_t ldc) {
  _tile_zero(0);
  if constexpr (NB > 1) _tile_zero(1);
  if constexpr (MB > 1) _tile_zero(2);
  if constexpr (MB > 1 && NB > 1) _tile_zero(3);
  for (int64_t kb = 0; kb < K64; ++kb) {
    _tile_loadd(6, B0 + kb * 1024, 64);
    if constexpr (NB > 1) _tile_loadd(7, B0 + bstride + kb * 1024, 64);
    _tile_loadd(4, A + kb * 64, lda);
    _tile_dpbssd(0, 4, 6);
    if constexpr (NB > 1) _tile_dpbssd(1, 4, 7);
    if constexpr (MB > 1) {
      _tile_loadd(5, A + 16 * lda + kb * 64, lda);
      _tile_dpbssd(2, 5, 6);
      if constexpr (NB > 1) _tile_dpbssd(3, 5, 7);
    }
  }
  const int64_t cs = ldc * 4;
  _tile_stored(0, C, cs);
  if constexpr (NB > 1) _tile_stored(1, C + 16, cs);
  if constexpr (MB > 1) _tile_stored(2, C + 16 * ldc, cs);
  if constexpr (MB > 1 && NB > 1) _tile_stored(3, C + 16 * ldc + 16, cs);
}
#endif

at::Tensor check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D (M, K), got ", x.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor");
  return x.contiguous();
}

void check_bias(const std::optional<at::Tensor>& bias, int64_t N, const char* op) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must have shape (", N, ",)");
  TORCH_CHECK(bias->scalar_type() == at::kFloat, op, ": bias must be float32");
}

at::Tensor int8_dynamic_linear(const at::Tensor& x_, const at::Tensor& qweight, const at::Tensor& scale,
                               const at::Tensor& colsum, const std::optional<at::Tensor>& bias_) {
  const char* op = "int8_dynamic_linear";
  at::Tensor x = check_x(x_, op);
  const int64_t M = x.size(0), K = x.size(1), N = scale.size(0);
  const int64_t Np = roundup(std::max<int64_t>(N, 1), 16), Kp = roundup(std::max<int64_t>(K, 1), 4), K4 = Kp / 4;
  TORCH_CHECK(qweight.scalar_type() == at::kChar && qweight.is_contiguous() && qweight.dim() == 3 &&
                  qweight.size(0) == Np / 16 && qweight.size(1) == K4 && qweight.size(2) == 64,
              op, ": qweight must be a contiguous int8 tensor of shape (", Np / 16, ", ", K4, ", 64)");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.dim() == 1 && scale.is_contiguous(), op, ": scale must be contiguous float32 (N,)");
  TORCH_CHECK(colsum.scalar_type() == at::kInt && colsum.dim() == 1 && colsum.size(0) == N && colsum.is_contiguous(),
              op, ": colsum must be contiguous int32 (N,)");
  TORCH_CHECK(K <= 65536, op, ": K must be <= 65536 for exact int32 accumulation, got ", K);
  check_bias(bias_, N, op);
  at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;

  // quantized activations, padded to Kp (padding contributes 0: padded weights are 0)
  // row stride padded by 64 bytes so consecutive rows of A do not alias in L1 (Kp is often a
  // multiple of 4 KB)
  const int64_t lda = Kp + 64;
#if HP_Q_AMX
  // AMX for GEMM when K fills whole 64-k tiles (B tiles must not run past a channel block)
  const bool use_amx = M >= AMX_MIN_M && K % 64 == 0 && amx_enabled();
#else
  const bool use_amx = false;
#endif
  // AMX multiplies signed x signed: no activation offset, no colsum correction
  const int32_t off = use_amx ? 0 : ACT_OFFSET;
  // AMX reads whole 32-row blocks: padded rows are zero (their outputs are discarded)
  const int64_t Mrows = use_amx ? roundup(M, 32) : M;
  std::vector<int8_t> A(static_cast<size_t>(Mrows * lda));
  if (Mrows > M) std::memset(A.data() + M * lda, 0, static_cast<size_t>((Mrows - M) * lda));
  std::vector<float> sx(M);
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      int8_t* q = A.data() + m * lda;
      sx[m] = quantize_row(xp + m * K, K, q);
      std::memset(q + K, 0, Kp - K);
      if (off)  // u8 = qx + 128: flip the sign bit
        for (int64_t k = 0; k < Kp; ++k) q[k] = static_cast<int8_t>(static_cast<uint8_t>(q[k]) ^ 0x80u);
    }
  });
  const int8_t* W = qweight.data_ptr<int8_t>();
  const float* sw = scale.data_ptr<float>();
  const int32_t* cs = colsum.data_ptr<int32_t>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();

  auto epilogue = [&](int64_t m, int64_t n0, int64_t nn, const int32_t* acc) {
    const float s = sx[m];
    float* yr = yp + m * N;
    for (int64_t j = 0; j < nn; ++j) {
      const int64_t n = n0 + j;
      const float t = s * sw[n];
      float v = static_cast<float>(acc[j] - off * cs[n]) * t;
      if (bp) v += bp[n];
      yr[n] = v;
    }
  };

#if HP_Q_AMX
  if (use_amx) {
    // panels of 32 channels (2 weight blocks), all rows inside: each weight panel is read from
    // memory once and reused from L2 for every 32-row block
    const int64_t nblk = Np / 16, n_panels = (nblk + 1) / 2;
    at::parallel_for(0, n_panels, 1, [&](int64_t p0, int64_t p1) {
      amx_config();
      alignas(64) int32_t C[32 * 32];
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t b0 = 2 * p, nb = std::min<int64_t>(2, nblk - b0);
        const int64_t n0 = b0 * 16, nn = std::min<int64_t>(16 * nb, N - n0);
        const int8_t* Bp = W + b0 * K4 * 64;
        for (int64_t m0 = 0; m0 < M; m0 += 32) {
          const int64_t mr = std::min<int64_t>(32, M - m0);
          const int8_t* Ap = A.data() + m0 * lda;
          if (mr > 16) {
            if (nb == 2) amx_block<2, 2>(Ap, lda, Bp, K4 * 64, K / 64, C, 32);
            else amx_block<2, 1>(Ap, lda, Bp, K4 * 64, K / 64, C, 32);
          } else {
            if (nb == 2) amx_block<1, 2>(Ap, lda, Bp, K4 * 64, K / 64, C, 32);
            else amx_block<1, 1>(Ap, lda, Bp, K4 * 64, K / 64, C, 32);
          }
          for (int64_t r = 0; r < mr; ++r) epilogue(m0 + r, n0, nn, C + r * 32);
        }
      }
      _tile_release();
    });
    return y;
  }
#endif
#if HP_Q_VNNI512 || HP_Q_AVX2
  const int64_t NR = I8_NV * L;                 // channels per tile
  const int64_t MR = (M == 1) ? 1 : I8_MR;
  const int64_t n_tiles = (N + NR - 1) / NR, m_tiles = (M + MR - 1) / MR;
  // n outer, m inner: a thread's consecutive tiles reuse one weight panel from L2
  at::parallel_for(0, n_tiles * m_tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int32_t> C(static_cast<size_t>(I8_MR * NR));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nt = t / m_tiles, mt = t % m_tiles;
      const int64_t n0 = nt * NR, m0 = mt * MR;
      const int64_t nn = std::min(NR, N - n0), mr = std::min(MR, M - m0);
      const int nv = static_cast<int>((nn + L - 1) / L);
      const int8_t* ptrs[I8_NV];
      for (int v = 0; v < nv; ++v) ptrs[v] = vec_ptr(W, n0 / L + v, K4);
      i8_pick(static_cast<int>(mr), nv)(A.data() + m0 * lda, lda, ptrs, K4, C.data(), NR);
      for (int64_t r = 0; r < mr; ++r) epilogue(m0 + r, n0, nn, C.data() + r * NR);
    }
  });
#else
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<int32_t> acc(1);
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* a = A.data() + m * lda;
      for (int64_t n = n0; n < n1; ++n) {
        const int8_t* wb = W + (n / 16) * K4 * 64 + (n % 16) * 4;
        int32_t s = 0;
        for (int64_t k = 0; k < Kp; ++k) s += static_cast<int32_t>(a[k]) * wb[(k / 4) * 64 + (k % 4)];
        acc[0] = s;
        epilogue(m, n, 1, acc.data());
      }
    }
  });
#endif
  return y;
}

// ------------------------------------------------------------------ W4A8 micro-kernel
struct I4Args {
  const int8_t* A;       // qx (M, K) s8
  int64_t lda;
  const int32_t* xsum;   // (M, ng)
  int64_t ng;
  int64_t K8;            // K / 8
  int64_t G8;            // group_size / 8
};

#if HP_Q_VNNI512 || HP_Q_AVX2
template <int MR, int NV>
void i4_tile(const I4Args& a, const uint8_t* const* bp, const float* const* sp, const uint8_t* const* zp,
             int64_t sstride, float* C, int64_t ldc) {
  fvec f[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) f[r][v] = fzero();
  for (int64_t g = 0; g < a.ng; ++g) {
    ivec acc[MR][NV];
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = izero();
    for (int64_t k8 = g * a.G8; k8 < (g + 1) * a.G8; ++k8) {
      ivec lo[NV], hi[NV];
      for (int v = 0; v < NV; ++v) {
        const ivec p = iload(bp[v] + k8 * 64);
        lo[v] = nib_lo(p);
        hi[v] = nib_hi(p);
      }
      for (int r = 0; r < MR; ++r) {
        const int8_t* ar = a.A + r * a.lda + k8 * 8;
        const ivec a0 = bcast32(ar), a1 = bcast32(ar + 4);
        for (int v = 0; v < NV; ++v) acc[r][v] = dp_us(dp_us(acc[r][v], lo[v], a0), hi[v], a1);
      }
    }
    for (int v = 0; v < NV; ++v) {
      const ivec z = zload_u8(zp[v] + g * sstride);
      const fvec s = floadu(sp[v] + g * sstride);
      for (int r = 0; r < MR; ++r) f[r][v] = group_fma(f[r][v], acc[r][v], z, a.xsum[r * a.ng + g], s);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) fstoreu(C + r * ldc + v * L, f[r][v]);
}

using i4_tile_fn = void (*)(const I4Args&, const uint8_t* const*, const float* const*, const uint8_t* const*, int64_t,
                            float*, int64_t);
constexpr int I4_MR = 4, I4_NV = 2, I4_NV_GEMV = 4;
template <int MR>
i4_tile_fn i4_pick_nv(int nv) {
  switch (nv) {
    case 1: return i4_tile<MR, 1>;
    case 2: return i4_tile<MR, 2>;
    case 3: return i4_tile<MR, 3>;
    default: return i4_tile<MR, 4>;
  }
}
i4_tile_fn i4_pick(int mr, int nv) {
  switch (mr) {
    case 1: return i4_pick_nv<1>(nv);
    case 2: return i4_pick_nv<2>(std::min(nv, 2));
    case 3: return i4_pick_nv<3>(std::min(nv, 2));
    default: return i4_pick_nv<4>(std::min(nv, 2));
  }
}
#endif

at::Tensor int4_dynamic_linear(const at::Tensor& x_, const at::Tensor& qweight, const at::Tensor& scale,
                               const at::Tensor& zero, const std::optional<at::Tensor>& bias_) {
  const char* op = "int4_dynamic_linear";
  at::Tensor x = check_x(x_, op);
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(scale.dim() == 2 && scale.scalar_type() == at::kFloat && scale.is_contiguous(), op,
              ": scale must be contiguous float32 (K / group_size, N)");
  const int64_t ng = scale.size(0), N = scale.size(1);
  TORCH_CHECK(ng >= 1 && K % ng == 0 && (K / ng) % 8 == 0, op, ": K=", K, " does not fit ", ng, " groups of a multiple of 8");
  const int64_t G = K / ng, Np = roundup(std::max<int64_t>(N, 1), 16);
  TORCH_CHECK(zero.scalar_type() == at::kByte && zero.is_contiguous() && zero.dim() == 2 && zero.size(0) == ng && zero.size(1) == N,
              op, ": zero must be contiguous uint8 (", ng, ", ", N, ")");
  TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.is_contiguous() && qweight.dim() == 3 &&
                  qweight.size(0) == Np / 16 && qweight.size(1) == K / 8 && qweight.size(2) == 64,
              op, ": qweight must be a contiguous uint8 tensor of shape (", Np / 16, ", ", K / 8, ", 64)");
  check_bias(bias_, N, op);
  at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;

  const int64_t lda = K + 64;  // padded row stride: no L1 aliasing between rows
  std::vector<int8_t> A(static_cast<size_t>(M * lda));
  std::vector<int32_t> xsum(static_cast<size_t>(M * ng));
  std::vector<float> sx(M);
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      int8_t* q = A.data() + m * lda;
      sx[m] = quantize_row(xp + m * K, K, q);
      for (int64_t g = 0; g < ng; ++g) {
        int32_t s = 0;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) s += q[k];
        xsum[m * ng + g] = s;
      }
    }
  });
  const uint8_t* W = qweight.data_ptr<uint8_t>();
  const float* sc = scale.data_ptr<float>();
  const uint8_t* zr = zero.data_ptr<uint8_t>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const I4Args args{A.data(), lda, xsum.data(), ng, K / 8, G / 8};

#if HP_Q_VNNI512 || HP_Q_AVX2
  // scale / zero rows are N long; the last, partial channel vector reads a zero-padded copy
  const int64_t Nfull = N / L * L, tailn = N - Nfull;
  std::vector<float> sc_tail(static_cast<size_t>(tailn ? ng * L : 0), 0.f);
  std::vector<uint8_t> z_tail(static_cast<size_t>(tailn ? ng * L + 16 : 0), 0);
  for (int64_t g = 0; g < ng && tailn; ++g)
    for (int64_t j = 0; j < tailn; ++j) {
      sc_tail[g * L + j] = sc[g * N + Nfull + j];
      z_tail[g * L + j] = zr[g * N + Nfull + j];
    }
  const int NV = (M <= 2) ? I4_NV_GEMV : I4_NV;
  const int64_t MR = (M <= 2) ? 1 : I4_MR;
  const int64_t NR = NV * L;
  const int64_t n_tiles = (N + NR - 1) / NR, m_tiles = (M + MR - 1) / MR;
  at::parallel_for(0, n_tiles * m_tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> C(static_cast<size_t>(I4_MR * NR));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nt = t / m_tiles, mt = t % m_tiles;
      const int64_t n0 = nt * NR, m0 = mt * MR;
      const int64_t nn = std::min(NR, N - n0), mr = std::min(MR, M - m0);
      const int nv = static_cast<int>((nn + L - 1) / L);
      const uint8_t* bptr[4];
      const float* sptr[4];
      const uint8_t* zptr[4];
      bool tail_vec = false;
      for (int v = 0; v < nv; ++v) {
        const int64_t c0 = n0 + v * L;
        bptr[v] = vec_ptr(W, c0 / L, K / 8);
        if (c0 + L <= N) {
          sptr[v] = sc + c0;
          zptr[v] = zr + c0;
        } else {
          tail_vec = true;
          sptr[v] = sc_tail.data();
          zptr[v] = z_tail.data();
        }
      }
      I4Args a = args;
      a.A = A.data() + m0 * lda;
      a.xsum = xsum.data() + m0 * ng;
      // the padded copy has row stride L, the real rows stride N: run the tail vector alone
      if (tail_vec && nv > 1) {
        i4_pick(static_cast<int>(mr), nv - 1)(a, bptr, sptr, zptr, N, C.data(), NR);
        i4_pick(static_cast<int>(mr), 1)(a, bptr + nv - 1, sptr + nv - 1, zptr + nv - 1, L, C.data() + (nv - 1) * L, NR);
      } else {
        i4_pick(static_cast<int>(mr), nv)(a, bptr, sptr, zptr, tail_vec ? L : N, C.data(), NR);
      }
      for (int64_t r = 0; r < mr; ++r) {
        const float s = sx[m0 + r];
        float* yr = yp + (m0 + r) * N;
        for (int64_t j = 0; j < nn; ++j) {
          float v = C[r * NR + j] * s;
          if (bp) v += bp[n0 + j];
          yr[n0 + j] = v;
        }
      }
    }
  });
#else
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* a = A.data() + m * lda;
      for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* wb = W + (n / 16) * (K / 8) * 64 + (n % 16) * 4;
        float f = 0.f;
        for (int64_t g = 0; g < ng; ++g) {
          int32_t s = 0;
          for (int64_t k = g * G; k < (g + 1) * G; ++k) {
            const uint8_t byte = wb[(k / 8) * 64 + (k % 4)];
            const int32_t code = (k % 8) < 4 ? (byte & 15) : (byte >> 4);
            s += static_cast<int32_t>(a[k]) * code;
          }
          s -= static_cast<int32_t>(zr[g * N + n]) * xsum[m * ng + g];
          f += static_cast<float>(s) * sc[g * N + n];
        }
        float v = f * sx[m];
        if (bp) v += bp[n];
        yp[m * N + n] = v;
      }
    }
  });
#endif
  return y;
}

// ------------------------------------------------------------------ weight-only (float activations)
// y[m, n] for M <= GEMV_MAX_M, W8A16: stream each int8 row once, FMA against every x row.
void w8_gemv(const float* x, int64_t M, int64_t K, const int8_t* W, const float* sw, const float* bp, float* y, int64_t N) {
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t n0, int64_t n1) {
    int64_t n = n0;
#if defined(__AVX512F__)
    for (; n + 4 <= n1; n += 4) {
      const int8_t* w[4] = {W + n * K, W + (n + 1) * K, W + (n + 2) * K, W + (n + 3) * K};
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * K;
        __m512 acc[4][2];
        for (int i = 0; i < 4; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) {
          const __m512 x0 = _mm512_loadu_ps(xr + k), x1 = _mm512_loadu_ps(xr + k + 16);
          for (int i = 0; i < 4; ++i) {
            const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i] + k))));
            const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i] + k + 16))));
            acc[i][0] = _mm512_fmadd_ps(w0, x0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(w1, x1, acc[i][1]);
          }
        }
        for (int i = 0; i < 4; ++i) {
          float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]));
          for (int64_t kk = k; kk < K; ++kk) s += static_cast<float>(w[i][kk]) * xr[kk];
          float v = s * sw[n + i];
          if (bp) v += bp[n + i];
          y[m * N + n + i] = v;
        }
      }
    }
#endif
    for (; n < n1; ++n) {
      const int8_t* w = W + n * K;
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * K;
        float s = 0.f;
        for (int64_t k = 0; k < K; ++k) s += static_cast<float>(w[k]) * xr[k];
        float v = s * sw[n];
        if (bp) v += bp[n];
        y[m * N + n] = v;
      }
    }
  });
}

// W4A16 GEMV on the row-major-halves layout: per group, sum x * code, then
// y = sum_g s_g * (dot_g - z_g * xsum_g).
void w4_gemv(const float* x, int64_t M, int64_t K, const uint8_t* W, const float* sc, const uint8_t* zr, int64_t ng,
             const float* bp, float* y, int64_t N) {
  const int64_t G = K / ng, rowb = roundup(K, 64) / 2;
  // group sums of x (for the zero point)
  std::vector<float> xs(static_cast<size_t>(M * ng));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < ng; ++g) {
      float s = 0.f;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) s += x[m * K + k];
      xs[m * ng + g] = s;
    }
  at::parallel_for(0, N, std::max<int64_t>(1, 32768 / std::max<int64_t>(K, 1)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* w = W + n * rowb;
      const float* s_n = sc + n * ng;
      const uint8_t* z_n = zr + n * ng;
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * K;
        float corr = 0.f;
        for (int64_t g = 0; g < ng; ++g) corr += s_n[g] * static_cast<float>(z_n[g]) * xs[m * ng + g];
        float tot_s = 0.f;
#if defined(__AVX512F__)
        __m512 tot = _mm512_setzero_ps();
        const __m512i mask = _mm512_set1_epi32(15);
        // one half-block (32 codes) of 64-block b, nibble h, into two float vectors of products
        auto half = [&](int64_t b, int h, __m512& t0, __m512& t1) {
          __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + b * 32)));
          __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + b * 32 + 16)));
          if (h) {
            v0 = _mm512_srli_epi32(v0, 4);
            v1 = _mm512_srli_epi32(v1, 4);
          } else {
            v0 = _mm512_and_si512(v0, mask);
            v1 = _mm512_and_si512(v1, mask);
          }
          const float* xk = xr + b * 64 + h * 32;
          t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v0), _mm512_loadu_ps(xk), t0);
          t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v1), _mm512_loadu_ps(xk + 16), t1);
        };
        // groups are whole half-blocks (group_size % 32 == 0); two accumulator pairs
        // alternate so consecutive FMAs do not wait on each other
        const int64_t hpg = G / 32;
        for (int64_t g = 0; g < ng; ++g) {
          __m512 t0 = _mm512_setzero_ps(), t1 = _mm512_setzero_ps(), t2 = _mm512_setzero_ps(), t3 = _mm512_setzero_ps();
          int64_t h = g * hpg;
          for (; h + 1 < (g + 1) * hpg; h += 2) {
            half(h / 2, static_cast<int>(h % 2), t0, t1);
            half((h + 1) / 2, static_cast<int>((h + 1) % 2), t2, t3);
          }
          if (h < (g + 1) * hpg) half(h / 2, static_cast<int>(h % 2), t0, t1);
          tot = _mm512_fmadd_ps(_mm512_add_ps(_mm512_add_ps(t0, t1), _mm512_add_ps(t2, t3)), _mm512_set1_ps(s_n[g]), tot);
        }
        tot_s = _mm512_reduce_add_ps(tot);
#else
        for (int64_t g = 0; g < ng; ++g) {
          float t = 0.f;
          for (int64_t k = g * G; k < (g + 1) * G; ++k) {
            const int64_t b = k / 64, i = k % 64;
            const uint8_t byte = w[b * 32 + (i % 32)];
            const float code = static_cast<float>(i < 32 ? (byte & 15) : (byte >> 4));
            t += code * xr[k];
          }
          tot_s += s_n[g] * t;
        }
#endif
        float v = tot_s - corr;
        if (bp) v += bp[n];
        y[m * N + n] = v;
      }
    }
  });
}

// Weight-only GEMM: dequantize blocks of rows to float (parallel), then at::mm (parallel).
template <typename Deq>
void deq_gemm(const at::Tensor& x, int64_t N, const float* bp, at::Tensor& y, Deq deq) {
  const int64_t K = x.size(1);
  const int64_t block = std::max<int64_t>(64, ((int64_t(1) << 21) / std::max<int64_t>(K, 1)) / 16 * 16);  // ~8 MB of floats
  at::Tensor wbuf = at::empty({std::min(block, N), K}, x.options());
  for (int64_t n0 = 0; n0 < N; n0 += block) {
    const int64_t nb = std::min(block, N - n0);
    at::Tensor wb = wbuf.narrow(0, 0, nb);
    float* wp = wb.data_ptr<float>();
    at::parallel_for(0, nb, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) deq(n0 + r, wp + r * K);
    });
    at::Tensor out = at::mm(x, wb.t());
    y.narrow(1, n0, nb).copy_(out);
  }
  if (bp) y.add_(at::from_blob(const_cast<float*>(bp), {N}, x.options()));
}

at::Tensor int8_weight_only_linear(const at::Tensor& x_, const at::Tensor& qweight, const at::Tensor& scale,
                                   const std::optional<at::Tensor>& bias_) {
  const char* op = "int8_weight_only_linear";
  at::Tensor x = check_x(x_, op);
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(qweight.scalar_type() == at::kChar && qweight.dim() == 2 && qweight.size(1) == K, op,
              ": qweight must be int8 (N, K) with K=", K);
  const int64_t N = qweight.size(0);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.dim() == 1 && scale.size(0) == N, op, ": scale must be float32 (N,)");
  check_bias(bias_, N, op);
  at::Tensor w = qweight.contiguous(), s = scale.contiguous();
  at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (K == 0) return bias.defined() ? bias.expand({M, N}).contiguous() : y.zero_();
  const int8_t* W = w.data_ptr<int8_t>();
  const float* sw = s.data_ptr<float>();
  if (M <= GEMV_MAX_M) {
    w8_gemv(x.data_ptr<float>(), M, K, W, sw, bp, y.data_ptr<float>(), N);
  } else {
    deq_gemm(x, N, bp, y, [&](int64_t n, float* out) {
      const int8_t* r = W + n * K;
      const float sn = sw[n];
      for (int64_t k = 0; k < K; ++k) out[k] = static_cast<float>(r[k]) * sn;
    });
  }
  return y;
}

at::Tensor int4_weight_only_linear(const at::Tensor& x_, const at::Tensor& qweight, const at::Tensor& scale,
                                   const at::Tensor& zero, const std::optional<at::Tensor>& bias_) {
  const char* op = "int4_weight_only_linear";
  at::Tensor x = check_x(x_, op);
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.dim() == 2, op, ": scale must be float32 (N, K / group_size)");
  const int64_t N = scale.size(0), ng = scale.size(1);
  TORCH_CHECK(ng >= 1 && K % ng == 0 && (K / ng) % 32 == 0, op, ": K=", K, " does not fit ", ng, " groups of a multiple of 32");
  TORCH_CHECK(zero.scalar_type() == at::kByte && zero.dim() == 2 && zero.size(0) == N && zero.size(1) == ng, op,
              ": zero must be uint8 (N, K / group_size)");
  TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.dim() == 2 && qweight.size(0) == N && qweight.size(1) == roundup(K, 64) / 2,
              op, ": qweight must be uint8 (N, ", roundup(K, 64) / 2, ")");
  check_bias(bias_, N, op);
  at::Tensor w = qweight.contiguous(), s = scale.contiguous(), z = zero.contiguous();
  at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const uint8_t* W = w.data_ptr<uint8_t>();
  const float* sc = s.data_ptr<float>();
  const uint8_t* zr = z.data_ptr<uint8_t>();
  if (M <= GEMV_MAX_M) {
    w4_gemv(x.data_ptr<float>(), M, K, W, sc, zr, ng, bp, y.data_ptr<float>(), N);
  } else {
    const int64_t G = K / ng, rowb = roundup(K, 64) / 2;
    deq_gemm(x, N, bp, y, [&](int64_t n, float* out) {
      const uint8_t* r = W + n * rowb;
      for (int64_t g = 0; g < ng; ++g) {
        const float sg = sc[n * ng + g], zg = static_cast<float>(zr[n * ng + g]);
        for (int64_t k = g * G; k < (g + 1) * G; ++k) {
          const int64_t b = k / 64, i = k % 64;
          const uint8_t byte = r[b * 32 + (i & 31)];
          out[k] = (static_cast<float>(i < 32 ? (byte & 15) : (byte >> 4)) - zg) * sg;
        }
      }
    });
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(hotpath, CPU, m) {
  m.impl("int8_weight_only_linear", &int8_weight_only_linear);
  m.impl("int8_dynamic_linear", &int8_dynamic_linear);
  m.impl("int4_weight_only_linear", &int4_weight_only_linear);
  m.impl("int4_dynamic_linear", &int4_dynamic_linear);
}
