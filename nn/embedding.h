// nn/embedding.h: a lookup table from token ids to learned vectors.
#pragma once

#include "nn/module.h"

namespace lg::nn {

class Embedding : public Module {
 public:
  // GPT-2 init: weight ~ N(0, init_std^2).
  Embedding(int64_t vocab, int64_t dim, Rng& rng, float init_std = 0.02f);
  // ids laid out as ids_shape (row-major) -> (ids_shape..., D); throws lg::Error on an id outside [0, V).
  Tensor forward(const std::vector<int32_t>& ids, const Shape& ids_shape) const;

  Tensor weight;  // (V, D)
};

}  // namespace lg::nn
