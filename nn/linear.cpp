// nn/linear.cpp: the affine layer, one fused core op (BLAS reads W in place as W^T).
#include "nn/linear.h"

namespace lg::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias, Rng& rng, float init_std) {
  weight = register_parameter("weight", randn({out_features, in_features}, rng, init_std));
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out_features}));
}

Tensor Linear::forward(const Tensor& x) const { return linear(x, weight, bias); }  // (..., out)

}  // namespace lg::nn
