// nn/latent_attention.h: causal latent attention (the project's spec: docs/latent-attention.md).
//
// A bank of M learned latents reads the prefix of the sequence ("write", content-only
// scores a_{m,s} = l_m . k_s / sqrt(d)), and every query reads the M latents, plus,
// with window W > 0, the last W positions directly in the same softmax. Per head h:
//
//   w_{m,s}(t) = exp(a_{m,s}) / sum_{s' <= t} exp(a_{m,s'})           s <= t (causal)
//   Kl_{t,m}   = sum_{s <= t} w_{m,s}(t) R_s k_s,   Vl_{t,m} = sum_{s <= t} w_{m,s}(t) v_s
//   o_t        = softmax over [latents m ; positions t-W < s <= t] of (R_t q_t) . key / sqrt(d)
//                applied to [Vl_{t,m} ; v_s]
//
// The three ways to compute it of docs/latent-attention.md, all here, plus a fused op:
//   latent_attention_naive    materialises w (M x T x T): the test reference, O(T^2 M d);
//   latent_attention_chunked  chunks of C positions carrying running sums (mu, Z, SK, SV),
//                             composed from core ops (autograd gives the backward),
//                             O(T (C + M + W) d);
//   LatentAttention::step     the recurrent path for generation: O((M + W) d) per token
//                             and per head, whatever the position;
//   latent_attention_fused    the recurrent form over all positions as one op with a
//                             hand-written backward: forward()'s default (faster, and exact
//                             for any spread of write scores; see Core below).
#pragma once

#include <memory>
#include <vector>

#include "nn/attention.h"
#include "nn/linear.h"

namespace lg::nn {

// The per-head tensors the core of the layer works on, after the projections and RoPE.
struct LatentInputs {
  Tensor queries;       // (B, H, T, d)  R_t q_t, rotated at positions first_position + t
  Tensor keys;          // (B, H, T, d)  k_t un-rotated: the write scores see content only
  Tensor rotated_keys;  // (B, H, T, d)  R_s k_s: what the latents aggregate and the window reads
  Tensor values;        // (B, H, T, d)  v_s
  Tensor latents;       // (H, M, d)     l_m of each head: the (M, D) bank split across heads
};

// The chunked core (spec, "Chunked"), built from differentiable core ops so autograd gives
// its backward. window W >= 0, chunk C >= 1 (need not divide T). -> o (B, H, T, d).
Tensor latent_attention_chunked(const LatentInputs& in, int64_t window, int64_t chunk);

// The same outputs as one op with a hand-written backward (nn/latent_attention_fused.cpp): the
// recurrent form run over every position, with a running max per position, so it stays exact
// for any spread of write scores. O(T (M + W) d) time; saved memory O(T (M + W)): the backward
// recomputes the latent keys and values from the saved running max. -> o (B, H, T, d).
Tensor latent_attention_fused(const LatentInputs& in, int64_t window);
// The same on the four inputs packed as one (4, B, H, T, d) tensor (R q, k, R k, v: the output of
// split_heads_rope) and the latents (H, M, d), with the heads merged: -> (B, T, H d), what the
// output projection takes. The backward reads the gradient in that layout and writes the four
// gradients into one buffer, which becomes packed's gradient as it is: no copy on either side.
Tensor latent_attention_fused(const Tensor& packed, const Tensor& latents, int64_t window);
// Whether latent_attention_fused may run its AVX-512 kernels (nn/latent_attention_avx512.cpp)
// where they fit: 16 latents, head size 32 or 64, window <= 16, a build for a CPU with AVX-512. On by
// default; off, the generic kernels run, as they do for every other size (the tests compare the
// two). Returns the previous setting.
bool latent_attention_fused_avx512(bool enabled);

// The same outputs straight from the definition, in double precision plain loops, with the
// write weights w (M, T, T) materialised per (batch, head). No graph: tests only. -> (B, H, T, d).
Tensor latent_attention_naive(const LatentInputs& in, int64_t window);

// Recurrent state of one layer for `batch` sequences (spec, "Recurrent"). For every
// (sequence, head, latent) the running max mu of the write scores and the sums rescaled to
// it; for W > 0 a ring of the last W rotated keys and values. Size independent of position.
struct LatentAttentionState : AttentionState {
  int64_t batch = 0, heads = 0, latents = 0, head_dim = 0, window = 0;
  std::vector<float> running_max;    // (B, H, M)     mu = max_{s < position} a_{m,s}
  std::vector<float> normaliser;     // (B, H, M)     Z  = sum_s exp(a_{m,s} - mu)
  std::vector<float> key_sum;        // (B, H, M, d)  SK = sum_s exp(a_{m,s} - mu) R_s k_s
  std::vector<float> value_sum;      // (B, H, M, d)  SV = sum_s exp(a_{m,s} - mu) v_s
  std::vector<float> window_keys;    // (B, H, W, d)  ring: R_s k_s of position s at slot s % W
  std::vector<float> window_values;  // (B, H, W, d)  ring: v_s at slot s % W
};

class LatentAttention : public Attention {
 public:
  // Uses config.dim, heads, latents, window, chunk, layers, rope_base, bias. config.dropout is the
  // block's business (nn/transformer_block.h drops the attention output), not this layer's.
  LatentAttention(const BlockConfig& config, Rng& rng);

