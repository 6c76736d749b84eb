// CPU kernels of the alignment game (spec section 4): shapley_kernels._C
//
//   alignment_game(A, coalitions, region_mask, phrase_mask)            -> float[B, C]
//   alignment_exact(A, region_mask, phrase_mask, weights)              -> float[B, K, M]
//   alignment_sampling(A, region_mask, phrase_mask, num_samples, seed) -> (value, stderr) float[B, K, M]
//
// A is float32 or float64 [B, K, M], contiguous, finite (checked by the Python dispatcher,
// shapley_kernels/alignment/__init__.py); masks are bool[B, K] / bool[B, M]. Arithmetic is in double
// whatever the input dtype; outputs have A's dtype. The exact path is the factorised algorithm of
// docs/alignment_exact.md: per matrix and direction, a depth-first walk over the subsets of the
// present elements in each owner's descending-logit order, so the max of every subset is its
// first element and a softmax max costs one add and one division per subset (no exp in the
// walk); all owners of a direction walk together, vectorised.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace {

constexpr int kExactLimit = 20;

// ------------------------------------------------------------------------------ shared helpers

// Running max and sum of exp(x - max): the max of a softmax is 1 / sum.
struct MaxSum {
  double top = -std::numeric_limits<double>::infinity();
  double sum = 0.0;
  inline void add(double x) {
    if (x > top) {
      sum = sum * std::exp(top - x) + 1.0;
      top = x;
    } else {
      sum += std::exp(x - top);
    }
  }
  inline double softmax_max() const { return sum > 0.0 ? 1.0 / sum : 0.0; }
};

// Present indices of one mask row.
inline std::vector<int> present_indices(const bool* mask, int64_t n) {
  std::vector<int> idx;
  for (int64_t k = 0; k < n; ++k)
    if (mask[k]) idx.push_back(static_cast<int>(k));
  return idx;
}

void check_inputs(const at::Tensor& A, const at::Tensor& region_mask, const at::Tensor& phrase_mask) {
  TORCH_CHECK(A.device().is_cpu(), "A must be a CPU tensor");
  TORCH_CHECK(A.dim() == 3 && A.is_contiguous(), "A must be a contiguous [B, K, M] tensor");
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble, "A must be float32 or float64");
  TORCH_CHECK(region_mask.scalar_type() == at::kBool && region_mask.is_contiguous() &&
                  region_mask.sizes() == at::IntArrayRef({A.size(0), A.size(1)}),
              "region_mask must be a contiguous bool[B, K]");
  TORCH_CHECK(phrase_mask.scalar_type() == at::kBool && phrase_mask.is_contiguous() &&
                  phrase_mask.sizes() == at::IntArrayRef({A.size(0), A.size(2)}),
              "phrase_mask must be a contiguous bool[B, M]");
}

// ------------------------------------------------------------------------------------- game

template <typename scalar_t>
void game_kernel(const at::Tensor& A, const at::Tensor& coalitions, const at::Tensor& region_mask,
                 const at::Tensor& phrase_mask, at::Tensor& out) {
  const int64_t B = A.size(0), K = A.size(1), M = A.size(2), C = coalitions.size(1);
  const scalar_t* a = A.data_ptr<scalar_t>();
  const bool* coal = coalitions.data_ptr<bool>();
  const bool* rm = region_mask.data_ptr<bool>();
  const bool* pm = phrase_mask.data_ptr<bool>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, K * M));  // ~4k entries a share
  at::parallel_for(0, B * C, grain, [&](int64_t begin, int64_t end) {
    std::vector<int> rows, cols;
    std::vector<MaxSum> col_stats;
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C;
      const bool* s = coal + bc * (K + M);
      rows.clear();
      cols.clear();
      for (int64_t k = 0; k < K; ++k)
        if (s[k] && rm[b * K + k]) rows.push_back(static_cast<int>(k));
      for (int64_t m = 0; m < M; ++m)
        if (s[K + m] && pm[b * M + m]) cols.push_back(static_cast<int>(m));
      if (rows.empty() || cols.empty()) {
        o[bc] = scalar_t(0);
        continue;
      }
      const scalar_t* ab = a + b * K * M;
      col_stats.assign(cols.size(), MaxSum());
      double s1 = 0.0;
      for (int r : rows) {
        MaxSum row;
        for (size_t c = 0; c < cols.size(); ++c) {
          const double x = static_cast<double>(ab[r * M + cols[c]]);
          row.add(x);
          col_stats[c].add(x);
        }
        s1 += row.softmax_max();
      }
      double s2 = 0.0;
      for (const MaxSum& cs : col_stats) s2 += cs.softmax_max();
      o[bc] = static_cast<scalar_t>(0.5 * (s1 / rows.size() + s2 / cols.size()));
    }
  });
}

