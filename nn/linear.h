// nn/linear.h: y = x W^T + b, the affine layer (weight stored (out, in) as in PyTorch).
#pragma once

#include "nn/module.h"

namespace lg::nn {

class Linear : public Module {
 public:
  // GPT-2 init: weight ~ N(0, init_std^2), bias zero.
  Linear(int64_t in_features, int64_t out_features, bool bias, Rng& rng, float init_std = 0.02f);
  Tensor forward(const Tensor& x) const;  // (..., in) -> (..., out)

  Tensor weight;  // (out, in)
  Tensor bias;    // (out,), undefined without bias
};

}  // namespace lg::nn
