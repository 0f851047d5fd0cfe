// models/charlm_train.h: the `charlm train` run: settings, the training loop, evaluations, checkpoints,
// reports.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <set>
#include <string>
#include <vector>

#include "core/json_io.h"
#include "models/charlm.h"
#include "models/charlm_data.h"

namespace lg::charlm {

// Where a command writes: `out` gets results (and the JSON object with --json), `err` gets
// errors; human-readable progress goes to `out`, or to `err` under --json.
struct Console {
  std::ostream& out;
  std::ostream& err;
  bool out_is_tty = false;
  bool err_is_tty = false;
};

// Every `charlm train` flag; the defaults are nanoGPT's CPU settings for Shakespeare.
struct TrainSettings {
  std::string data, out;
  ModelConfig model;  // model.vocab is set from the training split
  int64_t batch = 12;
  int64_t accum = 1;  // micro-batches of `batch` sequences per optimizer step
  int64_t steps = 2000;
  double lr = 1e-3, min_lr = 1e-4;
  int64_t warmup = 100;
  double weight_decay = 0.1, grad_clip = 1.0;
  double beta1 = 0.9, beta2 = 0.99;
  int64_t eval_every = 250, eval_batches = 20, log_every = 10;
  SplitFractions split;
  uint64_t seed = 1337;
  int64_t threads = 0;     // 0: as OMP_NUM_THREADS says
  double bucket_mb = 1.0;  // gradient all-reduce bucket size, across ranks (dist/dist.h)
  bool overlap = true;     // all-reduce buckets while backward runs (--no-overlap: after it)
  bool recompute = false;  // recompute each block's forward in backward (CharLM::recompute)
  std::string precision = "fp32";  // linear's products: "fp32" or "bf16" (core/precision.h)
  bool resume = false, json = false;

  // Each is declared once, with its flag, range, help and scope, in models/charlm_settings.cpp,
  // which also defines these three from the declarations.
  // Throws lg::Error naming the flag of any invalid value (model ones via ModelConfig::validate,
  // which needs model.vocab set; call with vocab_known = false before the corpus is read).
  void validate(bool vocab_known) const;
  // The settings saved in a checkpoint (keyed by flag name), and back: a missing key takes its
  // default, an unknown one is refused.
  json::Json to_json() const;
  static TrainSettings from_json(const json::Json& v);
};

// Stop requests (SIGINT from Ctrl-C, SIGTERM from a cluster scheduler or `kill`): the training
// loop stops after the step in progress (on every rank, at the same step), saves a checkpoint
// and returns 128 + the signal's number (130, 143).
void request_stop(int signal_number);
bool stop_requested();
int stop_signal();  // the signal that asked to stop; 0 if none
void clear_stop();
void install_stop_handlers();  // the first SIGINT or SIGTERM calls request_stop(); a second one kills as
                               // usual

// An error on one rank of several (under mpirun) when the others may be waiting for it in a
// collective: prints it ("rank R: " before it on ranks other than 0) and ends the whole job
// (dist::abort). Ranks other than 0 wait a second first, so that an error every rank meets is
// printed once, by rank 0, whose abort ends the others. With one rank: prints and exits.
[[noreturn]] void end_job(std::ostream& err, const std::string& message, int exit_code);

struct TrainResult {
  int exit_code = 0;          // 0 done, 1 error, 130 or 143 interrupted (checkpoint saved)
  int64_t first_step = 0;     // step the run started from (0, or the resumed step)
  int64_t last_step = 0;      // steps completed when it returned
  std::vector<float> losses;  // training loss of each step run here: losses[i] is step first_step + i + 1
  EvalResult val, test;       // every-token evaluations at the end (best checkpoint)
  double tokens_per_s = 0;
  double comm_ms_per_step = 0;  // waiting on other ranks (gradients, losses), per step
  double step_ms_median = 0;    // median time of this run's steps
  double memory_estimate_mb = 0;  // tensor memory of a step, estimated before training (see below)
  double memory_peak_mb = 0;      // the most tensor memory in use while training
  int64_t params = 0;
};

// Runs `charlm train`. `given` holds the flags given explicitly on the command line (for
// --resume's checks). after_step(step, model), if set, runs after each completed step and its
// evaluation (tests use it to interrupt a run, or to break the weights, at a chosen step).
// Every error is reported on console.err and returned as exit code 1; nothing is thrown.
using StepHook = std::function<void(int64_t step, CharLM& model)>;
TrainResult run_train(TrainSettings settings, const std::set<std::string>& given, Console& console,
                      const StepHook& after_step = {});

// The tensor memory a training step takes, estimated from one forward and backward of a single
// sequence at two lengths (which it runs on model, leaving no gradient behind): the weights,
// their gradients, AdamW's moments, each shard's gradients, and the activations, linear in the
// tokens of the step. `tokens` and `shards` are this process's (batch x ctx and threads).
struct MemoryEstimate {
  int64_t bytes = 0;
  double bytes_per_token = 0;  // activations per token of batch x ctx, all layers
};
MemoryEstimate estimate_step_memory(CharLM& model, int64_t tokens, int64_t shards);

// Seeds of the run's independent random streams, derived from --seed.
enum class Stream : uint64_t { Init = 1, Data, Dropout, TrainEstimate, ValEstimate, Sample };
uint64_t stream_seed(uint64_t seed, Stream stream);

// Human-readable helpers shared by the commands.
std::string human_count(int64_t n);          // 1234567 -> "1,234,567"
std::string human_duration(double seconds);  // "3m12s"
std::string metrics_line(const char* label,
                         const EvalResult& r);  // "loss 1.4821  ppl 4.40  bpc 2.138  acc 56.1%"

}  // namespace lg::charlm
