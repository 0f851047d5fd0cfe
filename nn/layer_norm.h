// nn/layer_norm.h: normalise each row to zero mean, unit variance, then a learned per-feature gain and bias.
#pragma once

#include "nn/block_config.h"
#include "nn/norm.h"

namespace lg::nn {

class LayerNorm : public Norm {
 public:
  explicit LayerNorm(int64_t dim, float eps = 1e-5f);  // gain 1, bias 0: the identity on normalised rows
  LayerNorm(const BlockConfig& config, Rng& rng);     // the norm kind "layernorm": width config.dim
  Tensor forward(const Tensor& x) const override;      // (..., D) -> (..., D)

  Tensor weight;  // (D,) gain
  Tensor bias;    // (D,)
  float eps;
};

}  // namespace lg::nn
