// models/charlm.h: the character-level transformer language model, its evaluation and incremental sampling.
//
// Forward pass, for token ids (B, T) at positions 0..T-1:
//   h      = wte[ids]                                     (B, T, D)  token embedding, no position table:
//                                                                     RoPE inside attention gives positions
//   h      = blocks.i(h, first_position = 0)  i = 0..L-1  (B, T, D)  pre-norm transformer blocks
//   h      = ln_f(h)                                      (B, T, D)  the configured norm kind
//   logits = h @ wte.weight^T                             (B, T, V)  head tied to the embedding
// docs/checkpoint.md spells out every tensor and every step for reimplementing it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/json_io.h"
#include "dist/dist.h"
#include "nn/embedding.h"
#include "nn/kinds.h"
#include "nn/transformer_block.h"

namespace lg::charlm {

// The model's settings: those of its blocks (nn::BlockConfig: the kind of each part, its sizes)
// and its own. Each is declared for flags, help and checkpoints in models/charlm_settings.cpp,
// which also defines validate, to_json and from_json from the declarations.
struct ModelConfig : nn::BlockConfig {
  int64_t vocab = 0;  // V, including the unknown id 0
  int64_t ctx = 64;   // T, the training window and the evaluation window

  // Throws lg::Error naming the offending flag (e.g. "--dim 100 is not divisible by --heads 3").
  void validate() const;
  const nn::BlockConfig& block_config() const { return *this; }
  // The checkpoint's model section. from_json gives a missing key its default (a checkpoint
  // from before that setting) and refuses an unknown one; throws lg::Error on an ill-typed value.
  json::Json to_json() const;
  static ModelConfig from_json(const json::Json& v);
};

class CharLM : public nn::Module {
 public:
  CharLM(const ModelConfig& config, Rng& init_rng);

  // ids (B, T) row-major, T <= ctx -> logits (B, T, V). dropout_rng draws dropout masks
  // (untouched in eval mode or with dropout 0).
  Tensor forward(const std::vector<int32_t>& ids, int64_t B, int64_t T, Rng& dropout_rng);
  // The same for any T >= 1: positions from ctx on were never trained (`charlm eval --ctx`).
  Tensor forward_positions(const std::vector<int32_t>& ids, int64_t B, int64_t T, Rng& dropout_rng);
  // Mean cross-entropy of logits (B, T, V) against targets (B, T) -> ().
  static Tensor loss(const Tensor& logits, const std::vector<int32_t>& targets);
  // The head tied to the embedding: h (..., D) -> logits h wte.weight^T (..., V). Under bf16
  // mixed precision (core/precision.h) it is linear() without a bias, its three products in bf16
  // as every projection's; in fp32 the product of W^T as a view, as it always was.
  Tensor head(const Tensor& h) const;

  // Incremental decoding: one attention state per block.
  struct State {
    std::vector<std::unique_ptr<nn::AttentionState>> layers;
    int64_t position = 0;
  };
  State make_state(int64_t batch) const;
  // ids (B,) at position state.position -> logits (B, V); advances the state. No graph.
  Tensor step(const std::vector<int32_t>& ids, State& state);

  const ModelConfig& config() const { return config_; }

  // Activation recomputation (core/recompute.h): in training, keep each block's input only and
  // run the block again in backward. The same gradients, bit for bit; less memory, more time.
  bool recompute = false;

  std::shared_ptr<nn::Embedding> wte;                         // "wte": weight (V, D), also the output head
  std::vector<std::shared_ptr<nn::TransformerBlock>> blocks;  // "blocks.0" .. "blocks.{L-1}"
  std::shared_ptr<nn::Norm> ln_f;                             // "ln_f"

