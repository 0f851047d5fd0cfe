// optim/clip.cpp: global-norm gradient clipping.
#include "optim/clip.h"

#include <cmath>

#include "optim/blocks.h"

namespace lg::optim {

float clip_grad_norm(const std::vector<Tensor>& params, float max_norm) {
  std::vector<Tensor> grads;
  std::vector<int64_t> sizes;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    sizes.push_back(g.numel());
    grads.push_back(std::move(g));
  }
  // Squares summed in double, block by block in parallel, then the block sums in order: the
  // norm does not depend on the thread count.
  const std::vector<Block> blocks = cut_into_blocks(sizes);
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  std::vector<double> partial(blocks.size(), 0.0);
#pragma omp parallel for schedule(static) if (n_blocks > 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const float* g = grads[blocks[b].tensor].data();
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = blocks[b].begin; i < blocks[b].end; ++i) s += static_cast<double>(g[i]) * g[i];
    partial[b] = s;
  }
  double sum_squares = 0.0;
  for (double s : partial) sum_squares += s;
  const double norm = std::sqrt(sum_squares);
  if (std::isfinite(norm) && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / norm);
#pragma omp parallel for schedule(static) if (n_blocks > 1)
    for (int64_t b = 0; b < n_blocks; ++b) {
      float* g = grads[blocks[b].tensor].data();
#pragma omp simd
      for (int64_t i = blocks[b].begin; i < blocks[b].end; ++i) g[i] *= scale;
    }
  }
  return static_cast<float>(norm);
}

}  // namespace lg::optim
