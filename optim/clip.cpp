// optim/clip.cpp: global-norm gradient clipping.
#include "optim/clip.h"

#include <cmath>

namespace lg::optim {

float clip_grad_norm(const std::vector<Tensor>& params, float max_norm) {
  // Summed serially in double: the norm then does not depend on the thread count, and the
  // loop is cheap next to the backward pass that produced the gradients.
  double sum_squares = 0.0;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    const float* pg = g.data();
    for (int64_t i = 0; i < g.numel(); ++i) sum_squares += static_cast<double>(pg[i]) * pg[i];
  }
  double norm = std::sqrt(sum_squares);
  if (std::isfinite(norm) && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / norm);
    for (const Tensor& p : params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      float* pg = g.data();
      const int64_t n = g.numel();
#pragma omp parallel for schedule(static) if (n > (1 << 14))
      for (int64_t i = 0; i < n; ++i) pg[i] *= scale;
    }
  }
  return static_cast<float>(norm);
}

}  // namespace lg::optim
