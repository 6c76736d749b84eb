// CUDA kernels of the late-interaction (max-sim) op (shapley_kernels.late_interaction, backend
// "cuda"). Torch-free: raw pointers, sizes and a cudaStream_t; the PyTorch binding is
// csrc/late_interaction_cuda_binding.cpp. Every launcher returns the launch's cudaError_t.
//
// Layouts (contiguous, row-major): queries T[Bt, Q, D], query_mask u8[Bt, Q], patches T[Bi, P, D],
// argmax int32[Bt, Bi, Q], similarity T[Bt, Bi], best T[Bt, Bi, Q], weight T[Bt, Q] (1 / |present
// queries of t| at present queries, 0 elsewhere), grad T[Bt, Bi]. T = float accumulates in float,
// double in double. Meaning: shapley_kernels/late_interaction/_torch_backend.py's docstring.
//
// Simple by design (no shared memory, no synchronisation): forward one thread per (caption, image),
// patches scanned in increasing order with '>' so ties keep the lowest index; grad_queries one
// thread per (caption, query, dim) summing over images in order; grad_patches one thread per
// (image, dim) that alone writes those entries, captions and queries in order: no atomics, the
// results do not depend on the launch.
//
// CPU emulation (tests/test_late_interaction.py, tests/cuda_emulation/late_interaction_host_harness.cpp)
// defines LATE_INTERACTION_CUDA_KERNELS_ONLY and CUDA's built-ins; the launchers are then left out.
#ifndef LATE_INTERACTION_CUDA_KERNELS_ONLY
#include <cuda_runtime.h>
#endif
#include <stdint.h>

namespace {

constexpr int kLateInteractionThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kLateInteractionThreads)
late_interaction_forward_kernel(const T* __restrict__ queries, const uint8_t* __restrict__ query_mask,
                                const T* __restrict__ patches, T* __restrict__ similarity, T* __restrict__ best,
                                int32_t* __restrict__ argmax, long long Bt, long long Bi, int Q, int P, int D) {
  const long long pair = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (pair >= Bt * Bi) return;
  const long long t = pair / Bi, i = pair % Bi;
  T total = T(0);
  int present = 0;
  for (int q = 0; q < Q; ++q) {
    const long long out = pair * Q + q;
    if (!query_mask[t * Q + q]) {
      argmax[out] = -1;
      if (best != nullptr) best[out] = T(0);
      continue;
    }
    const T* qv = queries + (t * Q + q) * D;
    T top = T(0);
    int where = 0;
    for (int p = 0; p < P; ++p) {
      const T* pv = patches + (i * P + p) * D;
      T dot = T(0);
      for (int k = 0; k < D; ++k) dot += qv[k] * pv[k];
      if (p == 0 || dot > top) {
        top = dot;
        where = p;
      }
    }
    argmax[out] = where;
    if (best != nullptr) best[out] = top;
    total += top;
    ++present;
  }
  if (similarity != nullptr) similarity[pair] = present > 0 ? total / T(present) : T(0);
}

template <typename T>
__global__ void __launch_bounds__(kLateInteractionThreads)
late_interaction_grad_queries_kernel(const T* __restrict__ grad, const T* __restrict__ weight,
                                     const T* __restrict__ patches, const int32_t* __restrict__ argmax,
                                     T* __restrict__ grad_queries, long long Bt, long long Bi, int Q, int P, int D) {
  const long long entry = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (entry >= Bt * Q * D) return;
  const long long t = entry / ((long long)Q * D);
  const int q = (int)((entry / D) % Q), k = (int)(entry % D);
  const T w = weight[t * Q + q];
  T acc = T(0);
  for (long long i = 0; i < Bi; ++i) {
    const int32_t p = argmax[(t * Bi + i) * Q + q];
    if (p >= 0) acc += grad[t * Bi + i] * w * patches[(i * P + p) * D + k];
  }
  grad_queries[entry] = acc;
}

