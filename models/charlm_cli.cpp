// models/charlm_cli.cpp: parsing (CLI11) of flags and --config files, help layout, eval, sample, dispatch.
#include "models/charlm_cli.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <map>
#include <ostream>
#include <set>

#include "core/files.h"
#include "dist/dist.h"
#include "models/charlm_checkpoint.h"
#include "models/charlm_flags.h"

namespace lg::charlm {

// ============================================================================
// Parsing
// ============================================================================

namespace {

// The flags that took their value from a --config file (flag -> its key), and the file.
struct ConfigFileValues {
  std::string file;
  std::map<std::string, std::string> keys;
};

// Reads a --config file with CLI11's TOML reader (INI's `name = value` lines read the same), and
// turns away what CLI11 would read silently or misread: sections, unknown keys, a key set twice,
// lists, switches set to anything but true or false.
class ConfigFileReader : public CLI::ConfigTOML {
 public:
  ConfigFileReader(const CLI::App& app, ConfigFileValues& values) : app_(app), values_(values) {}

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    const std::string& file = values_.file = app_.get_config_ptr()->results().at(0);
    std::vector<CLI::ConfigItem> items;
    std::set<std::string> seen;
    for (CLI::ConfigItem& item : CLI::ConfigTOML::from_config(input)) {
      if (!item.parents.empty() || item.name == "++" || item.name == "--")
        throw UsageError(fmt::format("{}: sections ([{}]) are not read: write `name = value` lines only",
                                     file, item.parents.empty() ? item.name : item.parents[0]));
      const CLI::Option* opt = app_.get_option_no_throw("--" + item.name);
      if (opt == nullptr || !opt->get_configurable() || item.name.empty())
        throw UsageError(
            fmt::format("{}: unknown key '{}' (the keys are the flags of charlm train --help, without --)",
                        file, item.name));
      if (!seen.insert(item.name).second)
        throw UsageError(fmt::format("{}: {} is set twice", file, item.name));
      if (item.inputs.size() != 1)
        throw UsageError(
            fmt::format("{}: {} takes one value, got {} (set twice? a list such as split's goes in quotes)",
                        file, item.name, item.inputs.size()));
      if (opt->get_expected_max() == 0) {  // a switch
        if (item.inputs[0] == "false") continue;
        if (item.inputs[0] != "true")
          throw UsageError(
              fmt::format("{}: {} must be true or false, got '{}'", file, item.name, item.inputs[0]));
      }
      if (opt->empty()) values_.keys[opt->get_name()] = item.name;  // not overridden by the command line
      items.push_back(std::move(item));
    }
    return items;
  }

