// Host emulation of the kernels of csrc/late_interaction_cuda.cu (tests/test_late_interaction.py):
// the kernel source compiled unchanged by g++ (C++20) with CUDA's built-ins supplied here. The
// kernels use no shared memory and no synchronisation, so the CUDA threads of a launch run one
// after the other. Checks indexing and arithmetic on machines without a GPU. Build:
//   g++ -std=c++20 -O1 -shared -fPIC -DKERNEL_SOURCE='"csrc/late_interaction_cuda.cu"' THIS -o lib.so
// Entry points mirror the launchers of the .cu (minus the stream), which the binding calls.
#include <cstdint>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
static dim3 threadIdx, blockIdx, blockDim;
#define __global__
#define __device__
#define __restrict__
#define __launch_bounds__(n)
#define LATE_INTERACTION_CUDA_KERNELS_ONLY 1
#include KERNEL_SOURCE

template <class F>
static void run_grid(long long items, F kernel) {
  blockDim = dim3(kLateInteractionThreads);
  for (unsigned b = 0; b < blocks_for(items); ++b)
    for (unsigned t = 0; t < kLateInteractionThreads; ++t) {
      blockIdx = dim3(b);
      threadIdx = dim3(t);
      kernel();
    }
}

template <typename T>
static void forward(const T* q, const uint8_t* m, const T* p, T* sim, T* best, int32_t* arg, long long Bt,
                    long long Bi, int Q, int P, int D) {
  run_grid(Bt * Bi, [&] { late_interaction_forward_kernel<T>(q, m, p, sim, best, arg, Bt, Bi, Q, P, D); });
}

template <typename T>
static void backward(const T* g, const T* w, const T* q, const T* p, const int32_t* arg, T* gq, T* gp, long long Bt,
                     long long Bi, int Q, int P, int D) {
  run_grid(Bt * Q * D, [&] { late_interaction_grad_queries_kernel<T>(g, w, p, arg, gq, Bt, Bi, Q, P, D); });
  run_grid(Bi * D, [&] { late_interaction_grad_patches_kernel<T>(g, w, q, arg, gp, Bt, Bi, Q, P, D); });
}

extern "C" {
void emu_forward_f32(const float* q, const uint8_t* m, const float* p, float* sim, float* best, int32_t* arg,
                     long long Bt, long long Bi, int Q, int P, int D) { forward(q, m, p, sim, best, arg, Bt, Bi, Q, P, D); }
void emu_forward_f64(const double* q, const uint8_t* m, const double* p, double* sim, double* best, int32_t* arg,
                     long long Bt, long long Bi, int Q, int P, int D) { forward(q, m, p, sim, best, arg, Bt, Bi, Q, P, D); }
void emu_backward_f32(const float* g, const float* w, const float* q, const float* p, const int32_t* arg, float* gq,
                      float* gp, long long Bt, long long Bi, int Q, int P, int D) {
  backward(g, w, q, p, arg, gq, gp, Bt, Bi, Q, P, D);
}
void emu_backward_f64(const double* g, const double* w, const double* q, const double* p, const int32_t* arg,
                      double* gq, double* gp, long long Bt, long long Bi, int Q, int P, int D) {
  backward(g, w, q, p, arg, gq, gp, Bt, Bi, Q, P, D);
}
}
