// models/charlm_cli.h: the `charlm` command line (train, eval, sample): flags, help texts and dispatch.
//
// apps/charlm.cpp is only main(); keeping the commands here lets tests run them in-process.
#pragma once

#include <set>
#include <string>
#include <vector>

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

// The flags of `charlm train` (args after "train") as settings, plus the set of flags given;
// help is set for --help. Throws lg::Error naming the flag of any usage error.
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
