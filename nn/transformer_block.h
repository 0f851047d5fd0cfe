// nn/transformer_block.h: one pre-norm transformer block: attention and feed-forward, each on a residual branch.
//
//   x = x + dropout(attn(ln1(x), first_position))
//   x = x + dropout(mlp(ln2(x)))
//
// Each part is the kind config names (nn/kinds.h): attention config.attention, mlp
// config.ffn, ln1 and ln2 config.norm. Submodules, in registration order (so parameter names
// are "ln1.weight", "attn.qkv.weight", "mlp.fc.bias", ...): "ln1", "attn", "ln2", "mlp", and
// "dropout" (no parameters; registered so train()/eval() reach it). The names stay "ln" and
// "mlp" whatever the kinds, so checkpoints of every kind share one layout.
#pragma once

#include <memory>

#include "nn/dropout.h"
#include "nn/kinds.h"

namespace lg::nn {

class TransformerBlock : public Module {
 public:
  // cfg.dropout is the probability of the residual dropout on both branches.
  TransformerBlock(const BlockConfig& cfg, Rng& rng);

  // x (B, T, D) -> (B, T, D); row t sits at position first_position + t.
  // dropout_rng draws the dropout masks (untouched in eval mode or with dropout 0).
  Tensor forward(const Tensor& x, int64_t first_position, Rng& dropout_rng);
  // x (B, 1, D) -> (B, 1, D) at position state.position; advances the state. No graph, no dropout.
  Tensor step(const Tensor& x, AttentionState& state);

  std::shared_ptr<Norm> ln1;
  std::shared_ptr<Attention> attn;
  std::shared_ptr<Norm> ln2;
  std::shared_ptr<FeedForward> mlp;
  std::shared_ptr<Dropout> dropout;
};

}  // namespace lg::nn
