// CPU kernels of the late-interaction (max-sim) op: shapley_kernels._C
//
//   late_interaction_forward(queries, query_mask, patches)  -> (similarity float[Bt, Bi], argmax int32[Bt, Bi, Q])
//   late_interaction_best(queries, query_mask, patches)     -> (best float[Bt, Bi, Q], argmax int32[Bt, Bi, Q])
//   late_interaction_backward(grad, queries, query_mask, patches, argmax)
//                                                           -> (grad_queries float[Bt, Q, d], grad_patches float[Bi, P, d])
//
// queries float[Bt, Q, d], query_mask bool[Bt, Q], patches float[Bi, P, d], float32 or float64, contiguous,
// finite (checked by shapley_kernels/late_interaction/__init__.py). best[t, i, q] = max_p <q_tq, p_ip>,
// argmax the lowest p attaining it (0 and -1 at a padded query); similarity[t, i] the mean of best over
// t's present queries (0 without one). Arithmetic in the input dtype (float32 accumulates like a GEMM).
//
// Forward: parallel over tiles of captions. A tile's cosines with every patch of every image are
// one GEMM (at::mm, the BLAS the build links: vectorised for the CPU it runs on, which this file,
// built without -march flags, could not be) into a buffer of at most about kTileElements values
// (one caption per tile when a caption alone has more), reduced at once to the max and argmax over
// patches, comparing with '>' in increasing patch order, so ties keep the lowest index. No
// [Bt, Bi, Q, P] tensor: one tile per thread at a time.
// Backward: grad_queries parallel over captions, grad_patches parallel over images; each output row
// is written by one thread only (no atomics), so the result does not depend on the thread count.
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kTileElements = int64_t(1) << 22;  // cosines per thread's tile (16 MiB in float32)

void check_inputs(const at::Tensor& queries, const at::Tensor& query_mask, const at::Tensor& patches) {
  TORCH_CHECK(queries.device().is_cpu() && patches.device().is_cpu(), "queries and patches must be CPU tensors");
  TORCH_CHECK(queries.dim() == 3 && queries.is_contiguous(), "queries must be a contiguous [Bt, Q, d] tensor");
  TORCH_CHECK(patches.dim() == 3 && patches.is_contiguous() && patches.size(2) == queries.size(2),
              "patches must be a contiguous [Bi, P, d] tensor with the queries' d");
  TORCH_CHECK(queries.scalar_type() == patches.scalar_type() &&
                  (queries.scalar_type() == at::kFloat || queries.scalar_type() == at::kDouble),
              "queries and patches must both be float32 or both float64");
  TORCH_CHECK(query_mask.scalar_type() == at::kBool && query_mask.is_contiguous() &&
                  query_mask.sizes() == at::IntArrayRef({queries.size(0), queries.size(1)}),
              "query_mask must be a contiguous bool[Bt, Q]");
}

// best / argmax of every (t, i, q); similarity (may be null) the weighted mean over present queries.
template <typename scalar_t>
void forward_kernel(const at::Tensor& queries, const at::Tensor& query_mask, const at::Tensor& patches,
                    scalar_t* best, int32_t* argmax, scalar_t* similarity) {
  const int64_t Bt = queries.size(0), Q = queries.size(1), d = queries.size(2);
  const int64_t Bi = patches.size(0), P = patches.size(1);
  const int64_t rows = std::max<int64_t>(1, kTileElements / std::max<int64_t>(1, Q * Bi * P));  // captions per tile
  const int64_t tiles = (Bt + rows - 1) / rows;
  const at::Tensor flat_patches = patches.view({Bi * P, d});
  const bool* mask = query_mask.data_ptr<bool>();
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t t0 = tile * rows, t1 = std::min(Bt, t0 + rows);
      // [captions x Q, Bi x P] cosines of one tile (one GEMM; a single thread inside parallel_for)
      const at::Tensor cosines = at::mm(queries.slice(0, t0, t1).reshape({(t1 - t0) * Q, d}), flat_patches.t())
                                     .contiguous();
      const scalar_t* cos = cosines.data_ptr<scalar_t>();
      for (int64_t t = t0; t < t1; ++t) {
        int64_t n = 0;
        for (int64_t q = 0; q < Q; ++q) n += mask[t * Q + q];
        const scalar_t weight = n > 0 ? scalar_t(1) / static_cast<scalar_t>(n) : scalar_t(0);
        for (int64_t i = 0; i < Bi; ++i) {
          const int64_t out = (t * Bi + i) * Q;
          scalar_t total = 0;
          for (int64_t q = 0; q < Q; ++q) {
            if (!mask[t * Q + q]) {
              if (best != nullptr) best[out + q] = 0;
              argmax[out + q] = -1;
              continue;
            }
            const scalar_t* row = cos + (((t - t0) * Q + q) * Bi + i) * P;
            scalar_t top = row[0];
            int32_t where = 0;
            for (int64_t p = 1; p < P; ++p)  // '>' in increasing order: ties keep the lowest index
              if (row[p] > top) {
                top = row[p];
                where = static_cast<int32_t>(p);
              }
            if (best != nullptr) best[out + q] = top;
            argmax[out + q] = where;
            total += top;
          }
          if (similarity != nullptr) similarity[t * Bi + i] = total * weight;
        }
      }
    }
  });
}

std::vector<at::Tensor> late_interaction_forward(const at::Tensor& queries, const at::Tensor& query_mask,
                                                 const at::Tensor& patches) {
  check_inputs(queries, query_mask, patches);
  const int64_t Bt = queries.size(0), Q = queries.size(1), Bi = patches.size(0);
  at::Tensor similarity = at::zeros({Bt, Bi}, queries.options());
  at::Tensor argmax = at::empty({Bt, Bi, Q}, queries.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "late_interaction_forward", [&] {
    forward_kernel<scalar_t>(queries, query_mask, patches, nullptr, argmax.data_ptr<int32_t>(),
                             similarity.data_ptr<scalar_t>());
  });
  return {similarity, argmax};
}

