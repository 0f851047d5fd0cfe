// models/charlm_flags.h: the charlm commands' flags as CLI11 options, with their help and defaults.
//
// `charlm train`'s flags are its settings, each made an option from its declaration
// (models/charlm_settings.h); `eval`'s and `sample`'s are declared here. An option checks its
// value and carries the help line and the default that `--help` prints; train's also name the
// keys of a --config file and of the config.toml every run records (train_config_toml).
// Parsing, config files and help layout are models/charlm_cli.cpp's.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "models/charlm_settings.h"
#include "models/charlm_train.h"

namespace CLI {
class App;
}

namespace lg::charlm {

// The flags of `charlm eval` and `charlm sample`, with their defaults.
struct EvalArgs {
  std::string ckpt, data;
  int64_t ctx = 0;  // evaluation window; 0 = the model's
  bool json = false;
  int64_t threads = 0;
};
struct SampleArgs {
  std::string ckpt, prompt;
  int64_t tokens = 500;
  double temperature = 0.8;
  int64_t top_k = 0;
  int64_t seed = 1337;
  int64_t threads = 0;
};

// Declare each command's flags on app (its description and footer too), bound to the fields of
// the given struct; the defaults shown in help are the fields' values.
void add_train_flags(CLI::App& app, TrainSettings& settings);
void add_eval_flags(CLI::App& app, EvalArgs& args);
void add_sample_flags(CLI::App& app, SampleArgs& args);

// settings as a config file that `charlm train --config` reads back to equal settings: every
// flag of `charlm train` but --config and --resume, in help's groups and order.
std::string train_config_toml(const TrainSettings& settings);

}  // namespace lg::charlm
