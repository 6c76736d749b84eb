// Host emulation of the kernels of csrc/alignment_cuda.cu (tests/test_alignment_cuda.py): the
// kernel source is compiled unchanged by g++ (C++20) with CUDA's built-ins supplied here. One
// std::thread per CUDA thread, blocks run one at a time (so __shared__ is static storage),
// __syncthreads is a std::barrier. Checks indexing, synchronisation and arithmetic on machines
// without a GPU; not a model of warps or of GPU memory ordering. Build:
//   g++ -std=c++20 -O1 -pthread -shared -fPIC -DKERNEL_SOURCE='"csrc/alignment_cuda.cu"' THIS -o lib.so
// Entry points mirror the binding (csrc/alignment_cuda_binding.cpp) minus allocation.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint4 { uint32_t x, y, z, w; };
static inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
thread_local dim3 threadIdx;
static dim3 blockIdx, blockDim, gridDim;
static std::barrier<>* block_barrier;
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline uint32_t __umulhi(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(n)
#define __shared__ static
#define ALIGNMENT_CUDA_KERNELS_ONLY 1
#define ALIGNMENT_DYNAMIC_SHARED(name) alignas(16) static unsigned char name[1 << 16]
#include KERNEL_SOURCE

template <class F>
static void run_grid(dim3 grid, unsigned threads, F kernel) {
  gridDim = grid;
  blockDim = dim3(threads);
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      blockIdx = dim3(bx, by);
      std::barrier<> barrier(threads);
      block_barrier = &barrier;
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([t, &kernel] { threadIdx = dim3(t); kernel(); });
      for (auto& th : pool) th.join();
    }
}

template <typename T>
static void game(const T* A, const uint8_t* rm, const uint8_t* pm, const uint8_t* coal, T* out, int B, int C,
                 int K, int M) {
  const unsigned blocks = (unsigned)(((long long)B * C + kGameThreads - 1) / kGameThreads);
  run_grid(dim3(blocks), kGameThreads, [&] { game_kernel<T>(A, rm, pm, coal, out, B, C, K, M); });
}

template <typename T>
static void exact_direction(const T* A, const int* rows, const int* cols, const T* coef, T* out, int B, int R,
                            int C, long long per_chunk) {
  const unsigned chunks = (unsigned)(((1LL << C) + per_chunk - 1) / per_chunk);
  run_grid(dim3(B, chunks), kExactThreads,
           [&] { exact_direction_kernel<T>(A, rows, cols, coef, out, R, C, per_chunk); });
}

template <typename T>
static void sampling(const T* A, const int* rows, const int* cols, double* sum, double* sq, int B, int R, int C,
                     long long n, uint32_t k0, uint32_t k1) {
  run_grid(dim3(B * R * C), kSamplingThreads,
           [&] { sampling_kernel<T>(A, rows, cols, sum, sq, R, C, n, k0, k1); });
}

extern "C" {
void emu_game_f32(const float* A, const uint8_t* rm, const uint8_t* pm, const uint8_t* c, float* o, int B, int C,
                  int K, int M) { game(A, rm, pm, c, o, B, C, K, M); }
void emu_game_f64(const double* A, const uint8_t* rm, const uint8_t* pm, const uint8_t* c, double* o, int B, int C,
                  int K, int M) { game(A, rm, pm, c, o, B, C, K, M); }
void emu_exact_direction_f32(const float* A, const int* r, const int* c, const float* coef, float* o, int B, int R,
                             int C, long long per) { exact_direction(A, r, c, coef, o, B, R, C, per); }
void emu_exact_direction_f64(const double* A, const int* r, const int* c, const double* coef, double* o, int B,
                             int R, int C, long long per) { exact_direction(A, r, c, coef, o, B, R, C, per); }
void emu_sampling_f32(const float* A, const int* r, const int* c, double* s, double* q, int B, int R, int C,
                      long long n, uint32_t k0, uint32_t k1) { sampling(A, r, c, s, q, B, R, C, n, k0, k1); }
void emu_sampling_f64(const double* A, const int* r, const int* c, double* s, double* q, int B, int R, int C,
                      long long n, uint32_t k0, uint32_t k1) { sampling(A, r, c, s, q, B, R, C, n, k0, k1); }
}
