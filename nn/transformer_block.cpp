// nn/transformer_block.cpp: the pre-norm residual block (GPT-2 layout) over any kinds of its parts.
#include "nn/transformer_block.h"

namespace lg::nn {

TransformerBlock::TransformerBlock(const BlockConfig& cfg, Rng& rng) {
  ln1 = register_module("ln1", make_norm(cfg, rng));
  attn = register_module("attn", make_attention(cfg, rng));
  ln2 = register_module("ln2", make_norm(cfg, rng));
  mlp = register_module("mlp", make_feed_forward(cfg, rng));
  dropout = register_module("dropout", std::make_shared<Dropout>(cfg.dropout));
}

Tensor TransformerBlock::forward(const Tensor& x, int64_t first_position, Rng& dropout_rng) {
  Tensor h = x + dropout->forward(attn->forward(ln1->forward(x), first_position), dropout_rng);  // (B, T, D)
  return h + dropout->forward(mlp->forward(ln2->forward(h)), dropout_rng);                       // (B, T, D)
}

Tensor TransformerBlock::step(const Tensor& x, AttentionState& state) {
  NoGradGuard no_grad;
  Tensor h = x + attn->step(ln1->forward(x), state);  // (B, 1, D)
  return h + mlp->forward(ln2->forward(h));           // (B, 1, D)
}

}  // namespace lg::nn
