// nn/swiglu.cpp: SwiGLU composed from Linear and core ops; autograd differentiates the composition.
#include "nn/swiglu.h"

#include <cmath>

namespace lg::nn {

int64_t SwiGLU::hidden_width(int64_t dim) { return (8 * dim / 3 + 7) / 8 * 8; }

SwiGLU::SwiGLU(const BlockConfig& config, Rng& rng) {
  const int64_t D = config.dim, H = hidden_width(config.dim);
  const float residual_std = 0.02f / std::sqrt(2.0f * static_cast<float>(config.layers));
  // Registration order is the order of the parameter names and of the draws from rng.
  w1 = register_module("w1", std::make_shared<Linear>(D, H, config.bias, rng));
  w3 = register_module("w3", std::make_shared<Linear>(D, H, config.bias, rng));
  w2 = register_module("w2", std::make_shared<Linear>(H, D, config.bias, rng, residual_std));
}

Tensor SwiGLU::forward(const Tensor& x) const {
  Tensor gate = w1->forward(x);                           // (..., H)
  Tensor hidden = gate * sigmoid(gate) * w3->forward(x);  // (..., H): silu(W1 x) * W3 x
  return w2->forward(hidden);                             // (..., D)
}

}  // namespace lg::nn
