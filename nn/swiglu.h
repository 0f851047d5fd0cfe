// nn/swiglu.h: the SwiGLU feed-forward (Shazeer 2020; LLaMA's): a SiLU-gated linear unit, then a projection.
#pragma once

#include <memory>

#include "nn/block_config.h"
#include "nn/feed_forward.h"
#include "nn/linear.h"

namespace lg::nn {

// y = W2(silu(W1 x) * W3 x), silu(a) = a * sigmoid(a). The feed-forward kind "swiglu" of
// nn/kinds.cpp, and the worked example of docs/extending.md.
//
// Three matrices instead of GELU's two, so the hidden width H is 8D/3 rather than 4D, which
// keeps the parameter count of the 4D network (3 D H = 8 D^2); it is rounded up to a multiple
// of 8 (128 -> 344, 384 -> 1024) so the products run on whole SIMD vectors.
class SwiGLU : public FeedForward {
 public:
  // config.dim, config.layers and config.bias. W1 and W3 get std 0.02; W2 adds to the
  // residual stream, so it gets 0.02 / sqrt(2 * layers), like every residual projection.
  SwiGLU(const BlockConfig& config, Rng& rng);
  Tensor forward(const Tensor& x) const override;  // (..., D) -> (..., D)

  static int64_t hidden_width(int64_t dim);  // 8 * ceil(floor(8 dim / 3) / 8)

  std::shared_ptr<Linear> w1;  // "w1": D -> H, the gate (through silu)
  std::shared_ptr<Linear> w3;  // "w3": D -> H, the value it gates
  std::shared_ptr<Linear> w2;  // "w2": H -> D
};

}  // namespace lg::nn
