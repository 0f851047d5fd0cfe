// models/charlm_cli.h: the `charlm` command line (train, eval, sample): parsing, help texts and dispatch.
//
// apps/charlm.cpp is only main(); keeping the commands here lets tests run them in-process.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "models/charlm_flags.h"
#include "models/charlm_train.h"

namespace lg::charlm {

// Exit codes: 0 success, 1 runtime error (bad data, checkpoint, I/O, NaN), 2 usage error
// (unknown flag, invalid number), 130 interrupted by SIGINT after saving a checkpoint.
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitInterrupted = 130;

// args excludes the program name: {"train", "--data", "x.txt", ...}. Every error is one line
// "charlm: error: ..." on console.err; nothing escapes.
int charlm_main(const std::vector<std::string>& args, Console& console);

// The flags of `charlm train` (args after "train", and the keys of a --config file) as settings,
// plus the set of flags given (on the command line or in the file); help is set for --help.
// Throws UsageError (an lg::Error) naming the flag, or the file and its key, of any usage error;
// reads the --config file, nothing else.
struct TrainInvocation {
  TrainSettings settings;
  std::set<std::string> given;
  bool help = false;
};
TrainInvocation parse_train_args(const std::vector<std::string>& args);

// The help texts, as `--help` prints them.
std::string main_help();
std::string train_help();
std::string eval_help();
std::string sample_help();

}  // namespace lg::charlm
