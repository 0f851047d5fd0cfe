// models/charlm_settings.cpp: the declarations of every `charlm train` setting, and the checkpoint JSON they
// drive.
#include "models/charlm_settings.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "core/precision.h"
#include "nn/kinds.h"

namespace lg::charlm {

int64_t to_int(const std::string& flag, const std::string& text) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size())
    throw UsageError(fmt::format("{}: '{}' is not an integer", flag, text));
  return v;
}

double to_real(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v) || std::isspace(static_cast<unsigned char>(text[0])))
    throw UsageError(fmt::format("{}: '{}' is not a finite number", flag, text));
  return v;
}

namespace {

// ---- where a setting's value lives ----------------------------------------------------------

template <class T>
using Field = std::function<T&(TrainSettings&)>;

template <class T>
Field<T> run(T TrainSettings::*member) {
  return [member](TrainSettings& s) -> T& { return s.*member; };
}
template <class T>
Field<T> model(T ModelConfig::*member) {
  return [member](TrainSettings& s) -> T& { return s.model.*member; };
}
template <class T>
Field<T> model(T nn::BlockConfig::*member) {  // the fields ModelConfig has from nn::BlockConfig
  return [member](TrainSettings& s) -> T& { return s.model.*member; };
}
// Reads a field of a const TrainSettings (the accessors above take a mutable one).
template <class T>
const T& value_of(const Field<T>& field, const TrainSettings& s) {
  return field(const_cast<TrainSettings&>(s));
}

// ---- ranges ---------------------------------------------------------------------------------

constexpr double kInf = std::numeric_limits<double>::infinity();

// A range of real values, with the words its error uses.
struct Range {
  double low = -kInf, high = kInf;
  bool low_open = false, high_open = false;
  std::string note;  // after the range in the error: " (0 = off)"

  bool contains(double v) const {
    return std::isfinite(v) && (low_open ? v > low : v >= low) && (high_open ? v < high : v <= high);
  }
  std::string words() const {
    if (low == 0 && low_open && high == kInf) return "a positive number";
    if (high == kInf) return fmt::format(">= {}", low);
    return fmt::format("in {}{}, {}{}", low_open ? '(' : '[', low, high, high_open ? ')' : ']');
  }
};
Range at_least(double low, std::string note = "") { return Range{low, kInf, false, false, std::move(note)}; }
Range positive() { return Range{0, kInf, true, false, ""}; }
Range between(double low, double high, bool high_open) { return Range{low, high, false, high_open, ""}; }

// ---- the declarations -----------------------------------------------------------------------

// Appends settings to the list, each in the current group and scope.
class Declare {
 public:
  explicit Declare(std::vector<Setting>& out) : out_(out) {}

  void group(std::string title, Scope scope) {
    group_ = std::move(title);
    scope_ = scope;
  }

  // An integer of at least `min` (1: "must be a positive integer"; otherwise ">= min").
  Setting& integer(const std::string& name, Field<int64_t> field, const char* placeholder,
                   const std::string& help, int64_t min, const std::string& note = "") {
    Setting& s = add(name, placeholder, help);
    const std::string flag = s.flag();
    s.text = [field](const TrainSettings& t) { return fmt::format("{}", value_of(field, t)); };
    s.parse = [field, flag](TrainSettings& t, const std::string& text) { field(t) = to_int(flag, text); };
    s.check = [field, flag, min, note](const TrainSettings& t) {
      const int64_t v = value_of(field, t);
      if (v >= min) return;
      if (min == 1) throw Error(fmt::format("{} must be a positive integer, got {}", flag, v));
      throw Error(fmt::format("{} must be >= {}{}, got {}", flag, min, note, v));
    };
    s.to_json = [field](const TrainSettings& t) { return json::Json(value_of(field, t)); };
    s.from_json = [field](TrainSettings& t, const json::Json& v, const std::string& where) {
      field(t) = json::get_int(v, where);
    };
    s.copy = [field](TrainSettings& to, const TrainSettings& from) { field(to) = value_of(field, from); };
    return s;
  }

