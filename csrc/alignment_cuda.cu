// CUDA kernels of LOUPE's alignment game (spec section 4): game values, factorised exact SII and
// Monte Carlo SII. Torch-free: raw pointers, sizes and a cudaStream_t; the PyTorch binding is
// csrc/alignment_cuda_binding.cpp. Every launcher returns the launch's cudaError_t.
//
// Layouts (all contiguous, row-major):
//   game:     A T[B, K, M] (original order), region_mask u8[B, K], phrase_mask u8[B, M],
//             coalitions u8[B, C, K + M] (players 0..K-1 regions, K..K+M-1 phrases), out T[B, C].
//   exact / sampling: A T[B, R, C] COMPACTED (each matrix's present rows / columns first, padded
//             entries 0), rows / cols int32[B] the present counts.
// Numerics: max of a softmax over a set = 1 / sum exp(a - max), from an online (max, sum-exp)
// pair: stable for logits of any finite size. T = float accumulates in float, double in double;
// the Monte Carlo sums are double.
//
// CPU emulation (tests/test_alignment_cuda.py runs these kernels on the host with one std::thread
// per CUDA thread): it defines ALIGNMENT_CUDA_KERNELS_ONLY, supplies CUDA's built-ins, and its own
// ALIGNMENT_DYNAMIC_SHARED; the launchers below are then left out.
#ifndef ALIGNMENT_CUDA_KERNELS_ONLY
#include <cuda_runtime.h>
#endif
#include <stdint.h>

#ifndef ALIGNMENT_DYNAMIC_SHARED
#define ALIGNMENT_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace {

constexpr int kExactMax = 20;         // present players per side in the exact kernel
constexpr int kExactSubsets = 128;    // subsets per step of the exact kernel
constexpr int kExactThreads = 256;
constexpr int kExactOwned = (kExactMax * kExactMax + kExactThreads - 1) / kExactThreads;
constexpr int kSamplingMax = 64;      // players per side in the sampling kernel (64-bit masks)
constexpr int kSamplingThreads = 128; // power of two (tree reduction)
constexpr int kGameThreads = 128;

__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }

// Online (max, sum of exp(x - max)) of a set; total == 0 means the set is empty.
template <typename T>
__device__ __forceinline__ void push(T& top, T& total, T x) {
  if (total == T(0)) {
    top = x;
    total = T(1);
  } else if (x > top) {
    total = total * exp_t(top - x) + T(1);
    top = x;
  } else {
    total += exp_t(x - top);
  }
}

// Max softmax of a summarised set: 1 / total, 0 for the empty set.
template <typename T>
__device__ __forceinline__ T inverse_total(T total) {
  return total > T(0) ? T(1) / total : T(0);
}

// ------------------------------------------------------------------------------------------ game

// One thread per (matrix, coalition): v2(S) = (s1 + s2) / 2, 0 without a present region or phrase.
template <typename T>
__global__ void __launch_bounds__(kGameThreads)
game_kernel(const T* __restrict__ A, const uint8_t* __restrict__ region_mask,
            const uint8_t* __restrict__ phrase_mask, const uint8_t* __restrict__ coalitions,
            T* __restrict__ out, int B, int C, int K, int M) {
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= (long long)B * C) return;
  const long long b = t / C;
  const T* a = A + b * K * M;
  const uint8_t* s = coalitions + t * (K + M);
  const uint8_t* rm = region_mask + b * K;
  const uint8_t* pm = phrase_mask + b * M;
  T s1 = T(0), s2 = T(0);
  int n_r = 0, n_p = 0;
  for (int i = 0; i < K; ++i) {
    if (!(s[i] && rm[i])) continue;
    ++n_r;
    T top = T(0), total = T(0);
    for (int j = 0; j < M; ++j)
      if (s[K + j] && pm[j]) push(top, total, a[i * M + j]);
    s1 += inverse_total(total);
  }
  for (int j = 0; j < M; ++j) {
    if (!(s[K + j] && pm[j])) continue;
    ++n_p;
    T top = T(0), total = T(0);
    for (int i = 0; i < K; ++i)
      if (s[i] && rm[i]) push(top, total, a[i * M + j]);
    s2 += inverse_total(total);
  }
  out[t] = (n_r > 0 && n_p > 0) ? (s1 / T(n_r) + s2 / T(n_p)) * T(0.5) : T(0);
}

