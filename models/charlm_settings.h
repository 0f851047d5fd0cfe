// models/charlm_settings.h: every setting of `charlm train`, declared once: name, type, default, range, help,
// scope.
//
// One declaration per setting (models/charlm_settings.cpp) drives everything that handles it:
//   flags and --help           models/charlm_flags.cpp makes each setting a CLI11 option
//   --config files             the same options; a file's keys are the names
//   validation                 Setting::check, as a value is parsed and in TrainSettings::validate
//   checkpoints                TrainSettings::to_json / from_json (the training section) and
//                              ModelConfig::to_json / from_json (the model section)
//   --resume                   the scope says which settings must match the checkpoint
// A key missing from a checkpoint takes its setting's default, so checkpoints written before a
// setting existed keep loading: a new setting's default must be the behaviour from before it.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/json_io.h"
#include "core/tensor.h"
#include "models/charlm_train.h"

namespace lg::charlm {

// A mistake in the command line or in a --config file (exit code 2).
struct UsageError : Error {
  using Error::Error;
};

// A flag's text as a whole integer, or as a finite number; UsageError naming the flag otherwise.
int64_t to_int(const std::string& flag, const std::string& text);
double to_real(const std::string& flag, const std::string& text);

enum class Scope {
  Model,    // the model's shape: in the checkpoint's model and training sections; fixed on resume
  Run,      // how the run trains: in the training section; fixed on resume
  Session,  // in the training section, but --resume may change it (--steps, --threads, ...)
  Command,  // of one invocation, never saved (--data, --out, --json, ...)
};

struct Setting {
  std::string name;         // the flag without "--": the key of --config files and of the training section
  std::string model_key;    // its key in the checkpoint's model section (Scope::Model only)
  std::string group;        // the --help group that lists it
  std::string placeholder;  // "N", "X", "KIND", ...; empty for a switch (a flag without a value)
  std::string help;         // may span lines
  Scope scope = Scope::Run;
  bool required = false;  // must be given (--data, --out)

  // The value as a flag gives it ("0.001", "latent", "true"): the default --help shows.
  std::function<std::string(const TrainSettings&)> text;
  // Sets the value from a flag's text; throws UsageError if it is not a value of the type.
  std::function<void(TrainSettings&, const std::string&)> parse;
  // Throws lg::Error naming the flag if the value is out of range ("--batch must be a positive
  // integer, got 0"). Checks that involve other settings are TrainSettings::validate's.
  std::function<void(const TrainSettings&)> check;
  // The value in a checkpoint, and back (throws lg::Error naming `where` on a value of the wrong type).
  std::function<json::Json(const TrainSettings&)> to_json;
  std::function<void(TrainSettings&, const json::Json&, const std::string& where)> from_json;
  // Copies this setting's value from another TrainSettings.
  std::function<void(TrainSettings& to, const TrainSettings& from)> copy;

  std::string flag() const { return "--" + name; }
  bool saved() const { return scope != Scope::Command; }
};

// In --help order.
const std::vector<Setting>& train_settings();
// The setting with this name ("lr", not "--lr"); null if there is none.
const Setting* find_setting(const std::string& name);

// "--steps, --eval-every, ... and --threads": the saved settings --resume lets change.
std::string resumable_flags();

}  // namespace lg::charlm