  // A real number (double or float field) within `range`.
  template <class T>
  Setting& real(const std::string& name, Field<T> field, const char* placeholder, const std::string& help,
                Range range) {
    Setting& s = add(name, placeholder, help);
    const std::string flag = s.flag();
    s.text = [field](const TrainSettings& t) { return fmt::format("{}", value_of(field, t)); };
    s.parse = [field, flag](TrainSettings& t, const std::string& text) {
      field(t) = static_cast<T>(to_real(flag, text));
    };
    s.check = [field, flag, range](const TrainSettings& t) {
      const double v = static_cast<double>(value_of(field, t));
      if (!range.contains(v))
        throw Error(fmt::format("{} must be {}{}, got {}", flag, range.words(), range.note, v));
    };
    s.to_json = [field](const TrainSettings& t) {
      return json::Json(static_cast<double>(value_of(field, t)));
    };
    s.from_json = [field](TrainSettings& t, const json::Json& v, const std::string& where) {
      field(t) = static_cast<T>(json::get_number(v, where));
    };
    s.copy = [field](TrainSettings& to, const TrainSettings& from) { field(to) = value_of(field, from); };
    return s;
  }

  // The kind of a block part, one of `table`'s names; its help lists them with theirs.
  template <class Part>
  Setting& kind(const std::string& name, const std::string& model_key, Field<std::string> field,
                const nn::KindTable<Part>& table) {
    std::string help = table.part() + " kind:";
    for (const nn::Kind<Part>& k : table.kinds()) help += fmt::format("\n  {:<9} {}", k.name, k.help);
    Setting& s = add(name, "KIND", help);
    s.model_key = model_key;
    const std::string flag = s.flag();
    s.text = [field](const TrainSettings& t) { return value_of(field, t); };
    s.parse = [field](TrainSettings& t, const std::string& text) { field(t) = text; };
    s.check = [field, flag, &table](const TrainSettings& t) {
      try {
        table.find(value_of(field, t));
      } catch (const Error& e) {
        throw Error(fmt::format("{}: {}", flag, e.what()));
      }
    };
    s.to_json = [field](const TrainSettings& t) { return json::Json(value_of(field, t)); };
    s.from_json = [field, &table](TrainSettings& t, const json::Json& v, const std::string& where) {
      const std::string& name = json::get_string(v, where);
      try {
        field(t) = table.find(name).name;
      } catch (const Error& e) {
        throw Error(fmt::format("{}: {}", where, e.what()));
      }
    };
    s.copy = [field](TrainSettings& to, const TrainSettings& from) { field(to) = value_of(field, from); };
    return s;
  }

  // A text that must be given and may not be empty.
  Setting& required_text(const std::string& name, Field<std::string> field, const char* placeholder,
                         const std::string& help) {
    Setting& s = add(name, placeholder, help);
    s.required = true;
    const std::string flag = s.flag();
    s.text = [field](const TrainSettings& t) { return value_of(field, t); };
    s.parse = [field, flag](TrainSettings& t, const std::string& text) {
      if (text.empty()) throw UsageError(fmt::format("{} is empty", flag));
      field(t) = text;
    };
    s.check = [](const TrainSettings&) {};
    s.to_json = [field](const TrainSettings& t) { return json::Json(value_of(field, t)); };
    s.from_json = [field](TrainSettings& t, const json::Json& v, const std::string& where) {
      field(t) = json::get_string(v, where);
    };
    s.copy = [field](TrainSettings& to, const TrainSettings& from) { field(to) = value_of(field, from); };
    return s;
  }

