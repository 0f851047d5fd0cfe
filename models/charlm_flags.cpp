// models/charlm_flags.cpp: the charlm commands' flags (value checks, help lines) and a run's config.toml.
#include "models/charlm_flags.h"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <functional>

namespace lg::charlm {

namespace {

// Range checks of the eval and sample flags, made as a value is parsed (the train settings'
// are their declarations', models/charlm_settings.cpp).
using IntCheck = std::function<void(const std::string& flag, int64_t value)>;
void positive(const std::string& flag, int64_t v) {
  if (v <= 0) throw UsageError(fmt::format("{} must be a positive integer, got {}", flag, v));
}
IntCheck at_least_zero(const std::string& note = "") {
  return [note](const std::string& flag, int64_t v) {
    if (v < 0) throw UsageError(fmt::format("{} must be >= 0{}, got {}", flag, note, v));
  };
}

// Declares flags on one command's app, in help groups. Each value flag's callback sees every
// occurrence of its flag (so that it can refuse a second one) and sets its field; a flag given
// both on the command line and in a --config file gets the command line's value only.
class Flags {
 public:
  Flags(CLI::App& app, const char* command) : app_(app), command_(command) {}

  void group(const std::string& name) { group_ = name; }

  // `set` parses the flag's text into its field; `shown` is the default help prints ("" for none).
  void value(const std::string& flag, const std::string& placeholder, const std::string& help,
             const std::string& shown, std::function<void(const std::string&)> set) {
    const std::string twice = fmt::format("charlm {}: {} given twice", command_, flag);
    app_.add_option(
            flag,
            [twice, set](const CLI::results_t& results) {
              if (results.size() > 1) throw UsageError(twice);
              if (results.empty()) return true;
              try {
                set(results[0]);
              } catch (const UsageError&) {
                throw;
              } catch (const Error& e) {  // from a parser shared with the rest of the code (--split)
                throw UsageError(e.what());
              }
              return true;
            },
            help)
        ->type_name(placeholder)
        ->default_str(shown)
        ->allow_extra_args(false)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->group(group_);
  }

  void integer(const std::string& flag, const char* placeholder, int64_t& field, const std::string& help,
               IntCheck check = {}) {
    value(flag, placeholder, help, fmt::format("{}", field), [flag, &field, check](const std::string& text) {
      field = to_int(flag, text);
      if (check) check(flag, field);
    });
  }

  // A text flag that must be given, and not empty. (The default shown is the field's value:
  // empty in help, the path in a run's config.toml.)
  void required_text(const std::string& flag, const char* placeholder, std::string& field,
                     const std::string& help) {
    const std::string empty = fmt::format("charlm {}: {} is empty", command_, flag);
    value(flag, placeholder, help, field, [empty, &field](const std::string& text) {
      if (text.empty()) throw UsageError(empty);
      field = text;
    });
    app_.get_option(flag)->required();
  }

  // A flag without a value: given, it sets field to true. A config file may say `name = true`
  // or `name = false` (models/charlm_cli.cpp reads the file); the command line may not.
  void on_off(const std::string& flag, bool& field, const std::string& help) {
    on_off(flag, field, help, [&field] { field = true; });
  }
  // The same, for a flag whose setting is not a field of its own: `shown` is whether it is on,
  // turn_on runs when it is given.
  void on_off(const std::string& flag, bool shown, const std::string& help, std::function<void()> turn_on) {
    const std::string twice = fmt::format("charlm {}: {} given twice", command_, flag);
    const std::string no_value = fmt::format("charlm {}: {} takes no value", command_, flag);
    app_.add_option(
            flag,
            [twice, no_value, turn_on](const CLI::results_t& results) {
              if (results.size() > 1) throw UsageError(twice);
              if (results.empty()) return true;
              if (results[0] != "true") throw UsageError(no_value);
              turn_on();
              return true;
            },
            help)
        ->expected(0)
        ->default_str(shown ? "true" : "false")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->group(group_);
  }