 private:
  ModelConfig config_;
};

// ---- data-parallel training step ------------------------------------------------------------

// Forward, loss and backward of one (B, T) batch, cut along B into `shards` pieces that run
// side by side, one per thread. Shard 0 runs through the model itself; shard s > 0 through a
// replica whose parameters share the model's storage (Module::share_parameters) but keep
// their own gradients, which are then added into the model's. Every op is per sequence, so
// the result is the gradient of the mean loss over the whole batch, as from
// loss(forward(batch)).backward(), up to the order of float additions.
//
// Why: a training step of a small model is many small products and elementwise kernels;
// splitting each of them over 2 threads pays a barrier per op and scales poorly, while
// whole-sequence shards on their own cores scale almost perfectly. Each shard's ops run
// single-threaded (nested OpenMP regions and OpenBLAS inside one run on one thread).
//
// Deterministic for a given shard count. With one shard (or B = 1) it is exactly the plain
// forward/backward, drawing dropout masks from dropout_rng; with more, shard s draws from
// its own generator seeded from dropout_rng.
//
// Across processes (dist/dist.h), the batch is cut into the shards of all ranks together and
// each rank runs its own range of them: the shards, their dropout streams and their weights
// are those of one process running all of them, so the result does not depend on how the
// shards are spread over ranks and threads (up to the order of float additions).
struct ShardRange {
  int64_t total = 1;  // shards of the whole batch (<= B)
  int64_t first = 0;  // the ones run here: [first, first + count)
  int64_t count = 1;  // <= shards()
};

class DataParallel {
 public:
  DataParallel(CharLM& model, int64_t shards);
  int64_t shards() const { return static_cast<int64_t>(replicas_.size()) + 1; }
  // ids, targets (B, T) row-major. Adds the gradient of the batch's mean cross-entropy into
  // the model's parameters' .grad (like backward(); zero them first) and returns that loss.
  float forward_backward(const std::vector<int32_t>& ids, const std::vector<int32_t>& targets, int64_t B,
                         int64_t T, Rng& dropout_rng);
  // The same for the shards of `range` only. shard_losses (resized to range.total) gets each
  // shard's loss weighted by its share of the batch (0 for shards run elsewhere): their sum
  // over all ranks is the batch's loss. With a reducer, the shards' gradients reach the
  // model's .grad through it (summed over shards and ranks, overlapping backward); without
  // one, they are added here. `weight` scales the loss and its gradient: 1 / N for each of
  // N micro-batches whose gradients add up to one step's (--accum).
  void forward_backward_shards(const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                               int64_t B, int64_t T, Rng& dropout_rng, const ShardRange& range,
                               std::vector<double>& shard_losses, dist::GradReducer* reducer = nullptr,
                               float weight = 1.0f);

 private:
  CharLM& model_;
  std::vector<std::unique_ptr<CharLM>> replicas_;
  std::vector<std::vector<Tensor>> params_;  // [0] the model's, [s] replica s's, in one order
};

// ---- evaluation ---------------------------------------------------------------------------

struct EvalResult {
  double loss = 0;      // mean cross-entropy (nats) over every predicted token
  int64_t tokens = 0;   // predictions made
  int64_t correct = 0;  // argmax == target
  int64_t unknown = 0;  // targets outside the vocabulary (id 0)
  double seconds = 0;
  double ppl() const;
  double bpc() const;  // bits per character (byte): loss / ln 2
  double accuracy() const;
};

// Every token of `ids` after the first is predicted exactly once: non-overlapping windows
// [s, s + ctx) for s = 0, ctx, 2 ctx, ... predict ids[s + 1 .. s + ctx], the last window
// being shorter. `window` > 0 uses windows of that length instead of the model's ctx (longer
// ones run positions past the trained range). Windows go through the model `batch` at a time, in eval mode,
// without a graph. Needs at least 2 ids. Across ranks (world.size > 1, every rank calling), each rank scores
// its share of the windows and the sums are added over ranks: every rank gets the result.
EvalResult evaluate_tokens(CharLM& model, const std::vector<int32_t>& ids, int64_t batch,
                           const dist::World& world = {}, int64_t window = 0);

// Mean loss over every token of `batches` random (batch, ctx) windows drawn from Rng(seed): the
// cheap estimate used during training. Eval mode, no graph; the caller's rngs are untouched.
// Across ranks, each rank scores its slice of every batch, as above.
double estimate_loss(CharLM& model, const std::vector<int32_t>& ids, int64_t batches, int64_t batch,
                     uint64_t seed, const dist::World& world = {});

// ---- sampling -----------------------------------------------------------------------------

// Autoregressive generation of one sequence with per-layer incremental state: each new token
// costs one step() per block. With latent attention the state has a fixed size (M running sums
// and the last W positions), so generation simply goes on, for any length, at a flat cost per
// token; its positions run past the trained ctx (RoPE makes every score depend on distances
// only, and the latents' sums weigh the whole prefix). A state that grows (mha's and mla's
// caches) would make each token dearer, and would reach distances the model never saw in
// training: when it reaches position ctx it is rebuilt from the last ctx / 2 tokens (a sliding
// window that keeps every position inside the trained range).
class Generator {
 public:
  explicit Generator(CharLM& model);
  bool rebuilds() const { return rebuilds_; }  // whether the state is rebuilt at ctx (see above)
  const std::vector<float>& logits() const { return logits_; }  // (V,) after the last feed()
  void feed(int32_t id);  // appends a token and computes the next-token logits
  // Draws the next id from the last logits: temperature 0 is greedy; top_k 0 keeps every
  // id. The unknown id is never drawn. Needs at least one feed() before.
  int32_t sample(Rng& rng, float temperature, int64_t top_k) const;

 private:
  CharLM& model_;
  CharLM::State state_;
  std::vector<int32_t> history_;
  std::vector<float> logits_;  // (V,)
  bool rebuilds_ = true;
};

}  // namespace lg::charlm