  // A switch: given, it sets the field to `on`.
  Setting& on_off(const std::string& name, Field<bool> field, const std::string& help, bool on = true) {
    Setting& s = add(name, "", help);
    s.text = [field, on](const TrainSettings& t) { return value_of(field, t) == on ? "true" : "false"; };
    s.parse = [field, on](TrainSettings& t, const std::string& text) {
      field(t) = text == "true" ? on : !on;
    };
    s.check = [](const TrainSettings&) {};
    s.to_json = [field, on](const TrainSettings& t) { return json::Json(value_of(field, t) == on); };
    s.from_json = [field, on](TrainSettings& t, const json::Json& v, const std::string& where) {
      if (!v.is_boolean()) throw Error(fmt::format("{} must be true or false", where));
      field(t) = v.get<bool>() ? on : !on;
    };
    s.copy = [field](TrainSettings& to, const TrainSettings& from) { field(to) = value_of(field, from); };
    return s;
  }

  // A setting of its own type: text and parse given, JSON as its text.
  Setting& custom(const std::string& name, const char* placeholder, const std::string& help,
                  std::function<std::string(const TrainSettings&)> text,
                  std::function<void(TrainSettings&, const std::string&)> parse,
                  std::function<void(const TrainSettings&)> check,
                  std::function<void(TrainSettings&, const TrainSettings&)> copy) {
    Setting& s = add(name, placeholder, help);
    s.text = text;
    s.parse = parse;
    s.check = std::move(check);
    s.to_json = [text](const TrainSettings& t) { return json::Json(text(t)); };
    s.from_json = [parse](TrainSettings& t, const json::Json& v, const std::string& where) {
      try {
        parse(t, json::get_string(v, where));
      } catch (const Error& e) {
        throw Error(fmt::format("{}: {}", where, e.what()));
      }
    };
    s.copy = std::move(copy);
    return s;
  }

 private:
  Setting& add(const std::string& name, const char* placeholder, const std::string& help) {
    Setting s;
    s.name = name;
    s.group = group_;
    s.scope = scope_;
    s.placeholder = placeholder;
    s.help = help;
    if (scope_ == Scope::Model) s.model_key = name;
    out_.push_back(std::move(s));
    return out_.back();
  }

