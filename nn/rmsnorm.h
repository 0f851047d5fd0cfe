// nn/rmsnorm.h: root-mean-square normalisation (Zhang & Sennrich 2019), LayerNorm without the mean and bias.
#pragma once

#include "nn/block_config.h"
#include "nn/norm.h"

namespace lg::nn {

// y = x / sqrt(mean(x^2) + eps) * weight, over the last axis. Built from core ops only, so it
// needs no backward of its own: the worked example of docs/extending.md.
class RMSNorm : public Norm {
 public:
  explicit RMSNorm(int64_t dim, float eps = 1e-5f);  // gain 1: the identity on unit-RMS rows
  RMSNorm(const BlockConfig& config, Rng& rng);      // the norm kind "rmsnorm": width config.dim
  Tensor forward(const Tensor& x) const override;    // (..., D) -> (..., D)

  Tensor weight;  // (D,) gain
  float eps;
};

}  // namespace lg::nn
