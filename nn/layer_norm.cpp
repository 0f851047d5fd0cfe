// nn/layer_norm.cpp: a thin layer over the fused core op, which keeps mean and rstd for its backward.
#include "nn/layer_norm.h"

namespace lg::nn {

LayerNorm::LayerNorm(int64_t dim, float epsilon) : eps(epsilon) {
  weight = register_parameter("weight", Tensor::ones({dim}));
  bias = register_parameter("bias", Tensor::zeros({dim}));
}

LayerNorm::LayerNorm(const BlockConfig& config, Rng&)
    : LayerNorm(config.dim, static_cast<float>(config.norm_eps)) {}

Tensor LayerNorm::forward(const Tensor& x) const { return layer_norm(x, weight, bias, eps); }

}  // namespace lg::nn