  std::vector<Setting>& out_;
  std::string group_;
  Scope scope_ = Scope::Run;
};

std::vector<Setting> declare_train_settings() {
  std::vector<Setting> all;
  Declare d(all);

  d.group("data and output", Scope::Command);
  d.required_text("data", run(&TrainSettings::data), "PATH", "corpus text file (required)");
  d.required_text("out", run(&TrainSettings::out), "DIR",
                  "run directory (required; must not hold a run unless --resume)");
  d.group("data and output", Scope::Run);
  d.custom(
      "split", "A,B,C", "train,val,test fractions, each > 0, sum 1",
      [](const TrainSettings& t) { return split_str(t.split); },
      [](TrainSettings& t, const std::string& text) {
        try {
          t.split = parse_split(text);
        } catch (const UsageError&) {
          throw;
        } catch (const Error& e) {
          throw UsageError(e.what());
        }
      },
      [](const TrainSettings&) {},  // parse_split checks
      [](TrainSettings& to, const TrainSettings& from) { to.split = from.split; });
  d.group("data and output", Scope::Command);
  d.on_off("resume", run(&TrainSettings::resume),
           "continue the run in DIR exactly where its latest checkpoint stopped;\n"
           "only these may differ from the saved run:\n"
           "{resumable}");
  d.on_off("json", run(&TrainSettings::json),
           "print one JSON object with the final metrics on stdout\n"
           "(the human-readable report goes to stderr)");

  d.group("model", Scope::Model);
  d.kind("attn", "attention", model(&nn::BlockConfig::attention), nn::attention_kinds());
  d.kind("ffn", "ffn", model(&nn::BlockConfig::ffn), nn::feed_forward_kinds());
  d.kind("norm", "norm", model(&nn::BlockConfig::norm), nn::norm_kinds());
  d.integer("layers", model(&nn::BlockConfig::layers), "N", "transformer blocks", 1);
  d.integer("heads", model(&nn::BlockConfig::heads), "N", "attention heads", 1);
  d.integer("dim", model(&nn::BlockConfig::dim), "N", "model width; dim/heads must be even (RoPE)", 1);
  d.integer("ctx", model(&ModelConfig::ctx), "N", "context length (training window)", 1);
  d.integer("latents", model(&nn::BlockConfig::latents), "M", "latent attention: latent bank size", 1);
  d.integer("window", model(&nn::BlockConfig::window), "W", "latent attention: recent positions attended", 0);
  d.integer("kv-rank", model(&nn::BlockConfig::kv_rank), "N", "mla: cached KV latent size (0 = dim/2)", 0)
      .model_key = "kv_rank";
  d.integer("q-rank", model(&nn::BlockConfig::q_rank), "N", "mla: query compression rank (0 = none)", 0)
      .model_key = "q_rank";
  d.integer("rope-dim", model(&nn::BlockConfig::rope_dim), "N", "mla: rotary key size per head (0 = head/2)",
            0)
      .model_key = "rope_dim";
  d.real("dropout", model(&nn::BlockConfig::dropout), "P", "dropout probability in [0, 1)",
         between(0, 1, true));

  d.group("optimization (AdamW; warmup then cosine decay to --min-lr)", Scope::Run);
  d.integer("steps", run(&TrainSettings::steps), "N", "optimizer steps", 1).scope = Scope::Session;
  d.integer("batch", run(&TrainSettings::batch), "N", "sequences per micro-batch (per step without --accum)",
            1);
  d.integer("accum", run(&TrainSettings::accum), "N",
            "micro-batches per optimizer step: their gradients are averaged,\n"
            "as one step on a batch of N x --batch sequences (long contexts\n"
            "at --batch 1 get a sane effective batch in the memory of one)",
            1);
  d.real("lr", run(&TrainSettings::lr), "X", "peak learning rate", positive());
  d.real("min-lr", run(&TrainSettings::min_lr), "X", "final learning rate", at_least(0));
  d.integer("warmup", run(&TrainSettings::warmup), "N", "linear warmup steps (at most --steps)", 0);
  d.real("weight-decay", run(&TrainSettings::weight_decay), "X", "decoupled decay of weight matrices",
         at_least(0));
  d.real("grad-clip", run(&TrainSettings::grad_clip), "X", "max global gradient norm (0 = off)",
         at_least(0, " (0 = off)"));
  d.real("beta1", run(&TrainSettings::beta1), "X", "AdamW: decay of the gradient mean", between(0, 1, true));
  d.real("beta2", run(&TrainSettings::beta2), "X", "AdamW: decay of the squared-gradient mean",
         between(0, 1, true));

  d.group("optimization (AdamW; warmup then cosine decay to --min-lr)", Scope::Session);
  d.on_off("recompute", run(&TrainSettings::recompute),
           "keep only each block's input and run the block again in backward:\n"
           "the same gradients, bit for bit, in less memory (long contexts)");
  d.custom(
      "precision", "P",
      "matrix products of the linear layers (the tied output head too) and of\n"
      "MHA's attention core: fp32, or bf16 (mixed precision: bf16 inputs,\n"
      "fp32 sums; weights, gradients, AdamW, norms, softmax, the latent scan\n"
      "and checkpoints stay fp32). bf16 needs a CPU with AVX512-BF16; it\n"
      "trains to fp32's loss, 1.6-1.8x faster on the 10.7M model\n"
      "(configs/char_10m.toml), 1.2-1.5x on the default one (README:\n"
      "Training speed); fp32 stays the default",
      [](const TrainSettings& t) { return t.precision; },
      [](TrainSettings& t, const std::string& text) {
        try {
          t.precision = precision_name(parse_precision(text));
        } catch (const Error& e) {
          throw UsageError(fmt::format("--precision: {}", e.what()));
        }
      },
      [](const TrainSettings& t) { parse_precision(t.precision); },
      [](TrainSettings& to, const TrainSettings& from) { to.precision = from.precision; });

  d.group("evaluation and logging", Scope::Session);
  d.integer("eval-every", run(&TrainSettings::eval_every), "N",
            "estimate train/val loss, save; every N steps", 1);
  d.integer("eval-batches", run(&TrainSettings::eval_batches), "N", "batches per estimate", 1);
  d.integer("log-every", run(&TrainSettings::log_every), "N", "progress line every N steps (not a terminal)",
            1);
  d.group("evaluation and logging", Scope::Run);
  Setting& seed = d.custom(
      "seed", "N", "seed of initialisation, batches and dropout",
      [](const TrainSettings& t) { return fmt::format("{}", t.seed); },
      [](TrainSettings& t, const std::string& text) {
        const int64_t seed = to_int("--seed", text);
        if (seed < 0) throw UsageError(fmt::format("--seed must be >= 0, got {}", seed));
        t.seed = static_cast<uint64_t>(seed);
      },
      [](const TrainSettings& t) {
        if (t.seed > (1ull << 53)) throw Error(fmt::format("--seed must be at most 2^53, got {}", t.seed));
      },
      [](TrainSettings& to, const TrainSettings& from) { to.seed = from.seed; });
  seed.to_json = [](const TrainSettings& t) { return json::Json(static_cast<int64_t>(t.seed)); };
  seed.from_json = [](TrainSettings& t, const json::Json& v, const std::string& where) {
    const int64_t seed = json::get_int(v, where);
    if (seed < 0) throw Error(fmt::format("{} must be >= 0, got {}", where, seed));
    t.seed = static_cast<uint64_t>(seed);
  };
  d.group("evaluation and logging", Scope::Session);
  d.integer("threads", run(&TrainSettings::threads), "N",
            "OpenMP/BLAS threads (0 = OMP_NUM_THREADS)\n"
            "Each step cuts the batch into one shard per thread, run side by\n"
            "side (data parallel). A run is bitwise reproducible for a given\n"
            "thread count; another count changes the float rounding only.",
            0, " (0 = OMP_NUM_THREADS)");

  d.group("several processes or machines (started by mpirun; see the README and below)", Scope::Command);
  d.real("bucket-mb", run(&TrainSettings::bucket_mb), "X",
         "gradients all-reduced in buckets of about X MB, each as soon\n"
         "as backward has produced it",
         Range{0, 1024, true, false, ""});
  d.on_off("no-overlap", run(&TrainSettings::overlap),
           "all-reduce after backward instead (slower; for measuring)", false);

  return all;
}

// "--a, --b and --c": the settings --resume lets change.
std::string session_flags(const std::vector<Setting>& settings) {
  std::vector<std::string> names;
  for (const Setting& s : settings)
    if (s.scope == Scope::Session) names.push_back(s.flag());
  std::string list;
  for (size_t i = 0; i < names.size(); ++i)
    list += (i == 0 ? "" : i + 1 == names.size() ? " and " : ", ") + names[i];
  return list;
}

}  // namespace

