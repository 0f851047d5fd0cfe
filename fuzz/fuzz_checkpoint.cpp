// fuzz/fuzz_checkpoint.cpp: the checkpoint loader (read_checkpoint_meta, load_checkpoint_weights,
// load_checkpoint_optimizer) on arbitrary checkpoint directories.
//
// Input framing: up to three parts separated by the line "--8<--" (kFileSeparator in
// seed_model.h, also in the dictionary), written as
//   checkpoint.json  \n--8<--\n  model.safetensors  \n--8<--\n  optimizer.safetensors
// into an empty directory; a part that is absent leaves its file missing, parts after the third
// are ignored. Each run reads the metadata; the weights and the optimizer state are loaded into
// the tiny model the seeds were written for, whatever the metadata said (so the tensor files are
// fuzzed even when checkpoint.json is broken), and into the model the metadata describes when
// that is another one and small. lg::Error is the loader's answer to a bad checkpoint; anything
// else is a finding.
#include <optional>

#include "fuzz/fuzz_files.h"
#include "fuzz/seed_model.h"
#include "models/charlm_checkpoint.h"

namespace {

void load_tensors(const std::string& dir, const lg::charlm::ModelConfig& config) {
  try {
    lg::Rng init(0);
    lg::charlm::CharLM model(config, init);
    lg::charlm::load_checkpoint_weights(dir, model);
    lg::optim::AdamW optimizer(model.named_parameters());
    lg::charlm::load_checkpoint_optimizer(dir, optimizer);
  } catch (const lg::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lg::fuzzing;
  const fs::path& dir = scratch().fresh();
  const auto parts = split(as_text(data, size), kFileSeparator);
  const char* names[] = {"checkpoint.json", "model.safetensors", "optimizer.safetensors"};
  for (size_t i = 0; i < parts.size() && i < 3; ++i) write_bytes(dir / names[i], parts[i]);

  const lg::charlm::ModelConfig tiny = tiny_model_config("latent", 4);
  std::optional<lg::charlm::CheckpointMeta> meta;
  try {
    meta = lg::charlm::read_checkpoint_meta(dir.string());
  } catch (const lg::Error&) {
  }
  if (meta) {
    // What the reader promises: a vocabulary that matches the config, which is valid.
    if (meta->vocab.size() != meta->model.vocab) std::abort();
    meta->model.validate();
    if (small_enough(meta->model) && lg::json::dump(meta->model.to_json()) != lg::json::dump(tiny.to_json()))
      load_tensors(dir.string(), meta->model);
  }
  load_tensors(dir.string(), tiny);
  return 0;
}
