// fuzz/seed_model.h: the tiny models the seeds are written for and the targets load into.
#pragma once

#include <memory>
#include <string_view>

#include "models/charlm.h"
#include "nn/layer_norm.h"
#include "nn/linear.h"

namespace lg::fuzzing {

// The safetensors target's module: parameters norm.weight, norm.bias, proj.weight, proj.bias.
struct TinyModule : nn::Module {
  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::Linear> proj;
  TinyModule() {
    Rng rng(1);
    norm = register_module("norm", std::make_shared<nn::LayerNorm>(4));
    proj = register_module("proj", std::make_shared<nn::Linear>(4, 3, true, rng));
  }
};

// Small enough that building it and loading its weights costs well under a millisecond.
inline charlm::ModelConfig tiny_model_config(const std::string& attention, int64_t vocab) {
  charlm::ModelConfig c;
  c.vocab = vocab;
  c.layers = 1;
  c.heads = 2;
  c.dim = 8;
  c.ctx = 8;
  c.attention = attention;
  c.latents = 2;
  c.window = 2;
  return c;
}

// A checkpoint.json's model config is fuzzed too; larger ones are not built (their cost is the
// size the file asks for, not a defect of the reader).
inline bool small_enough(const charlm::ModelConfig& c) {
  return c.vocab <= 257 && c.layers <= 2 && c.heads <= 8 && c.dim <= 32 && c.ctx <= 32 && c.latents <= 16 &&
         c.window <= 32 && c.kv_rank <= 32 && c.q_rank <= 32 && c.rope_dim <= 32;
}

// The framing of the checkpoint target's input: checkpoint.json, model.safetensors and
// optimizer.safetensors, in this order, separated by this line; a missing part is a missing file.
inline constexpr std::string_view kFileSeparator = "\n--8<--\n";

}  // namespace lg::fuzzing
