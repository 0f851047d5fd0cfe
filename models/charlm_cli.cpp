// models/charlm_cli.cpp: flag parsing, the help texts, the eval and sample commands, and dispatch to train.
#include "models/charlm_cli.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <map>
#include <ostream>
#include <set>

#include "dist/dist.h"
#include "models/charlm_checkpoint.h"

namespace lg::charlm {

// ============================================================================
// Help texts
// ============================================================================

std::string main_help() {
  return R"(charlm: a character-level transformer language model (latentgrad)

usage: charlm <command> [flags]      charlm <command> --help

commands:
  train    train a model on a text file, evaluate it, save checkpoints
  eval     evaluate a checkpoint on every token of a text file
  sample   generate text from a checkpoint

train and eval also run across processes and machines: mpirun -np K charlm train ...
(see charlm train --help and the README).
)";
}

std::string train_help() {
  return R"(usage: charlm train --data PATH --out DIR [flags]

Trains on the bytes of PATH (any file; UTF-8 passes through as bytes), split by position
into train/val/test. The vocabulary is the bytes of the train split plus id 0 for bytes
never seen in it. Writes to DIR: latest/ and best/ (lowest val loss) checkpoints,
metrics.jsonl (one line per evaluation) and loss.svg.

data and output:
  --data PATH           corpus text file (required)
  --out DIR             run directory (required; must not hold a run unless --resume)
  --split A,B,C         train,val,test fractions, each > 0, sum 1   [0.9,0.05,0.05]
  --resume              continue the run in DIR exactly where its latest checkpoint stopped
                        (only --steps, --eval-every, --eval-batches, --log-every and
                        --threads may differ from the saved run)
  --json                print one JSON object with the final metrics on stdout
                        (the human-readable report goes to stderr)
model:
  --attn KIND           latent | mla | mha                            [latent]
  --layers N            transformer blocks                            [4]
  --heads N             attention heads                               [4]
  --dim N               model width; dim/heads must be even (RoPE)    [128]
  --ctx N               context length (training window)              [64]
  --latents M           latent attention: latent bank size            [16]
  --window W            latent attention: recent positions attended   [16]
  --kv-rank N           mla: cached KV latent size (0 = dim/2)        [0]
  --q-rank N            mla: query compression rank (0 = none)        [0]
  --rope-dim N          mla: rotary key size per head (0 = head/2)    [0]
  --dropout P           dropout probability in [0, 1)                 [0]
optimization (AdamW, beta1 0.9, beta2 0.99; warmup then cosine decay to --min-lr):
  --steps N             optimizer steps                               [2000]
  --batch N             sequences per step                            [12]
  --lr X                peak learning rate                            [1e-3]
  --min-lr X            final learning rate                           [1e-4]
  --warmup N            linear warmup steps (at most --steps)         [100]
  --weight-decay X      decoupled decay of weight matrices            [0.1]
  --grad-clip X         max global gradient norm (0 = off)            [1.0]
evaluation and logging:
  --eval-every N        estimate train/val loss, save; every N steps  [250]
  --eval-batches N      batches per estimate                          [20]
  --log-every N         progress line every N steps (not a terminal)  [10]
  --seed N              seed of initialisation, batches and dropout   [1337]
  --threads N           OpenMP/BLAS threads (0 = OMP_NUM_THREADS)     [0]
                        Each step cuts the batch into one shard per thread, run side by
                        side (data parallel). A run is bitwise reproducible for a given
                        thread count; another count changes the float rounding only.
several processes or machines (started by mpirun; see the README):
  --bucket-mb X         gradients all-reduced in buckets of about X MB, each as soon
                        as backward has produced it                   [1]
  --no-overlap          all-reduce after backward instead (slower; for measuring)
  Under `mpirun -np K`, --batch stays the whole batch: it is cut into one shard per thread
  of every rank (shards of B/S or B/S + 1 sequences, weighted by size), the gradients are
  summed across ranks, and the run equals one process with that many threads (up to float
  rounding). Rank 0 prints and writes every file; every rank reads --data (--resume: also
  DIR, so DIR must be on storage every rank sees).

At the end the best checkpoint is evaluated on EVERY token of the val and test splits
(non-overlapping windows of ctx) and a sample is printed. Ctrl-C (SIGINT) or SIGTERM
saves a checkpoint and exits (code 130 or 143); run again with --resume to continue.
)";
}