 private:
  const CLI::App& app_;
  ConfigFileValues& values_;
};

// Whether message names flag (as a whole word: "--lr" is not in "--min-lr" nor "--lrx").
bool mentions(const std::string& message, const std::string& flag) {
  for (size_t at = message.find(flag); at != std::string::npos; at = message.find(flag, at + 1)) {
    size_t end = at + flag.size();
    auto word_char = [&](size_t i) {
      return std::isalnum(static_cast<unsigned char>(message[i])) || message[i] == '-';
    };
    bool starts = at == 0 || !word_char(at - 1);
    bool ends = end == message.size() || !word_char(end);
    if (starts && ends) return true;
  }
  return false;
}

// A value error about flags that came from the config file says which keys of which file.
UsageError from_config_file(const std::string& message, const ConfigFileValues& config) {
  std::string keys;
  for (const auto& [flag, key] : config.keys)
    if (mentions(message, flag)) keys += (keys.empty() ? "" : ", ") + key;
  if (keys.empty()) return UsageError(message);
  return UsageError(fmt::format("{} (key {} of {})", message, keys, config.file));
}

// CLI11 opens a --config file with a plain ifstream: a FIFO would block it and /dev/zero feed it
// forever. So the file is looked at first: a regular file of at most kMaxConfigBytes.
constexpr int64_t kMaxConfigBytes = 1 << 20;
void check_config_file(const std::string& path) {
  struct stat st {};
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return;  // CLI11 reports these in its turn
  if (!S_ISREG(st.st_mode)) throw UsageError(fmt::format("--config {}: not a regular file", path));
  if (st.st_size > kMaxConfigBytes)
    throw UsageError(fmt::format("--config {}: {} bytes, more than a config file's limit of {}", path,
                                 st.st_size, kMaxConfigBytes));
}

// Parses args (without the command) into the flags declared on app. Returns false when -h or
// --help asked for help instead. Throws UsageError, worded as charlm's errors are, for any
// mistake in the command line or the --config file; CLI11's own texts never reach the user.
bool parse_command(CLI::App& app, const std::vector<std::string>& args, const std::string& command,
                   ConfigFileValues& config) {
  // Help wins over any other flag, as soon as it is read.
  app.set_help_flag();
  app.add_flag_callback("-h,--help", [] { throw CLI::CallForHelp(); })
      ->trigger_on_parse()
      ->configurable(false)
      ->group("");
  app.allow_extras();  // unknown flags are reported below, in charlm's words
  if (app.get_config_ptr() != nullptr) app.config_formatter(std::make_shared<ConfigFileReader>(app, config));

  // CLI11 reads "--steps=" as "--steps" and takes the next argument as its value: an empty
  // value stays empty here.
  std::vector<std::string> split_args;
  for (const std::string& arg : args) {
    const CLI::Option* opt = nullptr;
    if (arg.size() > 3 && arg.rfind("--", 0) == 0 && arg.back() == '=')
      opt = app.get_option_no_throw(arg.substr(0, arg.size() - 1));
    if (opt != nullptr && opt->get_expected_max() > 0) {
      split_args.push_back(arg.substr(0, arg.size() - 1));
      split_args.push_back("");
    } else {
      split_args.push_back(arg);
    }
  }
  for (size_t i = 0; i < split_args.size(); ++i) {
    if (split_args[i] == "--config" && i + 1 < split_args.size()) check_config_file(split_args[i + 1]);
    if (split_args[i].rfind("--config=", 0) == 0) check_config_file(split_args[i].substr(9));
  }
  std::vector<std::string> reversed(split_args.rbegin(), split_args.rend());  // as CLI11 wants them
  auto prefixed = [&](const std::string& message) {
    return UsageError(fmt::format("charlm {}: {}", command, message));
  };
  auto check_extras = [&] {
    const std::vector<std::string> extras = app.remaining();
    if (extras.empty()) return;
    const std::string& arg = extras[0];
    if (arg.rfind("-", 0) == 0)
      throw prefixed(
          fmt::format("unknown flag {} (see charlm {} --help)", arg.substr(0, arg.find('=')), command));
    throw prefixed(fmt::format("unexpected argument '{}' (see charlm {} --help)", arg, command));
  };
  // CLI11 reads no config file for an empty name
  auto check_config_named = [&] {
    const CLI::Option* config_flag = app.get_config_ptr();
    if (config_flag != nullptr && !config_flag->empty() && config_flag->results()[0].empty())
      throw prefixed("--config is empty");
  };
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    return false;
  } catch (const CLI::RequiredError& e) {
    check_extras();  // an unknown flag may be a required one misspelt
    check_config_named();
    for (const CLI::Option* opt : app.get_options())
      if (opt->get_required() && opt->empty())
        throw prefixed(fmt::format("{} is required (see charlm {} --help)", opt->get_name(), command));
    throw prefixed(e.what());
  } catch (const CLI::ArgumentMismatch&) {
    // CLI11 ran out of arguments for a flag's value (the last argument), or read --config twice.
    const CLI::Option* config_flag = app.get_config_ptr();
    if (config_flag != nullptr && config_flag->count() > 1) throw prefixed("--config given twice");
    const std::string last = args.empty() ? std::string() : args.back();
    throw prefixed(fmt::format("{} needs a value", last.substr(0, last.find('='))));
  } catch (const CLI::FileError&) {
    const std::string file = app.get_config_ptr()->results().at(0);
    throw UsageError(
        fmt::format("--config {}: {}", file, files::exists(file) ? "not a readable file" : "no such file"));
  } catch (const CLI::Error& e) {
    throw prefixed(e.what());
  } catch (const UsageError& e) {
    throw from_config_file(e.what(), config);
  }
  check_extras();
  check_config_named();
  return true;
}

