// nn/mlp.h: the transformer's position-wise feed-forward network, Linear D->4D, GELU, Linear 4D->D.
#pragma once

#include <memory>

#include "nn/block_config.h"
#include "nn/feed_forward.h"
#include "nn/linear.h"

namespace lg::nn {

// The feed-forward kind "gelu".
class MLP : public FeedForward {
 public:
  // `layers` is the model's block count: proj is a residual projection, so its init std is
  // 0.02 / sqrt(2 * layers) (GPT-2: each block adds two residual branches, keeping the
  // residual stream's variance from growing with depth).
  MLP(int64_t dim, int64_t layers, bool bias, Rng& rng);
  MLP(const BlockConfig& config, Rng& rng);        // config.dim, config.layers, config.bias
  Tensor forward(const Tensor& x) const override;  // (..., D) -> (..., D)

  std::shared_ptr<Linear> fc;    // "fc":   D -> 4D
  std::shared_ptr<Linear> proj;  // "proj": 4D -> D
};

}  // namespace lg::nn
