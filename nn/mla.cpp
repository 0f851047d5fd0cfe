// nn/mla.cpp: DeepSeek-V2 multi-head latent attention: parallel forward from core ops, absorbed-weight step.
#include "nn/mla.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "nn/rope.h"

namespace lg::nn {

int64_t MLAState::cached_floats() const {
  int64_t n = 0;
  for (const auto& c : latents) n += static_cast<int64_t>(c.size());
  for (const auto& k : rope_keys) n += static_cast<int64_t>(k.size());
  return n;
}

// (B, T, H * k) -> (B, H, T, k), a view.
static Tensor split_heads(const Tensor& t, int64_t heads) {
  const int64_t B = t.size(0), T = t.size(1);
  return permute(reshape(t, {B, T, heads, t.size(2) / heads}), {0, 2, 1, 3});
}

MLA::MLA(const BlockConfig& config, Rng& rng) : config_(config) {
  const int64_t D = config.dim, H = config.heads;
  if (H < 1 || D % H != 0) throw Error(fmt::format("MLA: dim {} does not split into {} heads", D, H));
  head_dim_ = D / H;
  kv_rank_ = config.kv_rank > 0 ? config.kv_rank : D / 2;
  rope_dim_ = config.rope_dim > 0 ? config.rope_dim : head_dim_ / 2;
  if (rope_dim_ < 2 || rope_dim_ % 2 != 0 || kv_rank_ < 1 || config.q_rank < 0)
    throw Error(
        fmt::format("MLA: need an even rope_dim >= 2 and kv_rank >= 1, got rope_dim {} (head size {}), "
                    "kv_rank {}, q_rank {}",
                    rope_dim_, head_dim_, kv_rank_, config.q_rank));
  const bool bias = config.bias;
  if (config.q_rank == 0) {
    q_ = register_module("q", std::make_shared<Linear>(D, H * head_dim_, bias, rng));
    q_rope_ = register_module("q_rope", std::make_shared<Linear>(D, H * rope_dim_, bias, rng));
  } else {
    q_down_ = register_module("q_down", std::make_shared<Linear>(D, config.q_rank, bias, rng));
    q_up_ = register_module("q_up", std::make_shared<Linear>(config.q_rank, H * head_dim_, bias, rng));
    q_rope_ = register_module("q_rope", std::make_shared<Linear>(config.q_rank, H * rope_dim_, bias, rng));
  }
  kv_down_ = register_module("kv_down", std::make_shared<Linear>(D, kv_rank_, bias, rng));
  k_up_ = register_module("k_up", std::make_shared<Linear>(kv_rank_, H * head_dim_, false, rng));
  v_up_ = register_module("v_up", std::make_shared<Linear>(kv_rank_, H * head_dim_, false, rng));
  k_rope_ = register_module("k_rope", std::make_shared<Linear>(D, rope_dim_, bias, rng));
  const float residual_std =
      0.02f / std::sqrt(2.0f * static_cast<float>(std::max<int64_t>(config.layers, 1)));
  proj_ = register_module("proj", std::make_shared<Linear>(H * head_dim_, D, bias, rng, residual_std));
}

void MLA::queries(const Tensor& x, int64_t first_position, Tensor& content, Tensor& rotary) const {
  const int64_t H = config_.heads;
  Tensor source = q_down_ ? q_down_->forward(x) : x;  // (B, T, q_rank) or (B, T, D)
  content = split_heads(q_down_ ? q_up_->forward(source) : q_->forward(source), H);  // (B, H, T, d)
  rotary =
      rope(split_heads(q_rope_->forward(source), H), first_position, config_.rope_base);  // (B, H, T, d_R)
}

Tensor MLA::forward(const Tensor& x, int64_t first_position) {
  if (x.dim() != 3 || x.size(2) != config_.dim)
    throw Error(fmt::format("MLA: input must be (B, T, {}), got {}", config_.dim, shape_str(x.shape())));
  const int64_t B = x.size(0), T = x.size(1), H = config_.heads, d = head_dim_;
  Tensor q_content, q_rotary;
  queries(x, first_position, q_content, q_rotary);       // (B, H, T, d), (B, H, T, d_R)
  Tensor c = kv_down_->forward(x);                       // (B, T, d_c)
  Tensor k_content = split_heads(k_up_->forward(c), H);  // (B, H, T, d)
  Tensor v_content = split_heads(v_up_->forward(c), H);  // (B, H, T, d)
  Tensor k_rotary = rope(k_rope_->forward(x), first_position, config_.rope_base);  // (B, T, d_R)

  // [q^C; q^R] . [k^C; k^R] as two products. The shared rotary key needs no copy per head:
  // the H query rows of a sequence stack into (H T, d_R) against its one (d_R, T).
  Tensor content_scores = matmul(q_content, transpose(k_content, -1, -2));  // (B, H, T, T)
  Tensor rotary_scores = reshape(matmul(reshape(q_rotary, {B, H * T, rope_dim_}), transpose(k_rotary, 1, 2)),
                                 {B, H, T, T});  // (B, H, T, T)
  const float scale = 1.0f / std::sqrt(static_cast<float>(d + rope_dim_));
  Tensor scores = masked_fill((content_scores + rotary_scores) * scale, causal_mask(T),
                              -std::numeric_limits<float>::infinity());
  Tensor o = matmul(softmax(scores), v_content);                            // (B, H, T, d)
  return proj_->forward(reshape(permute(o, {0, 2, 1, 3}), {B, T, H * d}));  // (B, T, D)
}

std::unique_ptr<AttentionState> MLA::make_state(int64_t batch) const {
  auto state = std::make_unique<MLAState>();
  state->batch = batch;
  state->latent_dim = kv_rank_;
  state->rope_dim = rope_dim_;
  state->latents.resize(batch);
  state->rope_keys.resize(batch);
  return state;
}

Tensor MLA::step(const Tensor& x, AttentionState& base_state) {
  auto* state = dynamic_cast<MLAState*>(&base_state);
  if (!state) throw Error("MLA::step: the state was not made by MLA::make_state");
  const int64_t B = state->batch, H = config_.heads, d = head_dim_, dc = kv_rank_, dR = rope_dim_;
  if (x.dim() != 3 || x.size(0) != B || x.size(1) != 1 || x.size(2) != config_.dim)
    throw Error(
        fmt::format("MLA::step: input must be ({}, 1, {}), got {}", B, config_.dim, shape_str(x.shape())));
  NoGradGuard no_grad;
  const int64_t p = state->position, n = p + 1;  // positions 0..p after this token is cached
  Tensor q_content, q_rotary;
  queries(x, p, q_content, q_rotary);
  q_content = contiguous_copy(q_content);                             // (B, H, 1, d)
  Tensor c = kv_down_->forward(x);                                    // (B, 1, d_c)
  Tensor k_rotary = rope(k_rope_->forward(x), p, config_.rope_base);  // (B, 1, d_R)
  for (int64_t b = 0; b < B; ++b) {
    state->latents[b].insert(state->latents[b].end(), c.data() + b * dc, c.data() + (b + 1) * dc);
    state->rope_keys[b].insert(state->rope_keys[b].end(), k_rotary.data() + b * dR,
                               k_rotary.data() + (b + 1) * dR);
  }

  const float* W_uk = k_up_->weight.data();  // (H d, d_c): rows h d .. h d + d - 1 are head h's W_UK
  const float* W_uv = v_up_->weight.data();  // (H d, d_c)
  const float scale = 1.0f / std::sqrt(static_cast<float>(d + dR));
  Tensor o = Tensor::empty({B, 1, H * d});  // (B, 1, H d)
  std::vector<float> q_absorbed(dc), probs(n), context(dc);
  for (int64_t b = 0; b < B; ++b) {
    const float* cache_c = state->latents[b].data();     // (n, d_c)
    const float* cache_kr = state->rope_keys[b].data();  // (n, d_R)
    for (int64_t h = 0; h < H; ++h) {
      const float* qc = q_content.data() + (b * H + h) * d;
      const float* qr = q_rotary.data() + (b * H + h) * dR;
      const float* Wk = W_uk + h * d * dc;
      const float* Wv = W_uv + h * d * dc;
      // W_UK absorbed into the query: q^C . (W_UK c_s) = (W_UK^T q^C) . c_s.
      std::fill(q_absorbed.begin(), q_absorbed.end(), 0.0f);
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < dc; ++j) q_absorbed[j] += qc[i] * Wk[i * dc + j];
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < n; ++s) {
        float acc = 0;
        for (int64_t j = 0; j < dc; ++j) acc += q_absorbed[j] * cache_c[s * dc + j];
        for (int64_t j = 0; j < dR; ++j) acc += qr[j] * cache_kr[s * dR + j];
        probs[s] = acc * scale;
        mx = std::max(mx, probs[s]);
      }
      float z = 0;
      for (int64_t s = 0; s < n; ++s) z += (probs[s] = std::exp(probs[s] - mx));
      // W_UV absorbed into the output side: average the latents, then up-project once.
      std::fill(context.begin(), context.end(), 0.0f);
      for (int64_t s = 0; s < n; ++s)
        for (int64_t j = 0; j < dc; ++j) context[j] += probs[s] / z * cache_c[s * dc + j];
      float* oh = o.data() + b * H * d + h * d;
      for (int64_t i = 0; i < d; ++i) {
        float acc = 0;
        for (int64_t j = 0; j < dc; ++j) acc += Wv[i * dc + j] * context[j];
        oh[i] = acc;
      }
    }
  }
  state->position = n;
  return proj_->forward(o);  // (B, 1, D)
}

}  // namespace lg::nn
