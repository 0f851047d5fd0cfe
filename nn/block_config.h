// nn/block_config.h: the settings a transformer block's parts are built from: which kind of each, and sizes.
#pragma once

#include <cstdint>
#include <string>

namespace lg::nn {

// One struct for every kind of every part (nn/kinds.h), so that a factory has one signature:
// a kind reads the fields it needs and ignores the rest.
struct BlockConfig {
  // The kinds, by their names in nn/kinds.cpp.
  std::string attention = "latent";  // mha | latent | mla
  std::string ffn = "gelu";          // gelu | swiglu
  std::string norm = "layernorm";    // layernorm | rmsnorm

  int64_t dim = 128;   // D, model width
  int64_t heads = 4;   // H; head size d = D / H
  int64_t layers = 4;  // of the whole model: residual output projections get std 0.02 / sqrt(2 * layers)
  float rope_base = 10000.0f;
  float dropout = 0.0f;    // on the attention output (training only)
  bool bias = true;        // biases on the projections
  double norm_eps = 1e-5;  // of either norm kind
  // LatentAttention
  int64_t latents = 16;  // M
  int64_t window = 16;   // W: also attend to the last W positions directly (0 = pure latent form)
  int64_t chunk = 32;    // C: chunk length of the training path
  // MLA (DeepSeek-V2)
  int64_t kv_rank = 0;   // d_c, size of the cached per-token latent (0 = D / 2)
  int64_t q_rank = 0;    // query compression rank (0 = no compression)
  int64_t rope_dim = 0;  // d_R, decoupled rotary key/query size per head (0 = d / 2)
};

}  // namespace lg::nn