 private:
  CLI::App& app_;
  std::string command_;
  std::string group_;
};

const char* kThreadsHelp = "OpenMP/BLAS threads (0 = OMP_NUM_THREADS)";

}  // namespace

void add_train_flags(CLI::App& app, TrainSettings& s) {
  app.description(R"(usage: charlm train --data PATH --out DIR [flags]
       charlm train --config FILE [flags]

Trains on the bytes of PATH (any file; UTF-8 passes through as bytes), split by position
into train/val/test. The vocabulary is the bytes of the train split plus id 0 for bytes
never seen in it. Writes to DIR: latest/ and best/ (lowest val loss) checkpoints,
config.toml (every setting of the run, for --config), metrics.jsonl (one line per
evaluation) and loss.svg.)");
  app.footer(R"(Under `mpirun -np K`, --batch stays the whole batch: it is cut into one shard per thread of
every rank (shards of B/S or B/S + 1 sequences, weighted by size), the gradients are summed
across ranks, and the run equals one process with that many threads (up to float rounding).
Rank 0 prints and writes every file; every rank reads --data (and --config; --resume: also
DIR, so DIR must be on storage every rank sees).

At the end the best checkpoint is evaluated on EVERY token of the val and test splits
(non-overlapping windows of ctx) and a sample is printed. Ctrl-C (SIGINT) or SIGTERM
saves a checkpoint and exits (code 130 or 143); run again with --resume to continue.)");
  Flags f(app, "train");

  f.group("config files");
  app.set_config("--config", "",
                 "read flags from a TOML or INI file: `name = value` lines, the names\n"
                 "without --; flags on the command line override the file. Presets in\n"
                 "configs/: char_baseline.toml (these defaults), char_10m.toml\n"
                 "(10.7M parameters, ctx 256), long_context.toml (latent, ctx 4096);\n"
                 "DIR/config.toml of a run repeats that run")
      ->type_name("FILE")
      ->group("config files");

  // Every other flag is a setting, as models/charlm_settings.cpp declares it.
  for (const Setting& setting : train_settings()) {
    f.group(setting.group);
    if (setting.placeholder.empty()) {
      f.on_off(setting.flag(), setting.text(s) == "true", setting.help,
               [&s, &setting] { setting.parse(s, "true"); });
      continue;
    }
    f.value(setting.flag(), setting.placeholder.c_str(), setting.help, setting.text(s),
            [&s, &setting](const std::string& text) {
              setting.parse(s, text);
              setting.check(s);
            });
    if (setting.required) app.get_option(setting.flag())->required();
  }
}

void add_eval_flags(CLI::App& app, EvalArgs& a) {
  app.description(R"(usage: charlm eval --ckpt DIR --data PATH [--ctx N] [--json] [--threads N]

Evaluates a checkpoint on every token of PATH: non-overlapping windows of ctx bytes, each
byte after the first predicted once. Reports loss (nats), perplexity, bits per character
(byte) and next-character accuracy. Bytes outside the checkpoint's vocabulary count as the
unknown id (they are reported, and cost a high loss).)");
  app.footer(R"(Under `mpirun -np K`, each rank evaluates its share of the windows (every rank reads DIR
and PATH) and rank 0 prints the totals.)");
  Flags f(app, "eval");
  f.group("flags");
  f.required_text("--ckpt", "DIR", a.ckpt, "a checkpoint directory, or a run directory (uses its best/)");
  f.required_text("--data", "PATH", a.data, "text file to evaluate");
  f.integer("--ctx", "N", a.ctx,
            "window length (0 = the model's ctx). A longer one runs positions\n"
            "past the trained range: RoPE scores depend on distances only, but\n"
            "distances past ctx were never trained on",
            at_least_zero(" (0 = the model's ctx)"));
  f.on_off("--json", a.json, "print one JSON object with the metrics on stdout");
  f.integer("--threads", "N", a.threads, kThreadsHelp, at_least_zero(" (0 = OMP_NUM_THREADS)"));
}