  Tensor forward(const Tensor& x, int64_t first_position = 0) override;  // (B, T, D) -> (B, T, D), `core`
  std::unique_ptr<AttentionState> make_state(int64_t batch) const override;
  Tensor step(const Tensor& x, AttentionState& state) override;  // (B, 1, D) -> (B, 1, D)
  bool state_grows() const override { return false; }  // M running sums and the last W positions

  // The whole layer with the naive core in place of the chunked one (tests). (B, T, D) -> (B, T, D)
  Tensor forward_naive(const Tensor& x, int64_t first_position = 0);
  // The projections and RoPE in front of the core. x (B, T, D).
  LatentInputs project(const Tensor& x, int64_t first_position) const;
  // The same four per-head tensors packed as one (4, B, H, T, d): R q, k, R k, v.
  Tensor project_packed(const Tensor& x, int64_t first_position) const;
  // The (M, D) bank split across heads: (H, M, d).
  Tensor latent_bank() const;

  const BlockConfig& config() const { return config_; }

  // Which core forward() runs. Fused: latent_attention_fused, one op with its own backward.
  // Chunked: latent_attention_chunked, the readable training algorithm from core ops. Its
  // stabiliser is one max per chunk, so an early position whose prefix scores lie far below
  // a later score in the chunk gets a tiny Zc: past a spread of ~40 its backward overflows
  // (the gradient of a / Zc divides by Zc^2), past ~80 its forward is 0 / 0. Both cores
  // compute the same function; tests hold them to the naive formula and to each other.
  enum class Core { Fused, Chunked };
  Core core = Core::Fused;

  // Init of the latent bank: N(0, kLatentInitStd^2). Why not tiny like the weights: with
  // equal latents every latent gets the same gradient (the layer is symmetric in m), so
  // near-equal latents separate only slowly. Latents of std 3 are distinct directions from
  // the start, and the write scores still start soft (std ~0.7: a = l . k / sqrt(d) with k's
  // entries ~ 0.02 sqrt(D) at init). Measured on tiny Shakespeare (docs/latent-attention.md):
  // pure form (W = 0) val loss after 1000 steps 2.130 with std 1, 2.061 with 3, 2.039 with
  // 10; with W = 16, 1.905 (std 1) and 1.907 (std 3): the window makes the init matter little.
  static constexpr float kLatentInitStd = 3.0f;

 private:
  Tensor output(const Tensor& o) const;  // (B, H, T, d) -> (B, T, D): heads joined, then "proj"

  BlockConfig config_;
  int64_t head_dim_;              // d = D / H
  std::shared_ptr<Linear> qkv_;   // D -> 3D: [q heads ; k heads ; v heads], each (H, d)
  std::shared_ptr<Linear> proj_;  // D -> D, std 0.02 / sqrt(2 layers) (GPT-2 residual init)
  Tensor latents_;                // (M, D): latent m of head h is latents[m, h d : (h + 1) d]
};

}  // namespace lg::nn