std::string eval_help() {
  return R"(usage: charlm eval --ckpt DIR --data PATH [--json] [--threads N]

Evaluates a checkpoint on every token of PATH: non-overlapping windows of ctx bytes, each
byte after the first predicted once. Reports loss (nats), perplexity, bits per character
(byte) and next-character accuracy. Bytes outside the checkpoint's vocabulary count as the
unknown id (they are reported, and cost a high loss).

  --ckpt DIR            a checkpoint directory, or a run directory (uses its best/)
  --data PATH           text file to evaluate
  --json                print one JSON object with the metrics on stdout
  --threads N           OpenMP/BLAS threads (0 = OMP_NUM_THREADS)     [0]

Under `mpirun -np K`, each rank evaluates its share of the windows (every rank reads DIR
and PATH) and rank 0 prints the totals.
)";
}

std::string sample_help() {
  return R"(usage: charlm sample --ckpt DIR [flags]

Generates text, printing each character as it is produced. Each new character costs one
incremental step per layer (attention state carried along, nothing recomputed). The model
was trained on windows of ctx characters: when the state reaches ctx positions it is
rebuilt from the last ctx/2 characters, so every position stays in the trained range.

  --ckpt DIR            a checkpoint directory, or a run directory (uses its best/)
  --prompt STR          text to start from; every byte must be in the vocabulary
                        (empty: start after a newline)                ['']
  --tokens N            characters to generate                        [500]
  --temperature T       softmax temperature; 0 = the most likely     [0.8]
  --top-k K             sample among the K most likely (0 = all)      [0]
  --seed S              sampling seed                                 [1337]
  --threads N           OpenMP/BLAS threads (0 = OMP_NUM_THREADS)     [0]
)";
}

// ============================================================================
// Flags
// ============================================================================

namespace {

// A mistake in the command line itself (exit code 2).
struct UsageError : Error {
  using Error::Error;
};

struct FlagSpec {
  const char* name;
  bool takes_value;
};

struct ParsedFlags {
  std::map<std::string, std::string> values;  // flag -> value ("" for switches)
  std::set<std::string> given;
  bool help = false;

  bool has(const std::string& flag) const { return given.count(flag) > 0; }
  const std::string& get(const std::string& flag) const { return values.at(flag); }
};

ParsedFlags parse_flags(const std::vector<std::string>& args, const std::vector<FlagSpec>& specs,
                        const std::string& command) {
  ParsedFlags parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "--help" || arg == "-h") {
      parsed.help = true;
      continue;
    }
    std::string value;
    bool inline_value = false;
    if (size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& s : specs)
      if (arg == s.name) spec = &s;
    if (!spec) {
      if (arg.rfind("-", 0) != 0)
        throw UsageError(
            fmt::format("charlm {}: unexpected argument '{}' (see charlm {} --help)", command, arg, command));
      throw UsageError(
          fmt::format("charlm {}: unknown flag {} (see charlm {} --help)", command, arg, command));
    }
    if (parsed.given.count(arg)) throw UsageError(fmt::format("charlm {}: {} given twice", command, arg));
    if (spec->takes_value && !inline_value) {
      if (i + 1 >= args.size()) throw UsageError(fmt::format("charlm {}: {} needs a value", command, arg));
      value = args[++i];
    } else if (!spec->takes_value && inline_value) {
      throw UsageError(fmt::format("charlm {}: {} takes no value", command, arg));
    }
    parsed.values[arg] = value;
    parsed.given.insert(arg);
  }
  return parsed;
}

int64_t to_int(const std::string& flag, const std::string& text) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size())
    throw UsageError(fmt::format("{}: '{}' is not an integer", flag, text));
  return v;
}

