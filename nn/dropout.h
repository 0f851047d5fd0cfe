// nn/dropout.h: inverted dropout that is active only while training.
#pragma once

#include "nn/module.h"

namespace lg::nn {

class Dropout : public Module {
 public:
  explicit Dropout(float p);  // throws lg::Error unless 0 <= p < 1
  // x (...) -> same shape. The identity when p == 0 or in eval mode (rng untouched then);
  // otherwise zeroes each element with probability p and scales the rest by 1 / (1 - p),
  // so evaluation needs no rescaling.
  Tensor forward(const Tensor& x, Rng& rng) const;

  float p;
};

}  // namespace lg::nn
