// nn/linear.cpp: the affine layer; W^T is a transposed view, so BLAS reads W in place.
#include "nn/linear.h"

namespace lg::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias, Rng& rng, float init_std) {
  weight = register_parameter("weight", randn({out_features, in_features}, rng, init_std));
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out_features}));
}

Tensor Linear::forward(const Tensor& x) const {
  Tensor y = matmul(x, transpose(weight, 0, 1));  // (..., out)
  return bias.defined() ? add(y, bias) : y;
}

}  // namespace lg::nn