int64_t to_positive_int(const std::string& flag, const std::string& text) {
  int64_t v = to_int(flag, text);
  if (v <= 0) throw UsageError(fmt::format("{} must be a positive integer, got {}", flag, v));
  return v;
}

double to_real(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v) || std::isspace(static_cast<unsigned char>(text[0])))
    throw UsageError(fmt::format("{}: '{}' is not a finite number", flag, text));
  return v;
}

const std::string& required(const ParsedFlags& f, const std::string& flag, const std::string& command) {
  if (!f.has(flag))
    throw UsageError(fmt::format("charlm {}: {} is required (see charlm {} --help)", command, flag, command));
  if (f.get(flag).empty()) throw UsageError(fmt::format("charlm {}: {} is empty", command, flag));
  return f.get(flag);
}

void apply_threads(const ParsedFlags& f) {
  if (!f.has("--threads")) return;
  int64_t n = to_int("--threads", f.get("--threads"));
  if (n < 0) throw UsageError(fmt::format("--threads must be >= 0 (0 = OMP_NUM_THREADS), got {}", n));
  set_num_threads(static_cast<int>(n));
}

// Builds a model from a checkpoint (resolved from --ckpt) with its weights loaded.
struct LoadedModel {
  std::string dir;
  CheckpointMeta meta;
  std::unique_ptr<CharLM> model;
};

LoadedModel load_model(const std::string& ckpt) {
  LoadedModel m;
  m.dir = resolve_checkpoint_dir(ckpt);
  m.meta = read_checkpoint_meta(m.dir);
  Rng init(0);
  m.model = std::make_unique<CharLM>(m.meta.model, init);
  load_checkpoint_weights(m.dir, *m.model);
  m.model->eval();
  return m;
}

// ============================================================================
// Commands
// ============================================================================

int train_command(const std::vector<std::string>& args, Console& console) {
  TrainInvocation call = parse_train_args(args);
  if (call.help) {
    console.out << train_help();
    return 0;
  }
  return run_train(call.settings, call.given, console).exit_code;
}

int eval_command(const std::vector<std::string>& args, Console& console) {
  ParsedFlags f =
      parse_flags(args, {{"--ckpt", true}, {"--data", true}, {"--json", false}, {"--threads", true}}, "eval");
  if (f.help) {
    console.out << eval_help();
    return 0;
  }
  const std::string ckpt = required(f, "--ckpt", "eval");
  const std::string data = required(f, "--data", "eval");
  apply_threads(f);
  const bool json = f.has("--json");
  std::ostream& human = json ? console.err : console.out;

  LoadedModel m = load_model(ckpt);
  const std::string text = read_corpus(data);
  if (text.size() < 2)
    throw Error(fmt::format("{} has {} byte; evaluation needs at least 2", data, text.size()));
  const std::vector<int32_t> ids = m.meta.vocab.encode(text);
  const int64_t unknown = m.meta.vocab.count_unknown(text);
  EvalResult r = evaluate_tokens(*m.model, ids, 16, dist::world());
  human << fmt::format(
      "charlm eval: {} (step {}, {} attention, {} parameters) on {} ({} bytes, {} outside the "
      "vocabulary)\n",
      m.dir, m.meta.step, nn::attention_kind_name(m.meta.model.attention),
      human_count(m.model->parameter_count()), data, human_count(static_cast<int64_t>(text.size())),
      human_count(unknown));
  human << "  " << metrics_line("eval", r) << "\n";
  human << fmt::format("  {:.1f} s, {} tokens/s\n", r.seconds,
                       human_count(std::llround(static_cast<double>(r.tokens) / std::max(r.seconds, 1e-9))));
  human.flush();
  if (json) {
    json::Json j = {{"checkpoint", m.dir},
                    {"step", m.meta.step},
                    {"data", data},
                    {"tokens", r.tokens},
                    {"unknown_bytes", unknown},
                    {"loss", r.loss},
                    {"ppl", r.ppl()},
                    {"bpc", r.bpc()},
                    {"accuracy", r.accuracy()},
                    {"tokens_per_s", static_cast<double>(r.tokens) / std::max(r.seconds, 1e-9)},
                    {"params", m.model->parameter_count()}};
    console.out << json::dump(j) << "\n" << std::flush;
  }
  return 0;
}