const std::vector<Setting>& train_settings() {
  static const std::vector<Setting> all = [] {
    std::vector<Setting> settings = declare_train_settings();
    const std::string list = session_flags(settings);  // known once every setting is declared
    for (Setting& s : settings)
      if (size_t at = s.help.find("{resumable}"); at != std::string::npos) s.help.replace(at, 11, list);
    return settings;
  }();
  return all;
}

const Setting* find_setting(const std::string& name) {
  for (const Setting& s : train_settings())
    if (s.name == name) return &s;
  return nullptr;
}

std::string resumable_flags() { return session_flags(train_settings()); }

// ============================================================================
// What the declarations drive: validation and the checkpoint's JSON
// ============================================================================

void TrainSettings::validate(bool vocab_known) const {
  for (const Setting& s : train_settings())
    if (s.scope != Scope::Model) s.check(*this);
  if (min_lr > lr) throw Error(fmt::format("--min-lr {} is above --lr {}", min_lr, lr));
  ModelConfig m = model;
  if (!vocab_known) m.vocab = 256;  // checked later, once the training split is read
  m.validate();
}

json::Json TrainSettings::to_json() const {
  json::Json v = json::Json::object();
  for (const Setting& s : train_settings())
    if (s.saved()) v[s.name] = s.to_json(*this);
  return v;
}