at::Tensor alignment_game(const at::Tensor& A, const at::Tensor& coalitions, const at::Tensor& region_mask,
                          const at::Tensor& phrase_mask) {
  check_inputs(A, region_mask, phrase_mask);
  TORCH_CHECK(coalitions.scalar_type() == at::kBool && coalitions.dim() == 3 && coalitions.is_contiguous() &&
                  coalitions.size(0) == A.size(0) && coalitions.size(2) == A.size(1) + A.size(2),
              "coalitions must be a contiguous bool[B, C, K + M]");
  at::Tensor out = at::zeros({A.size(0), coalitions.size(1)}, A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "alignment_game", [&] {
    game_kernel<scalar_t>(A, coalitions, region_mask, phrase_mask, out);
  });
  return out;
}

// ------------------------------------------------------------------------- exact, factorised

// One direction of one matrix (docs/alignment_exact.md, section 3): for every present owner o,
//   G_x[o] = sum_U x(|U|) r_o(U),  H_x[o][e] = sum_{U containing e} d_x(|U|) r_o(U),  x in {c, b},
// over the nonempty subsets U of the m present elements, d_x(u) = x(u-1) + x(u).
// Each owner numbers the elements by descending logit (positions), so the max of U is its first
// position f and r_o(U) = 1 / sum_{e in U} E_o[f][e] with E_o[f][e] = exp(a_oe - a_of) <= 1.
// A depth-first walk visits every U once (children add later positions), carrying the running
// sum: one add and one division per subset and owner, no exp. The subtree of the node whose last
// position is e holds exactly the U with U ∩ [0, e] = node, so H_x[o][e] += (subtree sum of
// d_x(|U|) r_o(U)). In position space the tree is the same for every owner, so all k owners walk
// it together as vectors (one recursion for the direction, SIMD over owners).
struct DirectionWalk {
  int k, m;
  const double* E;  // [m, m, k]: E[(f * m + e) * k + o] = E_o[f][e], e > f
  double c[kExactLimit + 1], b[kExactLimit + 1], dc[kExactLimit + 1], db[kExactLimit + 1];
  double Gc[kExactLimit] = {0.0}, Gb[kExactLimit] = {0.0};
  double Hc[kExactLimit][kExactLimit] = {{0.0}}, Hb[kExactLimit][kExactLimit] = {{0.0}};  // [position][owner]

  // Visits the node (first position f, sums s[o], size u, last position); adds its subtree sums
  // of d_x(|U|) r_o(U) into sub_c / sub_b (which it initialises).
  void visit(int f, const double* s, int u, int last, double* sub_c, double* sub_b) {
    double child_s[kExactLimit], child_c[kExactLimit], child_b[kExactLimit];
    for (int o = 0; o < k; ++o) {
      const double r = 1.0 / s[o];
      Gc[o] += c[u] * r;
      Gb[o] += b[u] * r;
      sub_c[o] = dc[u] * r;
      sub_b[o] = db[u] * r;
    }
    for (int e = last + 1; e < m; ++e) {
      const double* Efe = E + (static_cast<int64_t>(f) * m + e) * k;
      if (e == m - 1) {  // a leaf: no children, inlined
        for (int o = 0; o < k; ++o) {
          const double r = 1.0 / (s[o] + Efe[o]);
          const double tc = dc[u + 1] * r, tb = db[u + 1] * r;
          Gc[o] += c[u + 1] * r;
          Gb[o] += b[u + 1] * r;
          Hc[e][o] += tc;
          Hb[e][o] += tb;
          sub_c[o] += tc;
          sub_b[o] += tb;
        }
      } else {
        for (int o = 0; o < k; ++o) child_s[o] = s[o] + Efe[o];
        visit(f, child_s, u + 1, e, child_c, child_b);
        for (int o = 0; o < k; ++o) {
          sub_c[o] += child_c[o];
          sub_b[o] += child_b[o];
        }
      }
    }
    for (int o = 0; o < k; ++o) {
      Hc[last][o] += sub_c[o];
      Hb[last][o] += sub_b[o];
    }
  }