std::string byte_description(uint8_t b) {
  if (b >= 0x20 && b < 0x7f) return fmt::format("'{}' (byte 0x{:02x})", static_cast<char>(b), b);
  return fmt::format("byte 0x{:02x}", b);
}

int sample_command(const std::vector<std::string>& args, Console& console) {
  ParsedFlags f = parse_flags(args,
                              {{"--ckpt", true},
                               {"--prompt", true},
                               {"--tokens", true},
                               {"--temperature", true},
                               {"--top-k", true},
                               {"--seed", true},
                               {"--threads", true}},
                              "sample");
  if (f.help) {
    console.out << sample_help();
    return 0;
  }
  if (dist::world().size > 1)
    throw UsageError("sample generates one sequence in one process: run it without mpirun");
  const std::string ckpt = required(f, "--ckpt", "sample");
  const std::string prompt = f.has("--prompt") ? f.get("--prompt") : "";
  const int64_t tokens = f.has("--tokens") ? to_positive_int("--tokens", f.get("--tokens")) : 500;
  const double temperature = f.has("--temperature") ? to_real("--temperature", f.get("--temperature")) : 0.8;
  if (temperature < 0) throw UsageError(fmt::format("--temperature must be >= 0, got {}", temperature));
  const int64_t top_k = f.has("--top-k") ? to_int("--top-k", f.get("--top-k")) : 0;
  if (top_k < 0) throw UsageError(fmt::format("--top-k must be >= 0 (0 = all), got {}", top_k));
  const int64_t seed = f.has("--seed") ? to_int("--seed", f.get("--seed")) : 1337;
  if (seed < 0) throw UsageError(fmt::format("--seed must be >= 0, got {}", seed));
  apply_threads(f);

  LoadedModel m = load_model(ckpt);
  const Vocab& vocab = m.meta.vocab;
  for (size_t i = 0; i < prompt.size(); ++i) {
    uint8_t b = static_cast<uint8_t>(prompt[i]);
    if (vocab.id_of(b) == kUnknownId)
      throw Error(
          fmt::format("--prompt: {} at offset {} is not in the checkpoint's vocabulary ({} bytes seen in "
                      "training)",
                      byte_description(b), i, vocab.size() - 1));
  }
  Generator gen(*m.model);
  if (prompt.empty()) {
    int32_t newline = vocab.id_of('\n');
    gen.feed(newline != kUnknownId ? newline : 1);
  } else {
    for (char c : prompt) gen.feed(vocab.id_of(static_cast<uint8_t>(c)));
    console.out << prompt << std::flush;
  }
  Rng rng(static_cast<uint64_t>(seed));
  for (int64_t i = 0; i < tokens; ++i) {
    int32_t id = gen.sample(rng, static_cast<float>(temperature), top_k);
    console.out << static_cast<char>(vocab.byte_of(id)) << std::flush;
    gen.feed(id);
  }
  console.out << "\n" << std::flush;
  return 0;
}

}  // namespace

