// nn/kinds.cpp: the tables of kinds: a new kind is its #include and one line in its part's table.
#include "nn/kinds.h"

#include "nn/latent_attention.h"
#include "nn/layer_norm.h"
#include "nn/mha.h"
#include "nn/mla.h"
#include "nn/mlp.h"
#include "nn/rmsnorm.h"
#include "nn/swiglu.h"

namespace lg::nn {

namespace {

// The factory of a kind whose constructor takes (const BlockConfig&, Rng&).
template <class Part, class T>
std::shared_ptr<Part> from_config(const BlockConfig& config, Rng& rng) {
  return std::make_shared<T>(config, rng);
}

}  // namespace

const KindTable<Attention>& attention_kinds() {
  static const KindTable<Attention> table(
      "attention",
      {
          {"latent", "M learned latents + the last W positions: O(T (M + W))",
           from_config<Attention, LatentAttention>},
          {"mha", "softmax over every past position: O(T^2)", from_config<Attention, CausalSelfAttention>},
          {"mla", "DeepSeek-V2: one small cached KV latent per token", from_config<Attention, MLA>},
      });
  return table;
}

const KindTable<FeedForward>& feed_forward_kinds() {
  static const KindTable<FeedForward> table(
      "feed-forward",
      {
          {"gelu", "Linear D->4D, GELU, Linear 4D->D (GPT-2)", from_config<FeedForward, MLP>},
          {"swiglu", "W2(silu(W1 x) * W3 x), width 8D/3 (LLaMA)", from_config<FeedForward, SwiGLU>},
      });
  return table;
}

const KindTable<Norm>& norm_kinds() {
  static const KindTable<Norm> table(
      "norm", {
                  {"layernorm", "zero mean, unit variance; gain and bias", from_config<Norm, LayerNorm>},
                  {"rmsnorm", "divide by the root mean square; gain only", from_config<Norm, RMSNorm>},
              });
  return table;
}

std::shared_ptr<Attention> make_attention(const BlockConfig& config, Rng& rng) {
  return attention_kinds().find(config.attention).make(config, rng);
}
std::shared_ptr<FeedForward> make_feed_forward(const BlockConfig& config, Rng& rng) {
  return feed_forward_kinds().find(config.ffn).make(config, rng);
}
std::shared_ptr<Norm> make_norm(const BlockConfig& config, Rng& rng) {
  return norm_kinds().find(config.norm).make(config, rng);
}

}  // namespace lg::nn