  void run() {
    double ones[kExactLimit], sub_c[kExactLimit], sub_b[kExactLimit];
    std::fill(ones, ones + k, 1.0);
    for (int f = 0; f < m; ++f) visit(f, ones, 1, f, sub_c, sub_b);
  }
};

// Direction of matrix `a`: owner o's logit for element e is a[o * row_stride + e * elem_stride].
// Writes gain[o * out_stride + e] = H_c[o][e] - G_c[o] and tot[...] = H_b[o][e] - G_b[o] at the
// original indices of the present owners and elements. `E` is scratch.
void direction(const double* a, int64_t row_stride, int64_t elem_stride, const std::vector<int>& owners,
               const std::vector<int>& elems, const double* weights, int64_t wdim, std::vector<double>& E,
               double* gain, double* tot, int64_t out_stride) {
  const int k = static_cast<int>(owners.size()), m = static_cast<int>(elems.size());
  E.assign(static_cast<size_t>(m) * m * k, 0.0);
  int order[kExactLimit][kExactLimit];  // [owner][position] -> index into elems
  for (int o = 0; o < k; ++o) {
    const double* arow = a + owners[o] * row_stride;
    int* ord = order[o];
    std::iota(ord, ord + m, 0);
    std::stable_sort(ord, ord + m, [&](int x, int y) {
      return arow[elems[x] * elem_stride] > arow[elems[y] * elem_stride];
    });
    for (int f = 0; f < m; ++f)
      for (int e = f + 1; e < m; ++e)
        E[(static_cast<size_t>(f) * m + e) * k + o] =
            std::exp(arow[elems[ord[e]] * elem_stride] - arow[elems[ord[f]] * elem_stride]);
  }
  DirectionWalk walk;
  walk.k = k;
  walk.m = m;
  walk.E = E.data();
  // weights: float64[2, W, W, W] with W = wdim; [0, k, m, u] = c(u), [1, k, m, u] = b(u)
  const double* c = weights + (static_cast<int64_t>(k) * wdim + m) * wdim;
  const double* b = weights + ((wdim + k) * wdim + m) * wdim;
  for (int u = 0; u <= m; ++u) {
    walk.c[u] = c[u];
    walk.b[u] = b[u];
    walk.dc[u] = c[u] + (u > 0 ? c[u - 1] : 0.0);
    walk.db[u] = b[u] + (u > 0 ? b[u - 1] : 0.0);
  }
  walk.run();
  for (int o = 0; o < k; ++o)
    for (int p = 0; p < m; ++p) {
      const int64_t at = owners[o] * out_stride + elems[order[o][p]];
      gain[at] = walk.Hc[p][o] - walk.Gc[o];
      tot[at] = walk.Hb[p][o] - walk.Gb[o];
    }
}

template <typename scalar_t>
void exact_kernel(const at::Tensor& A, const at::Tensor& region_mask, const at::Tensor& phrase_mask,
                  const at::Tensor& weights, at::Tensor& out) {
  const int64_t B = A.size(0), K = A.size(1), M = A.size(2);
  const at::Tensor Ad = A.to(at::kDouble).contiguous();
  const double* a = Ad.data_ptr<double>();
  const bool* rm = region_mask.data_ptr<bool>();
  const bool* pm = phrase_mask.data_ptr<bool>();
  const double* w = weights.data_ptr<double>();
  const int64_t wdim = weights.size(1);
  // scratch: per direction, gain and tot per (owner, element)
  std::vector<double> g1(B * K * M, 0.0), t1(B * K * M, 0.0), g2(B * M * K, 0.0), t2(B * M * K, 0.0);
  std::vector<std::vector<int>> rows(B), cols(B);
  size_t widest = 1;
  for (int64_t b = 0; b < B; ++b) {
    rows[b] = present_indices(rm + b * K, K);
    cols[b] = present_indices(pm + b * M, M);
    widest = std::max({widest, rows[b].size(), cols[b].size()});
  }
  TORCH_CHECK(widest <= static_cast<size_t>(kExactLimit), "exact path: at most ", kExactLimit,
              " present regions and phrases per matrix");
  TORCH_CHECK(static_cast<size_t>(wdim) > widest, "weights table too small");
  // one task per (matrix, direction); a thread's share holds at least ~2^16 subset visits,
  // so small problems stay on one thread
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) >> widest);
  at::parallel_for(0, 2 * B, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> E;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / 2;
      const auto& R = rows[b];
      const auto& P = cols[b];
      if (R.empty() || P.empty()) continue;
      const double* ab = a + b * K * M;
      if (task % 2 == 0)  // owners = regions (rows of A), elements = phrases
        direction(ab, M, 1, R, P, w, wdim, E, &g1[b * K * M], &t1[b * K * M], M);
      else                // owners = phrases (columns of A), elements = regions
        direction(ab, 1, M, P, R, w, wdim, E, &g2[b * M * K], &t2[b * M * K], K);
    }
  });
  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> tot_col(M), tot_row(K);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(tot_col.begin(), tot_col.end(), 0.0);
      std::fill(tot_row.begin(), tot_row.end(), 0.0);
      for (int64_t i : rows[b])
        for (int64_t j : cols[b]) {
          tot_col[j] += t1[(b * K + i) * M + j];
          tot_row[i] += t2[(b * M + j) * K + i];
        }
      for (int64_t i : rows[b])
        for (int64_t j : cols[b]) {
          const double dir1 = g1[(b * K + i) * M + j] - tot_col[j];
          const double dir2 = g2[(b * M + j) * K + i] - tot_row[i];
          o[(b * K + i) * M + j] = static_cast<scalar_t>(0.5 * (dir1 + dir2));
        }
    }
  });
}