// The flags of app given on the command line or in the config file ("--steps", ...).
std::set<std::string> given_flags(const CLI::App& app) {
  std::set<std::string> given;
  for (const CLI::Option* opt : app.get_options())
    if (!opt->empty() && opt != app.get_config_ptr() && !opt->get_name().empty())
      given.insert(opt->get_name());
  return given;
}

// Help as the commands print it: the description (usage and what the command does), each group
// of flags (a flag a line, its help from column 24, its default from column 70), the footer.
std::string format_help(const CLI::App& app) {
  constexpr size_t kHelpColumn = 24, kDefaultColumn = 70;
  std::string text = app.get_description() + "\n\n";
  for (const std::string& group : app.get_groups()) {
    std::string flags;
    for (const CLI::Option* opt : app.get_options()) {
      if (opt->get_group() != group || opt == app.get_help_ptr()) continue;
      std::string name = "  " + opt->get_name();
      if (!opt->get_type_name().empty()) name += " " + opt->get_type_name();
      std::vector<std::string> lines = CLI::detail::split(opt->get_description(), '\n');
      if (opt->get_expected_max() > 0 && !opt->get_default_str().empty()) {
        // on the first line that leaves it room, else on a line of its own
        auto room = std::find_if(lines.begin(), lines.end(), [&](const std::string& line) {
          return kHelpColumn + line.size() + 2 <= kDefaultColumn;
        });
        if (room == lines.end()) room = lines.insert(lines.end(), "");
        *room = fmt::format("{:<{}}[{}]", *room + "  ", kDefaultColumn - kHelpColumn, opt->get_default_str());
      }
      if (name.size() >= kHelpColumn) flags += name + "\n", name.clear();
      for (size_t i = 0; i < lines.size(); ++i)
        flags += fmt::format("{:<{}}{}\n", i == 0 ? name : "", kHelpColumn, lines[i]);
    }
    if (!flags.empty()) text += group + ":\n" + flags;
  }
  if (!app.get_footer().empty()) text += "\n" + app.get_footer() + "\n";
  return text;
}

}  // namespace

TrainInvocation parse_train_args(const std::vector<std::string>& args) {
  TrainInvocation call;
  CLI::App app;
  add_train_flags(app, call.settings);
  ConfigFileValues config;
  call.help = !parse_command(app, args, "train", config);
  if (call.help) return call;
  try {
    call.settings.validate(false);
  } catch (const Error& e) {
    throw from_config_file(e.what(), config);
  }
  call.given = given_flags(app);
  return call;
}

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
  TrainSettings defaults;
  CLI::App app;
  add_train_flags(app, defaults);
  return format_help(app);
}

std::string eval_help() {
  EvalArgs defaults;
  CLI::App app;
  add_eval_flags(app, defaults);
  return format_help(app);
}

std::string sample_help() {
  SampleArgs defaults;
  CLI::App app;
  add_sample_flags(app, defaults);
  return format_help(app);
}

// ============================================================================
// Commands
// ============================================================================

