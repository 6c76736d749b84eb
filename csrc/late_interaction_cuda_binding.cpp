// PyTorch binding of the late-interaction CUDA kernels (csrc/late_interaction_cuda.cu), part of
// the module shapley_kernels._cuda (registered from csrc/alignment_cuda_binding.cpp). Thin by
// design: checks devices, dtypes, shapes and contiguity, allocates outputs and calls the
// torch-free launchers on the current CUDA stream. Used by shapley_kernels/late_interaction/_cuda_backend.py.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <tuple>

extern "C" {
cudaError_t late_interaction_forward_f32(const float*, const uint8_t*, const float*, float*, float*, int32_t*,
                                         long long, long long, int, int, int, cudaStream_t);
cudaError_t late_interaction_forward_f64(const double*, const uint8_t*, const double*, double*, double*, int32_t*,
                                         long long, long long, int, int, int, cudaStream_t);
cudaError_t late_interaction_backward_f32(const float*, const float*, const float*, const float*, const int32_t*,
                                          float*, float*, long long, long long, int, int, int, cudaStream_t);
cudaError_t late_interaction_backward_f64(const double*, const double*, const double*, const double*,
                                          const int32_t*, double*, double*, long long, long long, int, int, int,
                                          cudaStream_t);
}

namespace {

void check_pair(const at::Tensor& queries, const at::Tensor& patches) {
  TORCH_CHECK(queries.is_cuda() && patches.device() == queries.device(), "queries and patches must be on one CUDA device");
  TORCH_CHECK(queries.dim() == 3 && patches.dim() == 3 && patches.size(2) == queries.size(2) &&
                  queries.is_contiguous() && patches.is_contiguous(),
              "queries [Bt, Q, D] and patches [Bi, P, D] must be contiguous with one D");
  TORCH_CHECK(queries.scalar_type() == patches.scalar_type() &&
                  (queries.scalar_type() == at::kFloat || queries.scalar_type() == at::kDouble),
              "queries and patches must both be float32 or both float64");
  TORCH_CHECK(queries.size(1) <= INT32_MAX && patches.size(1) <= INT32_MAX && queries.size(2) <= INT32_MAX,
              "Q, P and D must fit int32");
}

void check_like(const at::Tensor& t, const char* name, at::IntArrayRef sizes, at::ScalarType dtype,
                const at::Tensor& queries) {
  TORCH_CHECK(t.device() == queries.device() && t.is_contiguous() && t.scalar_type() == dtype && t.sizes() == sizes,
              name, " must be a contiguous ", dtype, " ", sizes, " tensor on the queries' device");
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " launch failed: ", cudaGetErrorString(err));
}

// (similarity float[Bt, Bi], best float[Bt, Bi, Q] (empty unless write_best), argmax int32[Bt, Bi, Q])
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& queries, const at::Tensor& query_mask,
                                                       const at::Tensor& patches, bool write_best) {
  check_pair(queries, patches);
  const int64_t Bt = queries.size(0), Q = queries.size(1), D = queries.size(2), Bi = patches.size(0),
                P = patches.size(1);
  check_like(query_mask, "query_mask", {Bt, Q}, at::kBool, queries);
  const c10::cuda::CUDAGuard guard(queries.device());
  at::Tensor similarity = at::empty({Bt, Bi}, queries.options());
  at::Tensor best = at::empty({write_best ? Bt : 0, Bi, Q}, queries.options());
  at::Tensor argmax = at::empty({Bt, Bi, Q}, queries.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(queries.device().index());
  const auto* mask = reinterpret_cast<const uint8_t*>(query_mask.data_ptr<bool>());
  cudaError_t err;
  if (queries.scalar_type() == at::kFloat) {
    err = late_interaction_forward_f32(queries.data_ptr<float>(), mask, patches.data_ptr<float>(),
                                       similarity.data_ptr<float>(), write_best ? best.data_ptr<float>() : nullptr,
                                       argmax.data_ptr<int32_t>(), Bt, Bi, (int)Q, (int)P, (int)D, stream);
  } else {
    err = late_interaction_forward_f64(queries.data_ptr<double>(), mask, patches.data_ptr<double>(),
                                       similarity.data_ptr<double>(), write_best ? best.data_ptr<double>() : nullptr,
                                       argmax.data_ptr<int32_t>(), Bt, Bi, (int)Q, (int)P, (int)D, stream);
  }
  check_launch(err, "late interaction forward");
  return {similarity, best, argmax};
}

// (grad_queries float[Bt, Q, D], grad_patches float[Bi, P, D]); weight float[Bt, Q] = 1 / |present queries|.
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& weight,
                                            const at::Tensor& queries, const at::Tensor& patches,
                                            const at::Tensor& argmax) {
  check_pair(queries, patches);
  const int64_t Bt = queries.size(0), Q = queries.size(1), D = queries.size(2), Bi = patches.size(0),
                P = patches.size(1);
  check_like(grad, "grad", {Bt, Bi}, queries.scalar_type(), queries);
  check_like(weight, "weight", {Bt, Q}, queries.scalar_type(), queries);
  check_like(argmax, "argmax", {Bt, Bi, Q}, at::kInt, queries);
  const c10::cuda::CUDAGuard guard(queries.device());
  at::Tensor grad_queries = at::empty_like(queries);
  at::Tensor grad_patches = at::zeros_like(patches);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(queries.device().index());
  cudaError_t err;
  if (queries.scalar_type() == at::kFloat) {
    err = late_interaction_backward_f32(grad.data_ptr<float>(), weight.data_ptr<float>(), queries.data_ptr<float>(),
                                        patches.data_ptr<float>(), argmax.data_ptr<int32_t>(),
                                        grad_queries.data_ptr<float>(), grad_patches.data_ptr<float>(), Bt, Bi, (int)Q,
                                        (int)P, (int)D, stream);
  } else {
    err = late_interaction_backward_f64(grad.data_ptr<double>(), weight.data_ptr<double>(),
                                        queries.data_ptr<double>(), patches.data_ptr<double>(),
                                        argmax.data_ptr<int32_t>(), grad_queries.data_ptr<double>(),
                                        grad_patches.data_ptr<double>(), Bt, Bi, (int)Q, (int)P, (int)D, stream);
  }
  check_launch(err, "late interaction backward");
  return {grad_queries, grad_patches};
}

}  // namespace

void register_late_interaction_cuda(pybind11::module_& m) {
  m.def("late_interaction_forward", &forward,
        "(queries, query_mask, patches, write_best) -> (similarity [Bt, Bi], best [Bt or 0, Bi, Q], argmax int32)");
  m.def("late_interaction_backward", &backward,
        "(grad, weight, queries, patches, argmax) -> (grad_queries [Bt, Q, D], grad_patches [Bi, P, D])");
}