at::Tensor alignment_exact(const at::Tensor& A, const at::Tensor& region_mask, const at::Tensor& phrase_mask,
                           const at::Tensor& weights) {
  check_inputs(A, region_mask, phrase_mask);
  TORCH_CHECK(weights.scalar_type() == at::kDouble && weights.dim() == 4 && weights.size(0) == 2 &&
                  weights.is_contiguous(),
              "weights must be a contiguous float64[2, W, W, W]");
  at::Tensor out = at::zeros(A.sizes(), A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "alignment_exact", [&] {
    exact_kernel<scalar_t>(A, region_mask, phrase_mask, weights, out);
  });
  return out;
}

// ------------------------------------------------------------------------------------ sampling

// Counter-based randomness: SplitMix64 finaliser of (seed, matrix, pair, sample, draw).
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
inline double unit(uint64_t key, uint64_t draw) {  // uniform in [0, 1)
  return static_cast<double>(mix64(key ^ mix64(draw)) >> 11) * (1.0 / 9007199254740992.0);
}

// v2 from the softmax maxima of the present rows and columns: 0 unless both sides are nonempty.
inline double v2_value(double row_sum, int64_t n_rows, double col_sum, int64_t n_cols) {
  return (n_rows == 0 || n_cols == 0) ? 0.0 : 0.5 * (row_sum / n_rows + col_sum / n_cols);
}

