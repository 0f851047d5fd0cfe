// nn/attention.h: the interface every attention kind implements (the kinds: nn/kinds.h).
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

#include "nn/block_config.h"
#include "nn/module.h"

namespace lg::nn {

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
  // Whether the state grows with every step (a KV cache) rather than keeping a fixed size (the
  // latent bank's running sums). Generation rebuilds a growing state to bound its cost.
  virtual bool state_grows() const { return true; }
};

}  // namespace lg::nn
