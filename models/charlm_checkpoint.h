// models/charlm_checkpoint.h: the char LM's checkpoint directory: weights, optimizer, and everything to
// resume exactly.
//
// A checkpoint is a directory holding three files:
//   model.safetensors      every parameter under its module path ("wte.weight", "blocks.0.ln1.weight", ...)
//   optimizer.safetensors  AdamW moments "m.<name>", "v.<name>"; its step count in the metadata
//   checkpoint.json        format version, model config, vocabulary, training settings, completed
//                          steps, RNG states, best validation loss, corpus fingerprint, and the size
//                          and FNV-1a hash of both .safetensors files
// It is written into DIR.staging and swapped in for DIR as one directory rename, so DIR is
// always one complete checkpoint; the hashes catch a file that was truncated or altered later.
// A training run's --out holds two: latest/ (the last saved step) and best/ (lowest val loss).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "core/json_io.h"
#include "models/charlm.h"
#include "models/charlm_data.h"
#include "optim/adamw.h"

namespace lg::charlm {

inline constexpr int64_t kCheckpointFormat = 1;

// Fingerprint of the corpus a run trains on: resuming on another text is refused.
struct CorpusInfo {
  std::string path;
  int64_t bytes = 0;
  uint64_t fnv1a = 0;
};

// Everything of a run besides the tensors.
struct CheckpointMeta {
  ModelConfig model;
  Vocab vocab;
  json::Json training = json::Json::object();  // the training settings (TrainSettings::to_json)
  CorpusInfo corpus;
  int64_t step = 0;                    // optimizer steps completed
  std::array<uint64_t, 4> data_rng{};  // batch sampling, as it stands after `step` steps
  std::array<uint64_t, 4> dropout_rng{};
  double best_val_loss = 0;  // lowest estimated val loss so far (inf before any evaluation)
  int64_t best_step = -1;
  double train_seconds = 0;  // time spent in training steps so far
};

// Writes the checkpoint directory `dir` (see above). `optimizer` may be null (no optimizer file).
void save_checkpoint(const std::string& dir, const CheckpointMeta& meta, const CharLM& model,
                     const optim::AdamW* optimizer);

// Resolves what a user passed as --ckpt: a checkpoint directory itself, or a run's --out
// directory (then its best/, else its latest/). Throws lg::Error "no checkpoint at PATH ...".
std::string resolve_checkpoint_dir(const std::string& path);

// Reads and checks checkpoint.json and the hashes of the tensor files. Throws lg::Error naming
// the file and the problem (missing, truncated, corrupted, unsupported format).
CheckpointMeta read_checkpoint_meta(const std::string& dir);

// Copies the weights into `model` (built from meta.model); throws lg::Error on any mismatch.
void load_checkpoint_weights(const std::string& dir, CharLM& model);
void load_checkpoint_optimizer(const std::string& dir, optim::AdamW& optimizer);

}  // namespace lg::charlm