namespace {

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

int train_command(const std::vector<std::string>& args, Console& console) {
  TrainInvocation call = parse_train_args(args);
  if (call.help) {
    console.out << train_help();
    return 0;
  }
  return run_train(call.settings, call.given, console).exit_code;
}

int eval_command(const std::vector<std::string>& args, Console& console) {
  EvalArgs a;
  CLI::App app;
  add_eval_flags(app, a);
  ConfigFileValues no_config;
  if (!parse_command(app, args, "eval", no_config)) {
    console.out << eval_help();
    return 0;
  }
  if (!app.get_option("--threads")->empty()) set_num_threads(static_cast<int>(a.threads));
  std::ostream& human = a.json ? console.err : console.out;

  LoadedModel m = load_model(a.ckpt);
  const std::string text = read_corpus(a.data);
  if (text.size() < 2)
    throw Error(fmt::format("{} has {} byte; evaluation needs at least 2", a.data, text.size()));
  const std::vector<int32_t> ids = m.meta.vocab.encode(text);
  const int64_t unknown = m.meta.vocab.count_unknown(text);
  const int64_t window = a.ctx > 0 ? a.ctx : m.meta.model.ctx;
  // Windows much longer than the trained ctx go through one at a time (their activations grow with it).
  const int64_t batch = std::max<int64_t>(1, 16 * m.meta.model.ctx / window);
  EvalResult r = evaluate_tokens(*m.model, ids, batch, dist::world(), window);
  human << fmt::format(
      "charlm eval: {} (step {}, attn {}, ffn {}, norm {}, {} parameters, windows of {}{}) on {} ({} bytes, "
      "{} "
      "outside the vocabulary)\n",
      m.dir, m.meta.step, m.meta.model.attention, m.meta.model.ffn, m.meta.model.norm,
      human_count(m.model->parameter_count()), window,
      window > m.meta.model.ctx ? fmt::format(", trained at {}", m.meta.model.ctx) : std::string(), a.data,
      human_count(static_cast<int64_t>(text.size())), human_count(unknown));
  human << "  " << metrics_line("eval", r) << "\n";
  human << fmt::format("  {:.1f} s, {} tokens/s\n", r.seconds,
                       human_count(std::llround(static_cast<double>(r.tokens) / std::max(r.seconds, 1e-9))));
  human.flush();
  if (a.json) {
    json::Json j = {{"checkpoint", m.dir},
                    {"step", m.meta.step},
                    {"data", a.data},
                    {"tokens", r.tokens},
                    {"ctx", window},
                    {"trained_ctx", m.meta.model.ctx},
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
  SampleArgs a;
  CLI::App app;
  add_sample_flags(app, a);
  ConfigFileValues no_config;
  if (!parse_command(app, args, "sample", no_config)) {
    console.out << sample_help();
    return 0;
  }
  if (dist::world().size > 1)
    throw UsageError("sample generates one sequence in one process: run it without mpirun");
  if (!app.get_option("--threads")->empty()) set_num_threads(static_cast<int>(a.threads));

  LoadedModel m = load_model(a.ckpt);
  const Vocab& vocab = m.meta.vocab;
  for (size_t i = 0; i < a.prompt.size(); ++i) {
    uint8_t b = static_cast<uint8_t>(a.prompt[i]);
    if (vocab.id_of(b) == kUnknownId)
      throw Error(
          fmt::format("--prompt: {} at offset {} is not in the checkpoint's vocabulary ({} bytes seen in "
                      "training)",
                      byte_description(b), i, vocab.size() - 1));
  }
  Generator gen(*m.model);
  if (a.prompt.empty()) {
    int32_t newline = vocab.id_of('\n');
    gen.feed(newline != kUnknownId ? newline : 1);
  } else {
    for (char c : a.prompt) gen.feed(vocab.id_of(static_cast<uint8_t>(c)));
    console.out << a.prompt << std::flush;
  }
  Rng rng(static_cast<uint64_t>(a.seed));
  for (int64_t i = 0; i < a.tokens; ++i) {
    int32_t id = gen.sample(rng, static_cast<float>(a.temperature), a.top_k);
    console.out << static_cast<char>(vocab.byte_of(id)) << std::flush;
    gen.feed(id);
  }
  console.out << "\n" << std::flush;
  return 0;
}

}  // namespace

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
