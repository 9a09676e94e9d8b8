// Blockwise random Hadamard transform along the last dim (issue 7), fast Walsh-Hadamard butterflies.
// forward: y = H (s * x) / sqrt(b) per block of b; inverse: x = s * (H y) / sqrt(b). H is the
// Sylvester matrix (symmetric, H H = b I), so the inverse is the same butterflies with the sign
// flip moved to the end: exactly invertible in exact arithmetic, orthogonal in floating point.
// The butterfly passes with half-width h >= 16 run on contiguous runs (auto-vectorized); the first
// passes (h < 16) work inside one 16-element group.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace {

template <typename T>
inline void fwht_block(T* v, int64_t b) {
  for (int64_t h = 1; h < b; h <<= 1) {
    for (int64_t i = 0; i < b; i += 2 * h) {
      T* a = v + i;
      T* c = v + i + h;
#pragma GCC ivdep
      for (int64_t j = 0; j < h; ++j) {
        T p = a[j], q = c[j];
        a[j] = p + q;
        c[j] = p - q;
      }
    }
  }
}

template <typename T>
void fwht_impl(const T* x, const T* s, T* y, int64_t M, int64_t K, int64_t b, bool inverse) {
  const T norm = T(1) / std::sqrt(T(b));
  at::parallel_for(0, M, std::max<int64_t>(1, 4096 / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * K;
      T* yr = y + r * K;
      if (inverse) {
        for (int64_t k = 0; k < K; ++k) yr[k] = xr[k];
      } else {
        for (int64_t k = 0; k < K; ++k) yr[k] = xr[k] * s[k];
      }
      for (int64_t k0 = 0; k0 < K; k0 += b) fwht_block(yr + k0, b);
      if (inverse) {
        for (int64_t k = 0; k < K; ++k) yr[k] = yr[k] * norm * s[k];
      } else {
        for (int64_t k = 0; k < K; ++k) yr[k] *= norm;
      }
    }
  });
}

at::Tensor fwht(at::Tensor x, at::Tensor signs, int64_t block, bool inverse) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x must be float32 or float64");
  TORCH_CHECK(signs.scalar_type() == x.scalar_type() && signs.dim() == 1 && signs.size(0) == x.size(1) && signs.is_contiguous(),
              "signs must be a contiguous (K,) tensor of x's dtype");
  TORCH_CHECK(block >= 1 && (block & (block - 1)) == 0, "block must be a power of two, got ", block);
  TORCH_CHECK(x.size(1) % block == 0, "K = ", x.size(1), " is not a multiple of the block ", block);
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fwht", [&] {
    fwht_impl<scalar_t>(x.data_ptr<scalar_t>(), signs.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.size(0), x.size(1), block, inverse);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(hotpath, CPU, m) { m.impl("fwht", &fwht); }
