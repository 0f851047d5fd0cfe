// nn/rmsnorm.cpp: RMSNorm composed from core ops; autograd differentiates the composition.
#include "nn/rmsnorm.h"

namespace lg::nn {

RMSNorm::RMSNorm(int64_t dim, float epsilon) : eps(epsilon) {
  weight = register_parameter("weight", Tensor::ones({dim}));
}

RMSNorm::RMSNorm(const BlockConfig& config, Rng&)
    : RMSNorm(config.dim, static_cast<float>(config.norm_eps)) {}

Tensor RMSNorm::forward(const Tensor& x) const {
  Tensor mean_square = mean(x * x, -1, /*keepdim=*/true);  // (..., 1)
  Tensor inv_rms = rsqrt(mean_square + eps);               // (..., 1), broadcast over D below
  return x * inv_rms * weight;                             // (..., D)
}

}  // namespace lg::nn
