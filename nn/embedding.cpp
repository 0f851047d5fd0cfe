// nn/embedding.cpp: the lookup is the fused core op, whose backward scatter-adds into the used rows.
#include "nn/embedding.h"

namespace lg::nn {

Embedding::Embedding(int64_t vocab, int64_t dim, Rng& rng, float init_std) {
  weight = register_parameter("weight", randn({vocab, dim}, rng, init_std));
}

Tensor Embedding::forward(const std::vector<int32_t>& ids, const Shape& ids_shape) const {
  return embedding(weight, ids, ids_shape);  // (ids_shape..., D)
}

}  // namespace lg::nn