TrainSettings TrainSettings::from_json(const json::Json& v) {
  TrainSettings t;
  if (!v.is_object()) throw Error("training must be an object");
  for (const auto& [key, value] : v.items()) {
    const Setting* s = find_setting(key);
    if (s == nullptr || !s->saved())
      throw Error(
          fmt::format("training.{}: not a setting of this build (a newer build wrote the checkpoint?)", key));
    s->from_json(t, value, "training." + key);
  }
  return t;
}

// The model section also records what the code fixes rather than a flag, so that it describes
// the model in full.
void ModelConfig::validate() const {
  if (vocab < 2)
    throw Error(fmt::format("vocabulary of {} ids is too small (needs at least one byte)", vocab));
  TrainSettings t;
  t.model = *this;
  for (const Setting& s : train_settings())
    if (s.scope == Scope::Model) s.check(t);
  if (dim % heads != 0) throw Error(fmt::format("--dim {} is not divisible by --heads {}", dim, heads));
  if ((dim / heads) % 2 != 0)
    throw Error(fmt::format("head size --dim / --heads = {} / {} = {} is odd; RoPE needs an even head size",
                            dim, heads, dim / heads));
  if (attention == "mla") {
    if (rope_dim % 2 != 0)
      throw Error(fmt::format("--rope-dim {} is odd; RoPE needs an even size", rope_dim));
    if (rope_dim == 0 && (dim / heads / 2) % 2 != 0)
      throw Error(fmt::format(
          "--attn mla: the default --rope-dim (head size / 2 = {}) is odd; give an even --rope-dim",
          dim / heads / 2));
  }
}

json::Json ModelConfig::to_json() const {
  TrainSettings t;
  t.model = *this;
  json::Json v = {{"vocab", vocab}};
  for (const Setting& s : train_settings())
    if (s.scope == Scope::Model) v[s.model_key] = s.to_json(t);
  v["bias"] = bias;
  v["rope_base"] = static_cast<double>(rope_base);
  v["chunk"] = chunk;
  v["layer_norm_eps"] = norm_eps;  // of either norm kind (the name is from before rmsnorm)
  return v;
}

ModelConfig ModelConfig::from_json(const json::Json& v) {
  if (!v.is_object()) throw Error("model must be an object");
  TrainSettings t;  // every setting at its default
  for (const auto& [key, value] : v.items()) {
    const std::string where = "model." + key;
    if (key == "vocab") {
      t.model.vocab = json::get_int(value, where);
    } else if (key == "bias") {
      if (!value.is_boolean()) throw Error(fmt::format("{} must be true or false", where));
      t.model.bias = value.get<bool>();
    } else if (key == "rope_base") {
      t.model.rope_base = static_cast<float>(json::get_number(value, where));
    } else if (key == "chunk") {
      t.model.chunk = json::get_int(value, where);
    } else if (key == "layer_norm_eps") {
      t.model.norm_eps = json::get_number(value, where);
    } else {
      const Setting* found = nullptr;
      for (const Setting& s : train_settings())
        if (s.scope == Scope::Model && s.model_key == key) found = &s;
      if (found == nullptr)
        throw Error(
            fmt::format("{}: not a setting of this build (a newer build wrote the checkpoint?)", where));
      found->from_json(t, value, where);
    }
  }
  json::at(v, "vocab");  // the one key without a default
  return t.model;
}

}  // namespace lg::charlm
