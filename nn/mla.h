// nn/mla.h: DeepSeek-V2 multi-head latent attention (arXiv:2405.04434): a small per-token latent as cache.
//
// Per token, with H heads of size d = D / H (spec, last section):
//   c_t   = W_DKV x_t                      (d_c)        the only content the cache keeps
//   k^C_t = W_UK c_t,  v^C_t = W_UV c_t    (H, d)       keys and values rebuilt per head
//   q^C_t = W_Q x_t, or W_UQ (W_DQ x_t) with query compression (rank q_rank)
//   k^R_t = RoPE(W_KR x_t)                 (d_R)        one rotary key shared by every head
//   q^R_t = RoPE(W_QR x_t or W_QR W_DQ x_t) (H, d_R)    per head
//   y_t   = proj( concat_h sum_{s <= t} softmax_s([q^C; q^R] . [k^C_s; k^R_s] / sqrt(d + d_R)) v^C_s )
//
// Submodules: "q" (D -> H d) and "q_rope" (D -> H d_R) without query compression, else
// "q_down" (D -> q_rank), "q_up" (q_rank -> H d), "q_rope" (q_rank -> H d_R); "kv_down"
// (D -> d_c), "k_up" and "v_up" (d_c -> H d), "k_rope" (D -> d_R), "proj" (H d -> D,
// residual init 0.02 / sqrt(2 layers)). All other weights N(0, 0.02^2).
//
// Defaults (BlockConfig fields left at 0):
//   kv_rank  d_c = D / 2     cache of D / 2 + d_R floats per token instead of MHA's 2 D
//   rope_dim d_R = d / 2     must be even (RoPE rotates pairs)
//   q_rank   0               no query compression (it saves parameters, not cache)
// "k_up" and "v_up" have no bias even when config.bias: a key bias adds q . b_k to every
// score of a row, which softmax cancels, and a value bias passes straight through the
// softmax average into the output, where proj's bias already is. Without them the
// absorption below is exact with nothing left over.
//
// Generation (step): RoPE sits only in the decoupled part, so the content score
// q^C . (W_UK c_s) = (W_UK^T q^C) . c_s: W_UK is absorbed into the query once per step and
// the cache holds c_s and k^R_s only. Likewise sum_s p_s W_UV c_s = W_UV (sum_s p_s c_s):
// the softmax averages latents, and W_UV is applied once afterwards, before proj.
// Compute stays O(T) per step and O(T^2) per sequence, like MHA.
#pragma once

#include <memory>
#include <vector>

#include "nn/attention.h"
#include "nn/linear.h"

namespace lg::nn {

// The MLA cache of `batch` sequences: per position only c_s and the rotated k^R_s.
struct MLAState : AttentionState {
  int64_t batch = 0, latent_dim = 0, rope_dim = 0;
  std::vector<std::vector<float>> latents;    // [B] each (position, d_c): c_s
  std::vector<std::vector<float>> rope_keys;  // [B] each (position, d_R): R_s k^R_s
  int64_t floats_per_token() const { return latent_dim + rope_dim; }
  int64_t cached_floats() const;  // everything held, over all sequences and positions
};

class MLA : public Attention {
 public:
  // Uses config.dim, heads, layers, rope_base, bias, kv_rank, q_rank, rope_dim (see above).
  MLA(const BlockConfig& config, Rng& rng);

  Tensor forward(const Tensor& x, int64_t first_position = 0) override;  // (B, T, D) -> (B, T, D)
  std::unique_ptr<AttentionState> make_state(int64_t batch) const override;
  Tensor step(const Tensor& x, AttentionState& state) override;  // (B, 1, D) -> (B, 1, D)

  int64_t kv_rank() const { return kv_rank_; }    // d_c
  int64_t rope_dim() const { return rope_dim_; }  // d_R
  int64_t head_dim() const { return head_dim_; }  // d

 private:
  // Query parts of x (B, T, D) at positions first_position + t: q^C (B, H, T, d), q^R (B, H, T, d_R).
  void queries(const Tensor& x, int64_t first_position, Tensor& content, Tensor& rotary) const;

  BlockConfig config_;
  int64_t head_dim_, kv_rank_, rope_dim_;
  std::shared_ptr<Linear> q_, q_down_, q_up_, q_rope_;  // q_ without compression; q_down_, q_up_ with
  std::shared_ptr<Linear> kv_down_, k_up_, v_up_, k_rope_, proj_;
};

}  // namespace lg::nn
