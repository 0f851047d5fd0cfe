// nn/attention.h: the interface shared by every attention kind, and their common configuration.
//
// Two ways to run an attention layer:
//   forward(x, first_position)  the parallel pass over a whole (B, T, D) batch (training,
//                               evaluation, prompt processing);
//   step(x, state)              one new position per sequence, (B, 1, D), using and advancing a
//                               per-sequence state (a KV cache, an MLA latent cache, or the
//                               latent bank's running sums), so generation never recomputes
//                               the prefix.
// The two agree: running step() over positions 0..T-1 gives forward()'s outputs.
#pragma once

#include <memory>
#include <string>

#include "nn/module.h"

namespace lg::nn {

enum class AttentionKind { MHA, Latent, MLA };
AttentionKind parse_attention_kind(const std::string& name);  // "mha" | "latent" | "mla"; throws lg::Error
const char* attention_kind_name(AttentionKind kind);

struct AttentionConfig {
  AttentionKind kind = AttentionKind::Latent;
  int64_t dim = 128;           // D, model width
  int64_t heads = 4;           // H; head size d = D / H
  int64_t layers = 4;          // of the whole model: output projections get std 0.02 / sqrt(2 * layers)
  float rope_base = 10000.0f;
  float dropout = 0.0f;        // on the attention output (training only)
  bool bias = true;            // biases on the projections
  // LatentAttention
  int64_t latents = 16;        // M
  int64_t window = 16;         // W: also attend to the last W positions directly (0 = pure latent form)
  int64_t chunk = 32;          // C: chunk length of the training path
  // MLA (DeepSeek-V2)
  int64_t kv_rank = 0;         // d_c, size of the cached per-token latent (0 = D / 2)
  int64_t q_rank = 0;          // query compression rank (0 = no compression)
  int64_t rope_dim = 0;        // d_R, decoupled rotary key/query size per head (0 = d / 2)
};

// Per-sequence incremental state; each attention kind extends it.
struct AttentionState {
  virtual ~AttentionState() = default;
  int64_t position = 0;        // the position the next step() call processes
};

class Attention : public Module {
 public:
  // x (B, T, D) -> (B, T, D); row t sits at position first_position + t (RoPE).
  virtual Tensor forward(const Tensor& x, int64_t first_position = 0) = 0;
  // A fresh state for `batch` sequences starting at position 0.
  virtual std::unique_ptr<AttentionState> make_state(int64_t batch) const = 0;
  // x (B, 1, D) -> (B, 1, D) at position state.position; advances the state. No graph.
  virtual Tensor step(const Tensor& x, AttentionState& state) = 0;
};

// Builds the configured kind.
std::shared_ptr<Attention> make_attention(const AttentionConfig& config, Rng& rng);

}  // namespace lg::nn
