// Streaming softmin over point clouds for costs the pairwise engine does not cover (p = 1:
// C_ij = |x_i - y_j|; p = 2 is accepted too, for cross-checks):
//   f_i = -eps * LSE_j[ h_j - C_ij / eps ]
//   U_i = sum_j S_ij dC_ij/dx_i,  S the row softmax  (the envelope-theorem gradient term)
// The n x m matrix is never stored: one row at a time against all columns (y transposed and
// padded so the column loop is whole vectors), scratch O(m) per thread.
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
void softmin_points_impl(const T* X, const T* Y, const T* H, int64_t B, int64_t n, int64_t m, int64_t d,
                         T eps, int64_t p, bool want_grad, T* F, T* U) {
  using VV = Vec<T>;
  using V = typename VV::V;
  constexpr int W = VV::W;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t ld = (m + W - 1) / W * W;
  // transposed, padded copies: yT (B, d, ld), hp (B, ld) with -inf padding
  std::vector<T> yT(B * d * ld, T(0)), hp(B * ld, ninf);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t j = 0; j < m; ++j) {
        hp[b * ld + j] = H[b * m + j];
        for (int64_t k = 0; k < d; ++k) yT[(b * d + k) * ld + j] = Y[(b * m + j) * d + k];
      }
    }
  });
  const T ie = T(1) / eps;
  constexpr int64_t kRows = 8;
  const int64_t nblk = (n + kRows - 1) / kRows;
  at::parallel_for(0, B * nblk, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> s(ld), dist(ld);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nblk, i0 = (t % nblk) * kRows, i1 = std::min(n, i0 + kRows);
      const T* yb = yT.data() + b * d * ld;
      const T* hb = hp.data() + b * ld;
      for (int64_t i = i0; i < i1; ++i) {
        const T* xi = X + (b * n + i) * d;
        V mv = VV::set1(ninf);
        for (int64_t j = 0; j < ld; j += W) {
          V acc{};
          for (int64_t k = 0; k < d; ++k) {
            const V df = VV::set1(xi[k]) - VV::load(yb + k * ld + j);
            acc += df * df;
          }
          V c;
          if (p == 1) {
            for (int l = 0; l < W; ++l) c[l] = std::sqrt(acc[l]);
          } else {
            c = acc * T(0.5);
          }
          VV::store(dist.data() + j, c);
          const V sv = VV::load(hb + j) - c * ie;
          VV::store(s.data() + j, sv);
          mv = VV::vmax(mv, sv);
        }
        const T mx = VV::hmax(mv);
        T* ui = want_grad ? U + (b * n + i) * d : nullptr;
        if (want_grad) std::fill(ui, ui + d, T(0));
        if (mx == ninf) {  // all masked (or NaN)
          T r = ninf;
          for (int64_t j = 0; j < m; ++j) if (s[j] != s[j]) r = std::numeric_limits<T>::quiet_NaN();
          F[b * n + i] = -eps * r;
          if (want_grad && r != r) std::fill(ui, ui + d, r);
          continue;
        }
        const V mxv = VV::set1(mx);
        V se{}, sw{};
        for (int64_t j = 0; j < ld; j += W) {
          const V e = VV::exp_nonpos(VV::load(s.data() + j) - mxv);
          se += e;
          if (want_grad) {
            V w;
            if (p == 1) {
              const V dj = VV::load(dist.data() + j);
              for (int l = 0; l < W; ++l) w[l] = dj[l] > T(0) ? e[l] / dj[l] : T(0);
            } else {
              w = e;
            }
            sw += w;
            VV::store(s.data() + j, w);  // reuse as the weights of the y-sum
          }
        }
        const T sum = VV::hsum(se);
        F[b * n + i] = -eps * (mx + std::log(sum));
        if (want_grad) {
          const T swt = VV::hsum(sw);
          for (int64_t k = 0; k < d; ++k) {
            V acc{};
            const T* yk = yb + k * ld;
            for (int64_t j = 0; j < ld; j += W) acc += VV::load(s.data() + j) * VV::load(yk + j);
            ui[k] = (xi[k] * swt - VV::hsum(acc)) / sum;
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> ot_softmin_points(at::Tensor x, at::Tensor y, at::Tensor h, double eps,
                                                     int64_t p, bool want_grad) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3 && h.dim() == 2, "x (B, n, d), y (B, m, d), h (B, m) expected");
  TORCH_CHECK(x.size(0) == y.size(0) && h.size(0) == x.size(0) && h.size(1) == y.size(1) && x.size(2) == y.size(2),
              "shape mismatch: x ", x.sizes(), ", y ", y.sizes(), ", h ", h.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && x.scalar_type() == h.scalar_type(), "x, y, h must share a dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "float32 or float64 expected");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous() && h.is_contiguous(), "x, y, h must be contiguous");
  TORCH_CHECK(x.device().is_cpu(), "CPU tensors expected");
  TORCH_CHECK(p == 1 || p == 2, "p must be 1 or 2");
  TORCH_CHECK(eps > 0, "eps must be > 0");
  const int64_t B = x.size(0), n = x.size(1), m = y.size(1), d = x.size(2);
  at::Tensor f = at::empty({B, n}, x.options());
  at::Tensor U = want_grad ? at::empty({B, n, d}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_softmin_points", [&] {
    softmin_points_impl<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), B, n, m, d,
                                  (scalar_t)eps, p, want_grad, f.data_ptr<scalar_t>(),
                                  want_grad ? U.data_ptr<scalar_t>() : nullptr);
  });
  return {f, U};
}

}  // namespace

TORCH_LIBRARY_IMPL(hotpath, CPU, m) { m.impl("ot_softmin_points", &ot_softmin_points); }
