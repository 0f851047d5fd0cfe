// nn/mha.cpp: multi-head attention composed from core ops; the KV cache path shares the projections.
#include "nn/mha.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "nn/rope.h"

namespace lg::nn {

CausalSelfAttention::CausalSelfAttention(const BlockConfig& config, Rng& rng)
    : dim_(config.dim),
      heads_(config.heads),
      head_dim_(config.heads > 0 ? config.dim / config.heads : 0),
      rope_base_(config.rope_base) {
  if (heads_ <= 0 || dim_ % heads_ != 0 || head_dim_ % 2 != 0)
    throw Error(
        fmt::format("CausalSelfAttention: dim {} must split into {} heads of even size", dim_, heads_));
  float residual_std = 0.02f / std::sqrt(2.0f * static_cast<float>(config.layers));
  qkv = register_module("qkv", std::make_shared<Linear>(dim_, 3 * dim_, config.bias, rng));
  proj = register_module("proj", std::make_shared<Linear>(dim_, dim_, config.bias, rng, residual_std));
}

Tensor CausalSelfAttention::project_packed(const Tensor& x, int64_t first_position) const {
  if (x.dim() != 3 || x.size(2) != dim_)
    throw Error(
        fmt::format("CausalSelfAttention: input must be (B, T, {}), got {}", dim_, shape_str(x.shape())));
  // (B, T, 3D), groups queries, keys, values -> (3, B, H, T, d): R q, R k, v.
  return split_heads_rope(qkv->forward(x), heads_, {{0, true}, {1, true}, {2, false}}, first_position, rope_base_);
}

void CausalSelfAttention::project(const Tensor& x, int64_t first_position, Tensor& q, Tensor& k,
                                  Tensor& v) const {
  std::vector<Tensor> parts = unstack(project_packed(x, first_position));
  q = parts[0];
  k = parts[1];
  v = parts[2];
}

Tensor CausalSelfAttention::merge_heads(const Tensor& heads) const {
  int64_t B = heads.size(0), T = heads.size(2);
  Tensor merged = reshape(permute(heads, {0, 2, 1, 3}), {B, T, dim_});  // (B, T, D)
  return proj->forward(merged);                                         // (B, T, D)
}

Tensor causal_attention_composed(const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t T = q.size(2);
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.size(3)));
  Tensor scores = matmul(q, transpose(k, 2, 3)) * scale;  // (B, H, T, T); k^T is a view BLAS reads in place
  scores = masked_fill(scores, causal_mask(T), -std::numeric_limits<float>::infinity());
  Tensor weights = softmax(scores);  // (B, H, T, T), zero above the diagonal
  return matmul(weights, v);         // (B, H, T, d)
}

Tensor CausalSelfAttention::forward(const Tensor& x, int64_t first_position) {
  if (core == Core::Fused) return proj->forward(causal_attention_fused(project_packed(x, first_position)));
  Tensor q, k, v;
  project(x, first_position, q, k, v);
  return merge_heads(causal_attention_composed(q, k, v));  // (B, T, D)
}

std::unique_ptr<AttentionState> CausalSelfAttention::make_state(int64_t batch) const {
  auto state = std::make_unique<MHAState>();
  state->batch = batch;
  state->keys = Tensor::zeros({batch, heads_, 0, head_dim_});    // (B, H, 0, d)
  state->values = Tensor::zeros({batch, heads_, 0, head_dim_});  // (B, H, 0, d)
  return state;
}

// Copies the filled rows of a cache buffer into one with room for `capacity` positions.
static Tensor grow(const Tensor& buffer, int64_t filled, int64_t capacity) {
  Shape shape = buffer.shape();
  shape[2] = capacity;
  Tensor bigger = Tensor::zeros(shape);  // (B, H, capacity, d)
  int64_t outer = shape[0] * shape[1], d = shape[3], old_capacity = buffer.size(2);
  for (int64_t i = 0; i < outer; ++i)
    std::copy_n(buffer.data() + i * old_capacity * d, filled * d, bigger.data() + i * capacity * d);
  return bigger;
}

// Writes new rows (B, H, 1, d) into row `position` of a cache buffer (B, H, capacity, d).
static void write_row(Tensor& buffer, const Tensor& row, int64_t position) {
  Tensor rc = contiguous(row);
  int64_t outer = buffer.size(0) * buffer.size(1), capacity = buffer.size(2), d = buffer.size(3);
  for (int64_t i = 0; i < outer; ++i)
    std::copy_n(rc.data() + i * d, d, buffer.data() + (i * capacity + position) * d);
}

Tensor CausalSelfAttention::step(const Tensor& x, AttentionState& state) {
  NoGradGuard no_grad;
  auto* cache = dynamic_cast<MHAState*>(&state);
  if (!cache) throw Error("CausalSelfAttention::step: state was not made by CausalSelfAttention::make_state");
  if (x.dim() != 3 || x.size(0) != cache->batch || x.size(1) != 1)
    throw Error(fmt::format("CausalSelfAttention::step: input must be ({}, 1, {}), got {}", cache->batch,
                            dim_, shape_str(x.shape())));
  int64_t t = cache->position;
  Tensor q, k, v;
  project(x, t, q, k, v);  // each (B, H, 1, d)
  if (t == cache->keys.size(2)) {
    int64_t capacity = std::max<int64_t>(16, 2 * t);
    cache->keys = grow(cache->keys, t, capacity);
    cache->values = grow(cache->values, t, capacity);
  }
  write_row(cache->keys, k, t);
  write_row(cache->values, v, t);
  Tensor keys = slice(cache->keys, 2, 0, t + 1);      // (B, H, t+1, d)
  Tensor values = slice(cache->values, 2, 0, t + 1);  // (B, H, t+1, d)
  // The only query is the newest position, so every cached key is in its past: no mask.
  float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
  Tensor weights = softmax(matmul(q, transpose(keys, 2, 3)) * scale);  // (B, H, 1, t+1)
  cache->position = t + 1;
  return merge_heads(matmul(weights, values));  // (B, 1, D)
}

}  // namespace lg::nn
