// nn/mha.h: causal multi-head self-attention (GPT-2 with RoPE) and its KV cache for generation.
//
// Submodules: "qkv" (Linear D -> 3D; output columns [q | k | v], heads contiguous within
// each) and "proj" (Linear D -> D, residual init). Per head h, with d = D / H:
//   y_t = proj( concat_h softmax_{s <= t}( (R_t q_t) . (R_s k_s) / sqrt(d) ) v_s )
// where R_p is the rotary rotation at position p (nn/rope.h).
#pragma once

#include <memory>

#include "nn/attention.h"
#include "nn/linear.h"

namespace lg::nn {

// The KV cache of B sequences: rotated keys and values of every position seen so far.
// Rows [0, position) of the third axis are filled; capacity doubles when full, so a step
// costs amortised O(1) copying and the attention reads the filled rows as a view.
struct MHAState : AttentionState {
  int64_t batch = 0;
  Tensor keys;    // (B, H, capacity, d), already rotated by RoPE
  Tensor values;  // (B, H, capacity, d)
};

// The attention core: per head softmax_{s <= t}(q_t . k_s / sqrt(d)) v_s. q, k, v (B, H, T, d),
// any strides with unit stride along d; -> (B, H, T, d).
// Fused: one op, its backward hand-written (nn/causal_attention_fused.cpp); keeps the
// probabilities up to T = 128, and past that one log-sum-exp per row instead of them.
Tensor causal_attention_fused(const Tensor& q, const Tensor& k, const Tensor& v);
// The same on q, k, v packed as one (3, B, H, T, d) tensor (split_heads_rope's output), with
// the heads merged: -> (B, T, H d), what the output projection takes. The backward reads the
// gradient in that layout and writes the three gradients into one buffer, which becomes qkv's
// gradient as it is: no copy on either side of the op.
Tensor causal_attention_fused(const Tensor& qkv);
// Composed: matmul, masked_fill, softmax, matmul; autograd gives the backward (the reference).
Tensor causal_attention_composed(const Tensor& q, const Tensor& k, const Tensor& v);

class CausalSelfAttention : public Attention {
 public:
  CausalSelfAttention(const BlockConfig& config, Rng& rng);

  Tensor forward(const Tensor& x, int64_t first_position = 0) override;  // (B, T, D) -> (B, T, D)
  std::unique_ptr<AttentionState> make_state(int64_t batch) const override;
  Tensor step(const Tensor& x, AttentionState& state) override;  // (B, 1, D) -> (B, 1, D)

  std::shared_ptr<Linear> qkv;   // D -> 3D
  std::shared_ptr<Linear> proj;  // D -> D

  // Which core forward() runs; both compute the same function (tests hold them together).
  enum class Core { Fused, Composed };
  Core core = Core::Fused;

 private:
  // x (B, T, D) -> (3, B, H, T, d): q, k, v by heads, q and k rotated for positions first_position + t.
  Tensor project_packed(const Tensor& x, int64_t first_position) const;
  // The same taken apart: q, k, v each (B, H, T, d).
  void project(const Tensor& x, int64_t first_position, Tensor& q, Tensor& k, Tensor& v) const;
  Tensor merge_heads(const Tensor& heads) const;  // (B, H, T, d) -> (B, T, D), then proj

  int64_t dim_, heads_, head_dim_;
  float rope_base_;
};

}  // namespace lg::nn
