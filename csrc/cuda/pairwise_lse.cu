// CUDA C++ forward of the pairwise engine for narrow features (d <= 16, k <= 16), the
// point-cloud case of optimal transport: one thread per row keeps its point, its running max /
// sum and its weighted values in registers while column tiles stream through shared memory.
// tl.dot would pad d = 3 to 16 and spend 5x the arithmetic; wider problems use the Triton kernel.
// The caller passes the current stream (torch.cuda.current_stream().cuda_stream) and sets the
// device: this file needs no c10/cuda headers, so nvcc can compile-check it against a CPU torch.
#include <ATen/ATen.h>
// A CPU build of torch ships no c10/cuda headers; CI compile-checks this file against one, so
// the stream and device guard come from c10 only where they exist (every real CUDA build).
#if __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define HOTPATH_HAVE_C10_CUDA 1
#endif
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

namespace hotpath {
namespace {

constexpr int kMaxD = 16;
constexpr int kMaxK = 16;
constexpr int kThreads = 128;

template <typename T>
__global__ void lse_rows_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ cb,
                                const T* __restrict__ v, T* __restrict__ lse, T* __restrict__ out, int64_t n,
                                int64_t m, int d, int k, T alpha, bool sq) {
  __shared__ T ys[kThreads * kMaxD];
  __shared__ T bs[kThreads];
  __shared__ T vs[kThreads * kMaxK];
  const int64_t b = blockIdx.y;
  const int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  x += b * n * d;
  y += b * m * d;
  if (cb) cb += b * m;
  if (v) v += b * m * k;
  T xi[kMaxD], acc[kMaxK];
#pragma unroll
  for (int t = 0; t < kMaxD; ++t) xi[t] = (i < n && t < d) ? x[i * d + t] : T(0);
#pragma unroll
  for (int t = 0; t < kMaxK; ++t) acc[t] = T(0);
  T mx = -std::numeric_limits<T>::infinity(), sm = T(0);
  bool nan = false;
  for (int64_t j0 = 0; j0 < m; j0 += kThreads) {
    const int64_t j = j0 + threadIdx.x;
    const int cnt = (int)(m - j0 < kThreads ? m - j0 : kThreads);
    __syncthreads();
    if (j < m) {
      for (int t = 0; t < d; ++t) ys[threadIdx.x * kMaxD + t] = y[j * d + t];
      bs[threadIdx.x] = cb ? cb[j] : T(0);
      for (int t = 0; t < k; ++t) vs[threadIdx.x * kMaxK + t] = v[j * k + t];
    }
    __syncthreads();
    if (i >= n) continue;
    for (int c = 0; c < cnt; ++c) {
      T s = T(0);
#pragma unroll
      for (int t = 0; t < kMaxD; ++t) {
        if (t < d) {
          const T yv = ys[c * kMaxD + t];
          if (sq) { const T df = xi[t] - yv; s += df * df; } else { s += xi[t] * yv; }
        }
      }
      s = alpha * s + bs[c];
      if (s != s) { nan = true; continue; }
      if (s == -std::numeric_limits<T>::infinity()) continue;
      if (s > mx) {  // rare after the first tiles: rescale what was summed so far
        const T f = exp(mx - s);
        sm = sm * f + T(1);
#pragma unroll
        for (int t = 0; t < kMaxK; ++t) acc[t] = acc[t] * f + (t < k ? vs[c * kMaxK + t] : T(0));
        mx = s;
      } else {
        const T e = exp(s - mx);
        sm += e;
#pragma unroll
        for (int t = 0; t < kMaxK; ++t) if (t < k) acc[t] += e * vs[c * kMaxK + t];
      }
    }
  }
  if (i >= n) return;
  lse += b * n;
  out += b * n * k;
  if (nan) {
    lse[i] = std::numeric_limits<T>::quiet_NaN();
    for (int t = 0; t < k; ++t) out[i * k + t] = std::numeric_limits<T>::quiet_NaN();
  } else if (sm == T(0)) {
    lse[i] = -std::numeric_limits<T>::infinity();
    for (int t = 0; t < k; ++t) out[i * k + t] = T(0);
  } else {
    lse[i] = mx + log(sm);
    for (int t = 0; t < k; ++t) out[i * k + t] = acc[t] / sm;
  }
}

std::tuple<at::Tensor, at::Tensor> pairwise_lse_fwd_cuda(const at::Tensor& x_, const at::Tensor& y_,
                                                         const std::optional<at::Tensor>& cb_,
                                                         const std::optional<at::Tensor>& v_, double scale,
                                                         c10::string_view metric) {
  TORCH_CHECK(metric == "dot" || metric == "sqeuclidean", "metric must be \"dot\" or \"sqeuclidean\"");
  const bool sq = metric == "sqeuclidean";
  TORCH_CHECK(x_.is_cuda() && y_.is_cuda(), "pairwise_lse (CUDA): CUDA tensors only");
  TORCH_CHECK(x_.dim() == 3 && y_.dim() == 3 && x_.size(0) == y_.size(0) && x_.size(2) == y_.size(2),
              "pairwise_lse (CUDA): x (B, n, d) and y (B, m, d) expected");
  TORCH_CHECK(x_.size(2) <= kMaxD, "pairwise_lse (CUDA): d <= 16 only");
  TORCH_CHECK(!v_ || v_->size(2) <= kMaxK, "pairwise_lse (CUDA): k <= 16 only");
  const auto x = x_.contiguous(), y = y_.contiguous();
  const int64_t B = x.size(0), n = x.size(1), m = y.size(1);
  const int d = (int)x.size(2);
  const auto cb = cb_ ? cb_->contiguous() : at::Tensor();
  const auto v = v_ ? v_->contiguous() : at::Tensor();
  const int k = v.defined() ? (int)v.size(2) : 0;
  auto lse = at::empty({B, n}, x.options());
  auto out = at::zeros({B, n, k}, x.options());
  if (B == 0 || n == 0) return {lse, out};
  const dim3 grid((unsigned)((n + kThreads - 1) / kThreads), (unsigned)B);
#ifdef HOTPATH_HAVE_C10_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
#else
  cudaStream_t stream = nullptr;
#endif
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_lse_fwd_cuda", [&] {
    lse_rows_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), cb.defined() ? cb.data_ptr<scalar_t>() : nullptr,
        v.defined() ? v.data_ptr<scalar_t>() : nullptr, lse.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, m, d, k,
        (scalar_t)(sq ? -scale : scale), sq);
  });
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "pairwise_lse (CUDA): launch failed: ", cudaGetErrorString(err));
  return {lse, out};
}

}  // namespace
}  // namespace hotpath

// The narrow-feature kernel (d, k <= 16); backends/cuda/pairwise.py routes the shapes it takes here.
TORCH_LIBRARY_IMPL(hotpath, CUDA, m) { m.impl("pairwise_lse_fwd_narrow", &hotpath::pairwise_lse_fwd_cuda); }

// Present only in a build that compiled this file: how Python knows the CUDA C++ kernels exist.
static bool cuda_kernels_built() { return true; }
TORCH_LIBRARY_FRAGMENT(hotpath, m) { m.def("cuda_kernels_built() -> bool", &cuda_kernels_built); }