template <typename T>
__global__ void __launch_bounds__(kLateInteractionThreads)
late_interaction_grad_patches_kernel(const T* __restrict__ grad, const T* __restrict__ weight,
                                     const T* __restrict__ queries, const int32_t* __restrict__ argmax,
                                     T* __restrict__ grad_patches, long long Bt, long long Bi, int Q, int P, int D) {
  const long long entry = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // (image, dim); grad_patches zeroed
  if (entry >= Bi * D) return;
  const long long i = entry / D;
  const int k = (int)(entry % D);
  for (long long t = 0; t < Bt; ++t) {
    const T g = grad[t * Bi + i];
    for (int q = 0; q < Q; ++q) {
      const int32_t p = argmax[(t * Bi + i) * Q + q];
      if (p >= 0) grad_patches[(i * P + p) * D + k] += g * weight[t * Q + q] * queries[(t * Q + q) * D + k];
    }
  }
}

inline unsigned blocks_for(long long items) {
  return (unsigned)((items + kLateInteractionThreads - 1) / kLateInteractionThreads);
}

}  // namespace

#ifndef LATE_INTERACTION_CUDA_KERNELS_ONLY
namespace {

template <typename T>
cudaError_t launch_forward(const T* queries, const uint8_t* query_mask, const T* patches, T* similarity, T* best,
                           int32_t* argmax, long long Bt, long long Bi, int Q, int P, int D, cudaStream_t stream) {
  if (Bt * Bi == 0) return cudaSuccess;
  late_interaction_forward_kernel<T><<<blocks_for(Bt * Bi), kLateInteractionThreads, 0, stream>>>(
      queries, query_mask, patches, similarity, best, argmax, Bt, Bi, Q, P, D);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(const T* grad, const T* weight, const T* queries, const T* patches, const int32_t* argmax,
                            T* grad_queries, T* grad_patches, long long Bt, long long Bi, int Q, int P, int D,
                            cudaStream_t stream) {
  if (Bt * Q * D > 0)
    late_interaction_grad_queries_kernel<T><<<blocks_for(Bt * Q * D), kLateInteractionThreads, 0, stream>>>(
        grad, weight, patches, argmax, grad_queries, Bt, Bi, Q, P, D);
  if (Bi * D > 0)
    late_interaction_grad_patches_kernel<T><<<blocks_for(Bi * D), kLateInteractionThreads, 0, stream>>>(
        grad, weight, queries, argmax, grad_patches, Bt, Bi, Q, P, D);
  return cudaGetLastError();
}

}  // namespace

extern "C" {
cudaError_t late_interaction_forward_f32(const float* queries, const uint8_t* query_mask, const float* patches,
                                         float* similarity, float* best, int32_t* argmax, long long Bt, long long Bi,
                                         int Q, int P, int D, cudaStream_t stream) {
  return launch_forward<float>(queries, query_mask, patches, similarity, best, argmax, Bt, Bi, Q, P, D, stream);
}
cudaError_t late_interaction_forward_f64(const double* queries, const uint8_t* query_mask, const double* patches,
                                         double* similarity, double* best, int32_t* argmax, long long Bt,
                                         long long Bi, int Q, int P, int D, cudaStream_t stream) {
  return launch_forward<double>(queries, query_mask, patches, similarity, best, argmax, Bt, Bi, Q, P, D, stream);
}
cudaError_t late_interaction_backward_f32(const float* grad, const float* weight, const float* queries,
                                          const float* patches, const int32_t* argmax, float* grad_queries,
                                          float* grad_patches, long long Bt, long long Bi, int Q, int P, int D,
                                          cudaStream_t stream) {
  return launch_backward<float>(grad, weight, queries, patches, argmax, grad_queries, grad_patches, Bt, Bi, Q, P, D,
                                stream);
}
cudaError_t late_interaction_backward_f64(const double* grad, const double* weight, const double* queries,
                                          const double* patches, const int32_t* argmax, double* grad_queries,
                                          double* grad_patches, long long Bt, long long Bi, int Q, int P, int D,
                                          cudaStream_t stream) {
  return launch_backward<double>(grad, weight, queries, patches, argmax, grad_queries, grad_patches, Bt, Bi, Q, P,
                                 D, stream);
}
}  // extern "C"
#endif