void add_sample_flags(CLI::App& app, SampleArgs& a) {
  app.description(R"(usage: charlm sample --ckpt DIR [flags]

Generates text, printing each character as it is produced. Each new character costs one
incremental step per layer (attention state carried along, nothing recomputed). Latent
attention's state has a fixed size, so it goes on for any length at a flat cost per
character. mha's and mla's caches grow, and the model was trained on windows of ctx
characters: when their state reaches ctx positions it is rebuilt from the last ctx/2
characters, so every position stays in the trained range.)");
  Flags f(app, "sample");
  f.group("flags");
  f.required_text("--ckpt", "DIR", a.ckpt, "a checkpoint directory, or a run directory (uses its best/)");
  f.value("--prompt", "STR",
          "text to start from; every byte must be in the vocabulary\n"
          "(empty: start after a newline)",
          "''", [&a](const std::string& text) { a.prompt = text; });
  f.integer("--tokens", "N", a.tokens, "characters to generate", positive);
  f.value("--temperature", "T", "softmax temperature; 0 = the most likely", fmt::format("{}", a.temperature),
          [&a](const std::string& text) {
            a.temperature = to_real("--temperature", text);
            if (a.temperature < 0)
              throw UsageError(fmt::format("--temperature must be >= 0, got {}", a.temperature));
          });
  f.integer("--top-k", "K", a.top_k, "sample among the K most likely (0 = all)", at_least_zero(" (0 = all)"));
  f.integer("--seed", "S", a.seed, "sampling seed", at_least_zero());
  f.integer("--threads", "N", a.threads, kThreadsHelp, at_least_zero(" (0 = OMP_NUM_THREADS)"));
}

namespace {

// A value as TOML writes it: numbers and booleans bare, anything else in quotes. CLI11 reads
// no escapes, so a value with both kinds of quote, a '#' (a comment to CLI11) or a line break
// cannot be written: the caller comments its line out.
bool writable(const std::string& value) {
  bool both_quotes = value.find('"') != std::string::npos && value.find('\'') != std::string::npos;
  return !both_quotes && value.find_first_of("#\n\r") == std::string::npos;
}

std::string toml_value(const std::string& value) {
  if (value == "true" || value == "false") return value;
  char* end = nullptr;
  std::strtod(value.c_str(), &end);
  if (!value.empty() && *end == '\0' && !std::isspace(static_cast<unsigned char>(value[0]))) return value;
  return value.find('"') == std::string::npos ? fmt::format("\"{}\"", value) : fmt::format("'{}'", value);
}

}  // namespace

std::string train_config_toml(const TrainSettings& settings) {
  // The defaults that help would show for an app declared over these settings are exactly
  // their values.
  TrainSettings copy = settings;
  CLI::App app;
  add_train_flags(app, copy);
  std::string text =
      "# charlm train: the settings of this run (every flag but --config and --resume).\n"
      "# Repeat it with: charlm train --config THIS_FILE --out NEW_DIR\n";
  for (const std::string& group : app.get_groups()) {
    std::string lines;
    for (const CLI::Option* opt : app.get_options()) {
      if (opt->get_group() != group || !opt->get_configurable() || opt->get_name() == "--resume") continue;
      const std::string key = opt->get_single_name(), value = opt->get_default_str();
      if (value.empty()) continue;  // --data or --out not set
      if (writable(value))
        lines += fmt::format("{} = {}\n", key, toml_value(value));
      else
        lines += fmt::format("# {}: its value cannot be written here; give --{}\n", key, key);
    }
    if (!lines.empty()) text += fmt::format("\n# {}\n{}", group, lines);
  }
  return text;
}

}  // namespace lg::charlm