// ------------------------------------------------------------------------------ exact, factorised

// One direction of the factorised exact SII (docs/alignment_exact.md): block (b, chunk) adds, for
// every subset U of the present columns in its chunk, every present row i and column j,
//   sign * (r_i(U) c(u) - Tot(U) b(u)),  u = |U| - 1, sign = +1 if j in U; u = |U|, sign = -1 else,
// with r_i(U) = max softmax of row i over U, Tot(U) = sum_i r_i(U), coef T[B, 2, C + 1] = (c, b).
// Subsets are enumerated as bitmasks, kExactSubsets per step: phase 1 computes r_i(U) into
// shared memory (one thread per (U, i)), phase 2 accumulates into the [rows, cols] outputs held
// in registers (each thread owns fixed outputs: deterministic). out T[B, n_chunks, R, C] (the
// caller zero-fills it; only present (i, j) are written).
template <typename T>
__global__ void __launch_bounds__(kExactThreads)
exact_direction_kernel(const T* __restrict__ A, const int* __restrict__ rows, const int* __restrict__ cols,
                       const T* __restrict__ coef, T* __restrict__ out, int R, int C,
                       long long subsets_per_chunk) {
  __shared__ T a_sh[kExactMax * kExactMax];
  __shared__ T coef_sh[2][kExactMax + 1];
  __shared__ T r_sh[kExactSubsets][kExactMax];
  __shared__ T tot_sh[kExactSubsets];
  __shared__ int size_sh[kExactSubsets];

  const int b = blockIdx.x;
  const int chunk = blockIdx.y;
  const int n_rows = rows[b];
  const int n_cols = cols[b];
  for (int e = threadIdx.x; e < n_rows * n_cols; e += blockDim.x) {
    const int i = e / n_cols, j = e % n_cols;
    a_sh[i * kExactMax + j] = A[((long long)b * R + i) * C + j];
  }
  for (int e = threadIdx.x; e < 2 * (n_cols + 1); e += blockDim.x) {
    const int x = e / (n_cols + 1), u = e % (n_cols + 1);
    coef_sh[x][u] = coef[((long long)b * 2 + x) * (C + 1) + u];
  }
  __syncthreads();

  const long long n_sub = n_rows > 0 ? (1LL << n_cols) : 0;
  const long long u_begin = (long long)chunk * subsets_per_chunk;
  const long long u_end = u_begin + subsets_per_chunk < n_sub ? u_begin + subsets_per_chunk : n_sub;
  const int n_out = n_rows * n_cols;
  T acc[kExactOwned];
#pragma unroll
  for (int k = 0; k < kExactOwned; ++k) acc[k] = T(0);

  for (long long u0 = u_begin; u0 < u_end; u0 += kExactSubsets) {
    const int count = u_end - u0 < kExactSubsets ? (int)(u_end - u0) : kExactSubsets;
    for (int e = threadIdx.x; e < count * n_rows; e += blockDim.x) {
      const int s = e / n_rows, i = e % n_rows;
      const unsigned u = (unsigned)(u0 + s);
      T top = T(0), total = T(0);
      for (unsigned rest = u; rest != 0u; rest &= rest - 1u)
        push(top, total, a_sh[i * kExactMax + (__ffs(rest) - 1)]);
      r_sh[s][i] = inverse_total(total);
    }
    __syncthreads();
    for (int s = threadIdx.x; s < count; s += blockDim.x) {
      T tot = T(0);
      for (int i = 0; i < n_rows; ++i) tot += r_sh[s][i];
      tot_sh[s] = tot;
      size_sh[s] = __popc((unsigned)(u0 + s));
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kExactOwned; ++k) {
      const int o = threadIdx.x + k * kExactThreads;
      if (o >= n_out) continue;
      const int i = o / n_cols, j = o % n_cols;
      T sum = T(0);
      for (int s = 0; s < count; ++s) {
        const bool in = (((unsigned)(u0 + s) >> j) & 1u) != 0u;
        const int u = in ? size_sh[s] - 1 : size_sh[s];
        const T term = r_sh[s][i] * coef_sh[0][u] - tot_sh[s] * coef_sh[1][u];
        sum += in ? term : -term;
      }
      acc[k] += sum;
    }
    __syncthreads();  // r_sh / tot_sh / size_sh are rewritten by the next step
  }
#pragma unroll
  for (int k = 0; k < kExactOwned; ++k) {
    const int o = threadIdx.x + k * kExactThreads;
    if (o >= n_out) continue;
    const int i = o / n_cols, j = o % n_cols;
    out[(((long long)b * gridDim.y + chunk) * R + i) * C + j] = acc[k];
  }
}

