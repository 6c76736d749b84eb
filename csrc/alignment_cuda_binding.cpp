// PyTorch binding of the alignment-game CUDA kernels (csrc/alignment_cuda.cu): module
// shapley_kernels._cuda. Thin by design: checks devices, dtypes, shapes and contiguity, allocates
// outputs and calls the torch-free launchers on the current CUDA stream of A's device.
// Used by shapley_kernels/alignment/_cuda_backend.py (which compacts and trims A first).
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <tuple>

extern "C" {
cudaError_t alignment_game_f32(const float*, const uint8_t*, const uint8_t*, const uint8_t*, float*, int, int, int,
                               int, cudaStream_t);
cudaError_t alignment_game_f64(const double*, const uint8_t*, const uint8_t*, const uint8_t*, double*, int, int,
                               int, int, cudaStream_t);
cudaError_t alignment_exact_direction_f32(const float*, const int*, const int*, const float*, float*, int, int, int,
                                          long long, cudaStream_t);
cudaError_t alignment_exact_direction_f64(const double*, const int*, const int*, const double*, double*, int, int,
                                          int, long long, cudaStream_t);
cudaError_t alignment_sampling_f32(const float*, const int*, const int*, double*, double*, int, int, int, long long,
                                   uint32_t, uint32_t, cudaStream_t);
cudaError_t alignment_sampling_f64(const double*, const int*, const int*, double*, double*, int, int, int,
                                   long long, uint32_t, uint32_t, cudaStream_t);
int alignment_exact_max();
int alignment_sampling_max();
}

namespace {

const int64_t kExactMax = alignment_exact_max();        // the kernels' own limits (alignment_cuda.cu)
const int64_t kSamplingMax = alignment_sampling_max();

void check_on(const at::Tensor& t, const char* name, const at::Tensor& A) {
  TORCH_CHECK(t.device() == A.device(), name, " must be on A's device ", A.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_matrix(const at::Tensor& A) {
  TORCH_CHECK(A.is_cuda(), "A must be a CUDA tensor");
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble,
              "A must be float32 or float64, got ", A.scalar_type());
  TORCH_CHECK(A.dim() == 3, "A must be [B, K, M], got ", A.sizes());
  TORCH_CHECK(A.is_contiguous(), "A must be contiguous");
}

void check_counts(const at::Tensor& counts, const char* name, const at::Tensor& A) {
  check_on(counts, name, A);
  TORCH_CHECK(counts.scalar_type() == at::kInt, name, " must be int32, got ", counts.scalar_type());
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == A.size(0), name, " must be [B] with B = ", A.size(0));
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " launch failed: ", cudaGetErrorString(err));
}

