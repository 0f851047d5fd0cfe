// nn/feed_forward.h: the interface every feed-forward kind implements (the kinds: nn/kinds.h).
#pragma once

#include "nn/module.h"

namespace lg::nn {

// The position-wise network of a transformer block: each row on its own, D in and D out.
class FeedForward : public Module {
 public:
  virtual Tensor forward(const Tensor& x) const = 0;  // (..., D) -> (..., D)
};

}  // namespace lg::nn