std::vector<at::Tensor> late_interaction_best(const at::Tensor& queries, const at::Tensor& query_mask,
                                              const at::Tensor& patches) {
  check_inputs(queries, query_mask, patches);
  const int64_t Bt = queries.size(0), Q = queries.size(1), Bi = patches.size(0);
  at::Tensor best = at::empty({Bt, Bi, Q}, queries.options());
  at::Tensor argmax = at::empty({Bt, Bi, Q}, queries.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "late_interaction_best", [&] {
    forward_kernel<scalar_t>(queries, query_mask, patches, best.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>(),
                             nullptr);
  });
  return {best, argmax};
}

// dst[0..d) += scale * src[0..d)
template <typename scalar_t>
inline void add_scaled(scalar_t* dst, const scalar_t* src, scalar_t scale, int64_t d) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) dst[k] += scale * src[k];
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& queries, const at::Tensor& query_mask,
                     const at::Tensor& patches, const at::Tensor& argmax, at::Tensor& grad_queries,
                     at::Tensor& grad_patches) {
  const int64_t Bt = queries.size(0), Q = queries.size(1), d = queries.size(2);
  const int64_t Bi = patches.size(0), P = patches.size(1);
  const scalar_t* g = grad.data_ptr<scalar_t>();
  const scalar_t* q_data = queries.data_ptr<scalar_t>();
  const scalar_t* p_data = patches.data_ptr<scalar_t>();
  const int32_t* arg = argmax.data_ptr<int32_t>();
  const bool* mask = query_mask.data_ptr<bool>();
  scalar_t* gq = grad_queries.data_ptr<scalar_t>();
  scalar_t* gp = grad_patches.data_ptr<scalar_t>();
  std::vector<scalar_t> weight(Bt);  // 1 / |present queries of t|
  for (int64_t t = 0; t < Bt; ++t) {
    int64_t n = 0;
    for (int64_t q = 0; q < Q; ++q) n += mask[t * Q + q];
    weight[t] = n > 0 ? scalar_t(1) / static_cast<scalar_t>(n) : scalar_t(0);
  }
  // padded queries have argmax -1: skipped
  at::parallel_for(0, Bt, 1, [&](int64_t begin, int64_t end) {  // grad_queries[t, q] += share * patches[i, arg]
    for (int64_t t = begin; t < end; ++t)
      for (int64_t i = 0; i < Bi; ++i)
        for (int64_t q = 0; q < Q; ++q)
          if (const int32_t p = arg[(t * Bi + i) * Q + q]; p >= 0)
            add_scaled(gq + (t * Q + q) * d, p_data + (i * P + p) * d, g[t * Bi + i] * weight[t], d);
  });
  at::parallel_for(0, Bi, 1, [&](int64_t begin, int64_t end) {  // grad_patches[i, arg] += share * queries[t, q]
    for (int64_t i = begin; i < end; ++i)
      for (int64_t t = 0; t < Bt; ++t)
        for (int64_t q = 0; q < Q; ++q)
          if (const int32_t p = arg[(t * Bi + i) * Q + q]; p >= 0)
            add_scaled(gp + (i * P + p) * d, q_data + (t * Q + q) * d, g[t * Bi + i] * weight[t], d);
  });
}

std::vector<at::Tensor> late_interaction_backward(const at::Tensor& grad, const at::Tensor& queries,
                                                  const at::Tensor& query_mask, const at::Tensor& patches,
                                                  const at::Tensor& argmax) {
  check_inputs(queries, query_mask, patches);
  const int64_t Bt = queries.size(0), Q = queries.size(1), Bi = patches.size(0), P = patches.size(1);
  TORCH_CHECK(grad.scalar_type() == queries.scalar_type() && grad.is_contiguous() &&
                  grad.sizes() == at::IntArrayRef({Bt, Bi}),
              "grad must be a contiguous [Bt, Bi] tensor of the queries' dtype");
  TORCH_CHECK(argmax.scalar_type() == at::kInt && argmax.is_contiguous() &&
                  argmax.sizes() == at::IntArrayRef({Bt, Bi, Q}),
              "argmax must be a contiguous int32[Bt, Bi, Q]");
  TORCH_CHECK(argmax.numel() == 0 || argmax.max().item<int32_t>() < P, "argmax holds a patch index >= P");
  at::Tensor grad_queries = at::zeros_like(queries);
  at::Tensor grad_patches = at::zeros_like(patches);
  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "late_interaction_backward", [&] {
    backward_kernel<scalar_t>(grad, queries, query_mask, patches, argmax, grad_queries, grad_patches);
  });
  return {grad_queries, grad_patches};
}

}  // namespace

void register_late_interaction(pybind11::module_& m) {
  m.def("late_interaction_forward", &late_interaction_forward,
        "late interaction: [similarity float[Bt, Bi], argmax int32[Bt, Bi, Q]]", py::arg("queries"),
        py::arg("query_mask"), py::arg("patches"));
  m.def("late_interaction_best", &late_interaction_best, "[best float[Bt, Bi, Q], argmax int32[Bt, Bi, Q]]",
        py::arg("queries"), py::arg("query_mask"), py::arg("patches"));
  m.def("late_interaction_backward", &late_interaction_backward,
        "[grad_queries float[Bt, Q, d], grad_patches float[Bi, P, d]]", py::arg("grad"), py::arg("queries"),
        py::arg("query_mask"), py::arg("patches"), py::arg("argmax"));
}