// ------------------------------------------------------------------------------------- sampling

// Philox4x32-10 (Salmon et al., Random123) of key (k0, k1) and counter (c0, c1, c2, 0); the
// Triton kernels (shapley_kernels/alignment/_triton_kernels.py) use the same generator.
__device__ __forceinline__ uint4 philox4x32_10(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1, uint32_t c2) {
  uint32_t x0 = c0, x1 = c1, x2 = c2, x3 = 0u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, x0), lo0 = 0xD2511F53u * x0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, x2), lo1 = 0xCD9E8D57u * x2;
    x0 = hi1 ^ x1 ^ k0;
    x1 = lo1;
    x2 = hi0 ^ x3 ^ k1;
    x3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return make_uint4(x0, x1, x2, x3);
}

// A word as a float in [0, 1): (w >> 8) * 2^-24, exact in float32.
__device__ __forceinline__ float uniform01(uint32_t w) { return (float)(w >> 8) * (1.0f / 16777216.0f); }

// g(T+o+e) - g(T+o) - g(T+e) + g(T) of one direction of v2: owners take a softmax over elements
// (rows over phrases for g1, columns over regions for g2). a(owner, element) = a[owner * so +
// element * se]; own / elem: T's owners / elements as bitmasks (the pair's o and e excluded);
// o, e: the pair's owner and element. One pass over T's elements serves T and T+e.
template <typename T>
__device__ T pair_delta(const T* a, int so, int se, uint64_t own, uint64_t elem, int o, int e) {
  T sum0 = T(0), sum1 = T(0), r0_o = T(0), r1_o = T(0);
  for (uint64_t owners = own | (1ull << o); owners != 0ull; owners &= owners - 1ull) {
    const int x = __ffsll((long long)owners) - 1;
    T top = T(0), total = T(0);
    for (uint64_t rest = elem; rest != 0ull; rest &= rest - 1ull)
      push(top, total, a[x * so + (__ffsll((long long)rest) - 1) * se]);
    const T r0 = inverse_total(total);
    push(top, total, a[x * so + e * se]);
    const T r1 = T(1) / total;
    if (x == o) {
      r0_o = r0;
      r1_o = r1;
    } else {
      sum0 += r0;
      sum1 += r1;
    }
  }
  const T n_own = T(__popcll(own));
  const bool has_own = own != 0ull, has_elem = elem != 0ull;
  const T g = (has_own && has_elem) ? sum0 / n_own : T(0);
  const T g_o = (sum0 + r0_o) / (n_own + T(1));  // 0 without an element: r0 = 0
  const T g_e = has_own ? sum1 / n_own : T(0);
  const T g_oe = (sum1 + r1_o) / (n_own + T(1));
  return g_oe - g_o - g_e + g;
}