// v2(S) of every coalition: A float[B, K, M], coalitions bool[B, C, K + M], masks bool[B, K] / [B, M].
at::Tensor game(const at::Tensor& A, const at::Tensor& coalitions, const at::Tensor& region_mask,
                const at::Tensor& phrase_mask) {
  check_matrix(A);
  const int64_t B = A.size(0), K = A.size(1), M = A.size(2);
  check_on(coalitions, "coalitions", A);
  check_on(region_mask, "region_mask", A);
  check_on(phrase_mask, "phrase_mask", A);
  TORCH_CHECK(coalitions.scalar_type() == at::kBool && coalitions.dim() == 3 && coalitions.size(0) == B &&
                  coalitions.size(2) == K + M,
              "coalitions must be bool[B, C, K + M]");
  TORCH_CHECK(region_mask.scalar_type() == at::kBool && region_mask.sizes() == at::IntArrayRef({B, K}),
              "region_mask must be bool[B, K]");
  TORCH_CHECK(phrase_mask.scalar_type() == at::kBool && phrase_mask.sizes() == at::IntArrayRef({B, M}),
              "phrase_mask must be bool[B, M]");
  const int64_t C = coalitions.size(1);
  TORCH_CHECK(B * C * (K + M) < (int64_t(1) << 62) && C <= INT32_MAX && B <= INT32_MAX, "game too large");
  const c10::cuda::CUDAGuard guard(A.device());
  at::Tensor out = at::empty({B, C}, A.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(A.device().index());
  const auto* coal = reinterpret_cast<const uint8_t*>(coalitions.data_ptr<bool>());
  const auto* rm = reinterpret_cast<const uint8_t*>(region_mask.data_ptr<bool>());
  const auto* pm = reinterpret_cast<const uint8_t*>(phrase_mask.data_ptr<bool>());
  cudaError_t err;
  if (A.scalar_type() == at::kFloat) {
    err = alignment_game_f32(A.data_ptr<float>(), rm, pm, coal, out.data_ptr<float>(), (int)B, (int)C, (int)K,
                             (int)M, stream);
  } else {
    err = alignment_game_f64(A.data_ptr<double>(), rm, pm, coal, out.data_ptr<double>(), (int)B, (int)C, (int)K,
                             (int)M, stream);
  }
  check_launch(err, "alignment game");
  return out;
}

// One direction of the factorised exact SII of a compacted A float[B, R, C] (R, C <= 20): chunk
// partials float[B, n_chunks, R, C], n_chunks = ceil(2^C / subsets_per_chunk).
at::Tensor exact_direction(const at::Tensor& A, const at::Tensor& rows, const at::Tensor& cols,
                           const at::Tensor& coef, int64_t subsets_per_chunk) {
  check_matrix(A);
  const int64_t B = A.size(0), R = A.size(1), C = A.size(2);
  TORCH_CHECK(R <= kExactMax && C <= kExactMax, "the CUDA exact kernel takes at most ", kExactMax,
              " present players per side, got ", R, " x ", C);
  TORCH_CHECK(subsets_per_chunk > 0, "subsets_per_chunk must be positive");
  check_counts(rows, "rows", A);
  check_counts(cols, "cols", A);
  check_on(coef, "coef", A);
  TORCH_CHECK(coef.scalar_type() == A.scalar_type() && coef.sizes() == at::IntArrayRef({B, 2, C + 1}),
              "coef must be [B, 2, C + 1] of A's dtype");
  const int64_t n_chunks = ((int64_t(1) << C) + subsets_per_chunk - 1) / subsets_per_chunk;
  const c10::cuda::CUDAGuard guard(A.device());
  at::Tensor out = at::zeros({B, n_chunks, R, C}, A.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(A.device().index());
  cudaError_t err;
  if (A.scalar_type() == at::kFloat) {
    err = alignment_exact_direction_f32(A.data_ptr<float>(), rows.data_ptr<int>(), cols.data_ptr<int>(),
                                        coef.data_ptr<float>(), out.data_ptr<float>(), (int)B, (int)R, (int)C,
                                        subsets_per_chunk, stream);
  } else {
    err = alignment_exact_direction_f64(A.data_ptr<double>(), rows.data_ptr<int>(), cols.data_ptr<int>(),
                                        coef.data_ptr<double>(), out.data_ptr<double>(), (int)B, (int)R, (int)C,
                                        subsets_per_chunk, stream);
  }
  check_launch(err, "alignment exact");
  return out;
}

// Monte Carlo sums of a compacted A float[B, R, C] (R, C <= 64): (sum of deltas, sum of squares),
// each float64[B, R, C]; key0 / key1 the Philox key words.
std::tuple<at::Tensor, at::Tensor> sampling(const at::Tensor& A, const at::Tensor& rows, const at::Tensor& cols,
                                            int64_t num_samples, int64_t key0, int64_t key1) {
  check_matrix(A);
  const int64_t B = A.size(0), R = A.size(1), C = A.size(2);
  TORCH_CHECK(R <= kSamplingMax && C <= kSamplingMax, "the CUDA sampling kernel takes at most ", kSamplingMax,
              " present players per side, got ", R, " x ", C);
  TORCH_CHECK(num_samples > 0 && num_samples <= UINT32_MAX, "num_samples must be in [1, 2^32), got ", num_samples);
  TORCH_CHECK(B * R * C <= INT32_MAX, "too many (matrix, region, phrase) pairs for one launch: ", B * R * C);
  TORCH_CHECK(key0 >= 0 && key0 <= UINT32_MAX && key1 >= 0 && key1 <= UINT32_MAX, "key words must be 32-bit");
  check_counts(rows, "rows", A);
  check_counts(cols, "cols", A);
  const c10::cuda::CUDAGuard guard(A.device());
  at::Tensor total = at::empty({B, R, C}, A.options().dtype(at::kDouble));
  at::Tensor total_sq = at::empty({B, R, C}, A.options().dtype(at::kDouble));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(A.device().index());
  cudaError_t err;
  if (A.scalar_type() == at::kFloat) {
    err = alignment_sampling_f32(A.data_ptr<float>(), rows.data_ptr<int>(), cols.data_ptr<int>(),
                                 total.data_ptr<double>(), total_sq.data_ptr<double>(), (int)B, (int)R, (int)C,
                                 num_samples, (uint32_t)key0, (uint32_t)key1, stream);
  } else {
    err = alignment_sampling_f64(A.data_ptr<double>(), rows.data_ptr<int>(), cols.data_ptr<int>(),
                                 total.data_ptr<double>(), total_sq.data_ptr<double>(), (int)B, (int)R, (int)C,
                                 num_samples, (uint32_t)key0, (uint32_t)key1, stream);
  }
  check_launch(err, "alignment sampling");
  return {total, total_sq};
}

}  // namespace

void register_late_interaction_cuda(pybind11::module_& m);  // csrc/late_interaction_cuda_binding.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CUDA kernels of the LOUPE alignment game (shapley_kernels.alignment backend 'cuda')";
  m.def("alignment_game", &game, "v2 of every coalition: (A, coalitions, region_mask, phrase_mask) -> float[B, C]");
  m.def("alignment_exact_direction", &exact_direction,
        "one direction of the factorised exact SII: (A, rows, cols, coef, subsets_per_chunk) -> float[B, n, R, C]");
  m.def("alignment_sampling_sums", &sampling,
        "Monte Carlo SII sums: (A, rows, cols, num_samples, key0, key1) -> (sum, sum_sq) float64[B, R, C]");
  m.attr("EXACT_LIMIT") = kExactMax;
  m.attr("SAMPLING_LIMIT") = kSamplingMax;
  register_late_interaction_cuda(m);
}
