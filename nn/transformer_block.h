// nn/transformer_block.h: one pre-LayerNorm transformer block: attention and MLP, each on a residual branch.
//
//   x = x + dropout(attn(ln1(x), first_position))
//   x = x + dropout(mlp(ln2(x)))
//
// Submodules, in registration order (so parameter names are "ln1.weight", "attn.qkv.weight",
// "mlp.fc.bias", ...): "ln1" LayerNorm, "attn" the configured attention (make_attention;
// for MHA its Linears are "qkv" and "proj"), "ln2" LayerNorm, "mlp" MLP (Linears "fc" and
// "proj"), and "dropout" (no parameters; registered so train()/eval() reach it).
#pragma once

#include <memory>

#include "nn/attention.h"
#include "nn/dropout.h"
#include "nn/layer_norm.h"
#include "nn/mlp.h"

namespace lg::nn {

class TransformerBlock : public Module {
 public:
  // cfg.dropout is the probability of the residual dropout on both branches.
  TransformerBlock(const AttentionConfig& cfg, Rng& rng);

  // x (B, T, D) -> (B, T, D); row t sits at position first_position + t.
  // dropout_rng draws the dropout masks (untouched in eval mode or with dropout 0).
  Tensor forward(const Tensor& x, int64_t first_position, Rng& dropout_rng);
  // x (B, 1, D) -> (B, 1, D) at position state.position; advances the state. No graph, no dropout.
  Tensor step(const Tensor& x, AttentionState& state);

  std::shared_ptr<LayerNorm> ln1;
  std::shared_ptr<Attention> attn;
  std::shared_ptr<LayerNorm> ln2;
  std::shared_ptr<MLP> mlp;
  std::shared_ptr<Dropout> dropout;
};

}  // namespace lg::nn
