// nn/dropout.cpp: dispatches to the core dropout op, whose mask depends only on the generator's state.
#include "nn/dropout.h"

#include <fmt/format.h>

namespace lg::nn {

Dropout::Dropout(float probability) : p(probability) {
  if (p < 0.0f || p >= 1.0f) throw Error(fmt::format("Dropout: probability {} not in [0, 1)", p));
}

Tensor Dropout::forward(const Tensor& x, Rng& rng) const {
  if (p == 0.0f || !is_training()) return x;
  return dropout(x, p, rng);
}

}  // namespace lg::nn
