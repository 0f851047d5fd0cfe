// nn/norm.h: the interface every normalisation kind implements (the kinds: nn/kinds.h).
#pragma once

#include "nn/module.h"

namespace lg::nn {

// Normalises each row over the last axis, with learned per-feature parameters.
class Norm : public Module {
 public:
  virtual Tensor forward(const Tensor& x) const = 0;  // (..., D) -> (..., D)
};

}  // namespace lg::nn
