// nn/mlp.cpp: the feed-forward network composed from Linear and the core gelu op.
#include "nn/mlp.h"

#include <cmath>

namespace lg::nn {

MLP::MLP(int64_t dim, int64_t layers, bool bias, Rng& rng) {
  float residual_std = 0.02f / std::sqrt(2.0f * static_cast<float>(layers));
  fc = register_module("fc", std::make_shared<Linear>(dim, 4 * dim, bias, rng));
  proj = register_module("proj", std::make_shared<Linear>(4 * dim, dim, bias, rng, residual_std));
}

MLP::MLP(const BlockConfig& config, Rng& rng) : MLP(config.dim, config.layers, config.bias, rng) {}

Tensor MLP::forward(const Tensor& x) const {
  Tensor hidden = gelu(fc->forward(x));  // (..., 4D)
  return proj->forward(hidden);          // (..., D)
}

}  // namespace lg::nn