// One block per pair p = (b * R + i) * C + j; sample n (threads stride over samples) draws, with
// W(t) = philox4x32_10(key, (n, p, t)), q = uniform01(W(0).z) and keeps region t when
// uniform01(W(t).x) < q, phrase t when uniform01(W(t).y) < q (i and j excluded): exactly "size
// uniform over 0..n-2, then a uniform subset". Adds delta = v2(T+ij) - v2(T+i) - v2(T+j) + v2(T)
// and delta^2 into double sums, reduced in a fixed tree (deterministic). Dynamic shared memory:
// the R x C tile.
template <typename T>
__global__ void __launch_bounds__(kSamplingThreads)
sampling_kernel(const T* __restrict__ A, const int* __restrict__ rows, const int* __restrict__ cols,
                double* __restrict__ out_sum, double* __restrict__ out_sq, int R, int C,
                long long num_samples, uint32_t k0, uint32_t k1) {
  ALIGNMENT_DYNAMIC_SHARED(tile_raw);
  T* a_sh = reinterpret_cast<T*>(tile_raw);
  __shared__ double red_sum[kSamplingThreads];
  __shared__ double red_sq[kSamplingThreads];

  const long long p = blockIdx.x;
  const int b = (int)(p / ((long long)R * C));
  const int i = (int)((p / C) % R);
  const int j = (int)(p % C);
  const int n_rows = rows[b], n_cols = cols[b];
  for (int e = threadIdx.x; e < R * C; e += blockDim.x) a_sh[e] = A[(long long)b * R * C + e];
  __syncthreads();

  double sum = 0.0, sq = 0.0;
  if (i < n_rows && j < n_cols) {
    const int players = n_rows > n_cols ? n_rows : n_cols;
    for (long long n = threadIdx.x; n < num_samples; n += blockDim.x) {
      const uint32_t ctr = (uint32_t)n;
      const uint4 w0 = philox4x32_10(k0, k1, ctr, (uint32_t)p, 0u);
      const float q = uniform01(w0.z);
      uint64_t in_r = 0ull, in_p = 0ull;
      for (int t = 0; t < players; ++t) {
        const uint4 w = t == 0 ? w0 : philox4x32_10(k0, k1, ctr, (uint32_t)p, (uint32_t)t);
        if (t < n_rows && t != i && uniform01(w.x) < q) in_r |= 1ull << t;
        if (t < n_cols && t != j && uniform01(w.y) < q) in_p |= 1ull << t;
      }
      const T d1 = pair_delta(a_sh, C, 1, in_r, in_p, i, j);  // rows over phrases
      const T d2 = pair_delta(a_sh, 1, C, in_p, in_r, j, i);  // columns over regions
      const double delta = (double)((d1 + d2) * T(0.5));
      sum += delta;
      sq += delta * delta;
    }
  }
  red_sum[threadIdx.x] = sum;
  red_sq[threadIdx.x] = sq;
  __syncthreads();
  for (unsigned width = kSamplingThreads / 2; width > 0; width >>= 1) {
    if (threadIdx.x < width) {
      red_sum[threadIdx.x] += red_sum[threadIdx.x + width];
      red_sq[threadIdx.x] += red_sq[threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out_sum[p] = red_sum[0];
    out_sq[p] = red_sq[0];
  }
}

}  // namespace

// The kernels' limits, exported through the binding to Python (which refuses a build whose
// limits differ from shapley_kernels._backends.EXTENSION_LIMITS); the host emulation reads them too.
extern "C" int alignment_exact_max() { return kExactMax; }
extern "C" int alignment_sampling_max() { return kSamplingMax; }

#ifndef ALIGNMENT_CUDA_KERNELS_ONLY
// ------------------------------------------------------------------------------------ launchers

namespace {

template <typename T>
cudaError_t launch_game(const T* A, const uint8_t* region_mask, const uint8_t* phrase_mask,
                        const uint8_t* coalitions, T* out, int B, int C, int K, int M, cudaStream_t stream) {
  const long long total = (long long)B * C;
  if (B < 0 || C < 0 || K < 0 || M < 0) return cudaErrorInvalidValue;
  if (total == 0) return cudaSuccess;
  const long long blocks = (total + kGameThreads - 1) / kGameThreads;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
  game_kernel<T><<<(unsigned)blocks, kGameThreads, 0, stream>>>(A, region_mask, phrase_mask, coalitions,
                                                                 out, B, C, K, M);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_exact_direction(const T* A, const int* rows, const int* cols, const T* coef, T* out,
                                   int B, int R, int C, long long subsets_per_chunk, cudaStream_t stream) {
  if (B < 0 || R < 0 || C < 0 || R > kExactMax || C > kExactMax || subsets_per_chunk <= 0)
    return cudaErrorInvalidValue;
  if (B == 0 || R == 0 || C == 0) return cudaSuccess;
  const long long n_chunks = ((1LL << C) + subsets_per_chunk - 1) / subsets_per_chunk;
  if (n_chunks > 65535 || B > 0x7fffffff) return cudaErrorInvalidValue;
  exact_direction_kernel<T><<<dim3((unsigned)B, (unsigned)n_chunks), kExactThreads, 0, stream>>>(
      A, rows, cols, coef, out, R, C, subsets_per_chunk);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_sampling(const T* A, const int* rows, const int* cols, double* out_sum, double* out_sq,
                            int B, int R, int C, long long num_samples, uint32_t k0, uint32_t k1,
                            cudaStream_t stream) {
  if (B < 0 || R < 0 || C < 0 || R > kSamplingMax || C > kSamplingMax || num_samples <= 0 ||
      num_samples > 0xffffffffLL)
    return cudaErrorInvalidValue;
  const long long pairs = (long long)B * R * C;
  if (pairs == 0) return cudaSuccess;
  if (pairs > 0x7fffffffLL) return cudaErrorInvalidValue;  // one block per pair (gridDim.x limit)
  const size_t tile = sizeof(T) * (size_t)R * C;           // <= 32 KiB for 64 x 64 doubles
  sampling_kernel<T><<<(unsigned)pairs, kSamplingThreads, tile, stream>>>(A, rows, cols, out_sum, out_sq, R, C,
                                                                          num_samples, k0, k1);
  return cudaGetLastError();
}

}  // namespace

extern "C" {


cudaError_t alignment_game_f32(const float* A, const uint8_t* region_mask, const uint8_t* phrase_mask,
                               const uint8_t* coalitions, float* out, int B, int C, int K, int M,
                               cudaStream_t stream) {
  return launch_game(A, region_mask, phrase_mask, coalitions, out, B, C, K, M, stream);
}

cudaError_t alignment_game_f64(const double* A, const uint8_t* region_mask, const uint8_t* phrase_mask,
                               const uint8_t* coalitions, double* out, int B, int C, int K, int M,
                               cudaStream_t stream) {
  return launch_game(A, region_mask, phrase_mask, coalitions, out, B, C, K, M, stream);
}

cudaError_t alignment_exact_direction_f32(const float* A, const int* rows, const int* cols, const float* coef,
                                          float* out, int B, int R, int C, long long subsets_per_chunk,
                                          cudaStream_t stream) {
  return launch_exact_direction(A, rows, cols, coef, out, B, R, C, subsets_per_chunk, stream);
}

cudaError_t alignment_exact_direction_f64(const double* A, const int* rows, const int* cols, const double* coef,
                                          double* out, int B, int R, int C, long long subsets_per_chunk,
                                          cudaStream_t stream) {
  return launch_exact_direction(A, rows, cols, coef, out, B, R, C, subsets_per_chunk, stream);
}

cudaError_t alignment_sampling_f32(const float* A, const int* rows, const int* cols, double* out_sum,
                                   double* out_sq, int B, int R, int C, long long num_samples, uint32_t key0,
                                   uint32_t key1, cudaStream_t stream) {
  return launch_sampling(A, rows, cols, out_sum, out_sq, B, R, C, num_samples, key0, key1, stream);
}

cudaError_t alignment_sampling_f64(const double* A, const int* rows, const int* cols, double* out_sum,
                                   double* out_sq, int B, int R, int C, long long num_samples, uint32_t key0,
                                   uint32_t key1, cudaStream_t stream) {
  return launch_sampling(A, rows, cols, out_sum, out_sq, B, R, C, num_samples, key0, key1, stream);
}

}  // extern "C"
#endif  // ALIGNMENT_CUDA_KERNELS_ONLY