TrainInvocation parse_train_args(const std::vector<std::string>& args) {
  static const std::vector<FlagSpec> specs = {
      {"--data", true},       {"--out", true},          {"--attn", true},         {"--layers", true},
      {"--heads", true},      {"--dim", true},          {"--ctx", true},          {"--batch", true},
      {"--latents", true},    {"--window", true},       {"--kv-rank", true},      {"--q-rank", true},
      {"--rope-dim", true},   {"--dropout", true},      {"--steps", true},        {"--lr", true},
      {"--min-lr", true},     {"--warmup", true},       {"--weight-decay", true}, {"--grad-clip", true},
      {"--eval-every", true}, {"--eval-batches", true}, {"--log-every", true},    {"--split", true},
      {"--seed", true},       {"--threads", true},      {"--resume", false},      {"--json", false},
      {"--bucket-mb", true},  {"--no-overlap", false}};
  ParsedFlags f = parse_flags(args, specs, "train");
  TrainInvocation call;
  call.help = f.help;
  if (f.help) return call;
  TrainSettings& s = call.settings;
  s.data = required(f, "--data", "train");
  s.out = required(f, "--out", "train");
  auto int_flag = [&](const char* flag, int64_t& field) {
    if (f.has(flag)) field = to_int(flag, f.get(flag));
  };
  auto real_flag = [&](const char* flag, double& field) {
    if (f.has(flag)) field = to_real(flag, f.get(flag));
  };
  if (f.has("--attn")) {
    try {
      s.model.attention = nn::parse_attention_kind(f.get("--attn"));
    } catch (const Error& e) {
      throw UsageError(fmt::format("--attn: {}", e.what()));
    }
  }
  int_flag("--layers", s.model.layers);
  int_flag("--heads", s.model.heads);
  int_flag("--dim", s.model.dim);
  int_flag("--ctx", s.model.ctx);
  int_flag("--latents", s.model.latents);
  int_flag("--window", s.model.window);
  int_flag("--kv-rank", s.model.kv_rank);
  int_flag("--q-rank", s.model.q_rank);
  int_flag("--rope-dim", s.model.rope_dim);
  double dropout = s.model.dropout;
  real_flag("--dropout", dropout);
  s.model.dropout = static_cast<float>(dropout);
  int_flag("--batch", s.batch);
  int_flag("--steps", s.steps);
  real_flag("--lr", s.lr);
  real_flag("--min-lr", s.min_lr);
  int_flag("--warmup", s.warmup);
  real_flag("--weight-decay", s.weight_decay);
  real_flag("--grad-clip", s.grad_clip);
  int_flag("--eval-every", s.eval_every);
  int_flag("--eval-batches", s.eval_batches);
  int_flag("--log-every", s.log_every);
  int_flag("--threads", s.threads);
  if (f.has("--split")) {
    try {
      s.split = parse_split(f.get("--split"));
    } catch (const Error& e) {
      throw UsageError(e.what());
    }
  }
  if (f.has("--seed")) {
    int64_t seed = to_int("--seed", f.get("--seed"));
    if (seed < 0) throw UsageError(fmt::format("--seed must be >= 0, got {}", seed));
    s.seed = static_cast<uint64_t>(seed);
  }
  real_flag("--bucket-mb", s.bucket_mb);
  s.overlap = !f.has("--no-overlap");
  s.resume = f.has("--resume");
  s.json = f.has("--json");
  try {
    s.validate(false);
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  call.given = f.given;
  return call;
}

// ============================================================================
// Dispatch
// ============================================================================

// Prints an error and returns its exit code; under mpirun, where the other ranks may be waiting
// for this one, ends the whole job instead (end_job).
static int report_error(Console& console, const std::string& message, int code) {
  if (dist::world().size > 1) end_job(console.err, message, code);
  console.err << "charlm: error: " << message << std::endl;
  return code;
}

int charlm_main(const std::vector<std::string>& args, Console& console) {
  try {
    if (args.empty()) {
      console.err << main_help();
      return kExitUsage;
    }
    const std::string& command = args[0];
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (command == "--help" || command == "-h" || command == "help") {
      console.out << main_help();
      return 0;
    }
    if (command == "train") return train_command(rest, console);
    if (command == "eval") return eval_command(rest, console);
    if (command == "sample") return sample_command(rest, console);
    throw UsageError(
        fmt::format("unknown command '{}' (expected train, eval or sample; see charlm --help)", command));
  } catch (const UsageError& e) {
    return report_error(console, e.what(), kExitUsage);
  } catch (const std::bad_alloc&) {
    return report_error(console, "out of memory", kExitError);
  } catch (const std::exception& e) {
    return report_error(console, e.what(), kExitError);
  }
}

}  // namespace lg::charlm