template <typename scalar_t>
void sampling_kernel(const at::Tensor& A, const at::Tensor& region_mask, const at::Tensor& phrase_mask,
                     int64_t num_samples, int64_t seed, at::Tensor& value, at::Tensor& stderr_out) {
  const int64_t B = A.size(0), K = A.size(1), M = A.size(2);
  const at::Tensor Ad = A.to(at::kDouble).contiguous();
  const double* a = Ad.data_ptr<double>();
  const bool* rm = region_mask.data_ptr<bool>();
  const bool* pm = phrase_mask.data_ptr<bool>();
  scalar_t* val = value.data_ptr<scalar_t>();
  scalar_t* se = stderr_out.data_ptr<scalar_t>();
  const uint64_t seed_key = mix64(static_cast<uint64_t>(seed));
  at::parallel_for(0, B * K * M, 1, [&](int64_t begin, int64_t end) {
    std::vector<int> X, Y;
    std::vector<MaxSum> col_stats;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (K * M), i = (task / M) % K, j = task % M;
      if (!rm[b * K + i] || !pm[b * M + j]) continue;
      const double* ab = a + b * K * M;
      const uint64_t pair_key = mix64(mix64(mix64(seed_key ^ static_cast<uint64_t>(b)) ^ static_cast<uint64_t>(i)) ^
                                      static_cast<uint64_t>(j));
      double mean = 0.0, m2 = 0.0;  // Welford
      for (int64_t s = 0; s < num_samples; ++s) {
        const uint64_t key = mix64(pair_key ^ static_cast<uint64_t>(s));
        const double q = unit(key, 0);
        X.clear();
        Y.clear();
        for (int64_t r = 0; r < K; ++r)  // draw 1 + 2r: independent of padding added after r
          if (r != i && rm[b * K + r] && unit(key, 1 + 2 * r) < q) X.push_back(static_cast<int>(r));
        for (int64_t p = 0; p < M; ++p)
          if (p != j && pm[b * M + p] && unit(key, 2 + 2 * p) < q) Y.push_back(static_cast<int>(p));
        // rows over Y and over Y+j; columns over X and over X+i
        double rows_Y = 0.0, rows_Yj = 0.0;  // sum over r in X of 1/sum
        double row_i_Y, row_i_Yj;
        col_stats.assign(Y.size(), MaxSum());
        for (int r : X) {
          MaxSum row;
          for (size_t c = 0; c < Y.size(); ++c) {
            const double x = ab[r * M + Y[c]];
            row.add(x);
            col_stats[c].add(x);
          }
          rows_Y += row.softmax_max();
          row.add(ab[r * M + j]);
          rows_Yj += row.softmax_max();
        }
        {
          MaxSum row;
          for (int p : Y) row.add(ab[i * M + p]);
          row_i_Y = row.softmax_max();
          row.add(ab[i * M + j]);
          row_i_Yj = row.softmax_max();
        }
        double cols_X = 0.0, cols_Xi = 0.0;
        for (size_t c = 0; c < Y.size(); ++c) {
          cols_X += col_stats[c].softmax_max();
          col_stats[c].add(ab[i * M + Y[c]]);
          cols_Xi += col_stats[c].softmax_max();
        }
        double col_j_X, col_j_Xi;
        {
          MaxSum col;
          for (int r : X) col.add(ab[r * M + j]);
          col_j_X = col.softmax_max();
          col.add(ab[i * M + j]);
          col_j_Xi = col.softmax_max();
        }
        const int64_t nx = X.size(), ny = Y.size();
        const double v_T = v2_value(rows_Y, nx, cols_X, ny);
        const double v_i = v2_value(rows_Y + row_i_Y, nx + 1, cols_Xi, ny);
        const double v_j = v2_value(rows_Yj, nx, cols_X + col_j_X, ny + 1);
        const double v_ij = v2_value(rows_Yj + row_i_Yj, nx + 1, cols_Xi + col_j_Xi, ny + 1);
        const double delta = v_ij - v_i - v_j + v_T;
        const double step = delta - mean;
        mean += step / static_cast<double>(s + 1);
        m2 += step * (delta - mean);
      }
      val[task] = static_cast<scalar_t>(mean);
      se[task] = static_cast<scalar_t>(
          num_samples > 1 ? std::sqrt(m2 / static_cast<double>(num_samples - 1) / static_cast<double>(num_samples))
                          : 0.0);
    }
  });
}

std::vector<at::Tensor> alignment_sampling(const at::Tensor& A, const at::Tensor& region_mask,
                                           const at::Tensor& phrase_mask, int64_t num_samples, int64_t seed) {
  check_inputs(A, region_mask, phrase_mask);
  TORCH_CHECK(num_samples > 0, "num_samples must be positive");
  at::Tensor value = at::zeros(A.sizes(), A.options());
  at::Tensor stderr_out = at::zeros(A.sizes(), A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "alignment_sampling", [&] {
    sampling_kernel<scalar_t>(A, region_mask, phrase_mask, num_samples, seed, value, stderr_out);
  });
  return {value, stderr_out};
}

}  // namespace

void register_late_interaction(pybind11::module_& m);  // csrc/late_interaction_cpu.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU kernels of the LOUPE alignment game and the late-interaction op (backend 'cpp')";
  m.def("alignment_game", &alignment_game, "v2(S) per coalition: float[B, C]", py::arg("A"), py::arg("coalitions"),
        py::arg("region_mask"), py::arg("phrase_mask"));
  m.def("alignment_exact", &alignment_exact, "factorised exact SII: float[B, K, M]", py::arg("A"),
        py::arg("region_mask"), py::arg("phrase_mask"), py::arg("weights"));
  m.def("alignment_sampling", &alignment_sampling, "Monte Carlo SII: [value, stderr] float[B, K, M]",
        py::arg("A"), py::arg("region_mask"), py::arg("phrase_mask"), py::arg("num_samples"), py::arg("seed"));
  m.attr("EXACT_LIMIT") = kExactLimit;
  register_late_interaction(m);
}
