// models/charlm_checkpoint.cpp: writing, verifying and reading the char LM's checkpoint directories.
#include "models/charlm_checkpoint.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <limits>

#include "core/files.h"
#include "nn/safetensors.h"

namespace lg::charlm {

static constexpr const char* kModelFile = "model.safetensors";
static constexpr const char* kOptimizerFile = "optimizer.safetensors";
static constexpr const char* kMetaFile = "checkpoint.json";
// checkpoint.json is a few KB; anything far larger is not one, and is not read into memory.
static constexpr uint64_t kMaxMetaBytes = 1 << 20;

static json::Json rng_json(const std::array<uint64_t, 4>& s) {
  json::Json v = json::Json::array();
  for (uint64_t w : s) v.push_back(json::hex_u64(w));
  return v;
}

static std::array<uint64_t, 4> rng_from_json(const json::Json& v, const char* what) {
  const auto& words = json::get_array(v, what);
  if (words.size() != 4) throw Error(fmt::format("{} must hold 4 words", what));
  std::array<uint64_t, 4> s{};
  for (size_t i = 0; i < 4; ++i) s[i] = json::parse_hex_u64(json::get_string(words[i], what), what);
  return s;
}

static json::Json file_record(const std::string& path) {
  std::string bytes = files::read_file(path);
  json::Json v = json::Json::object();
  v["bytes"] = bytes.size();
  v["fnv1a64"] = json::hex_u64(files::fnv1a64(bytes));
  return v;
}

void save_checkpoint(const std::string& dir, const CheckpointMeta& meta, const CharLM& model,
                     const optim::AdamW* optimizer) {
  std::string staging = fmt::format("{}.staging.{}", dir, ::getpid());
  files::remove_tree(staging);
  files::ensure_writable_dir(staging);
  try {
    json::Json config = meta.model.to_json();
    nn::save_module(model, staging + "/" + kModelFile,
                    {{"format", "latentgrad-charlm"}, {"config", json::dump(config)}});
    if (optimizer) optimizer->save(staging + "/" + kOptimizerFile);

    json::Json j = json::Json::object();
    j["format"] = "latentgrad-charlm";
    j["format_version"] = kCheckpointFormat;
    j["step"] = meta.step;
    j["model"] = config;
    j["vocab_note"] = "id 0 = unknown byte; id i >= 1 = byte vocab[i - 1]";
    j["vocab"] = meta.vocab.bytes;  // numbers, not a string: the bytes need not be UTF-8
    j["training"] = meta.training;
    j["corpus"] = {{"path", meta.corpus.path},
                   {"bytes", meta.corpus.bytes},
                   {"fnv1a64", json::hex_u64(meta.corpus.fnv1a)}};
    j["rng"] = {{"data", rng_json(meta.data_rng)}, {"dropout", rng_json(meta.dropout_rng)}};
    j["best_val_loss"] = meta.best_val_loss;  // null before any evaluation (infinity)
    j["best_step"] = meta.best_step;
    j["train_seconds"] = meta.train_seconds;
    json::Json& file_list = j["files"] = json::Json::object();
    file_list[kModelFile] = file_record(staging + "/" + kModelFile);
    if (optimizer) file_list[kOptimizerFile] = file_record(staging + "/" + kOptimizerFile);
    files::write_file_atomic(staging + "/" + kMetaFile, json::dump(j, 2) + "\n");
    files::fsync_dir(staging);
    files::replace_dir(staging, dir);
  } catch (...) {
    files::remove_tree(staging);
    throw;
  }
}

static bool has_meta(const std::string& dir) { return files::exists(dir + "/" + kMetaFile); }

std::string resolve_checkpoint_dir(const std::string& path) {
  // replace_dir's fallback leaves only DIR.old for an instant; a crash there leaves it behind
  for (const std::string& dir :
       {path, path + "/best", path + "/latest", path + ".old", path + "/best.old", path + "/latest.old"})
    if (has_meta(dir)) return dir;
  if (!files::exists(path)) throw Error(fmt::format("no checkpoint at {}: no such file or directory", path));
  throw Error(fmt::format("no checkpoint at {}: expected {}/{} (or a run directory with best/ or latest/)",
                          path, path, kMetaFile));
}

CheckpointMeta read_checkpoint_meta(const std::string& dir) {
  CheckpointMeta m;
  try {
    using json::at, json::get_int, json::get_number, json::get_string;
    json::Json j = json::read_file(dir + "/" + kMetaFile, kMaxMetaBytes);
    if (!j.is_object() || !j.contains("format") || get_string(j["format"], "format") != "latentgrad-charlm")
      throw Error("not a latentgrad charlm checkpoint");
    int64_t version = get_int(at(j, "format_version"), "format_version");
    if (version != kCheckpointFormat)
      throw Error(fmt::format("format version {} is not supported (this build reads version {})", version,
                              kCheckpointFormat));
    m.step = get_int(at(j, "step"), "step");
    m.model = ModelConfig::from_json(at(j, "model"));
    std::vector<uint8_t> bytes;
    for (const json::Json& b : json::get_array(at(j, "vocab"), "vocab")) {
      int64_t x = get_int(b, "vocab entry");
      if (x < 0 || x > 255) throw Error(fmt::format("vocab entry {} is not a byte", x));
      bytes.push_back(static_cast<uint8_t>(x));
    }
    m.vocab = Vocab::from_bytes(std::move(bytes));
    if (m.vocab.size() != m.model.vocab)
      throw Error(
          fmt::format("vocab has {} ids but the model config says {}", m.vocab.size(), m.model.vocab));
    m.model.validate();
    m.training = at(j, "training");
    const json::Json& corpus = at(j, "corpus");
    m.corpus.path = get_string(at(corpus, "path"), "corpus.path");
    m.corpus.bytes = get_int(at(corpus, "bytes"), "corpus.bytes");
    m.corpus.fnv1a =
        json::parse_hex_u64(get_string(at(corpus, "fnv1a64"), "corpus.fnv1a64"), "corpus.fnv1a64");
    m.data_rng = rng_from_json(at(at(j, "rng"), "data"), "rng.data");
    m.dropout_rng = rng_from_json(at(at(j, "rng"), "dropout"), "rng.dropout");
    const json::Json& best = at(j, "best_val_loss");
    m.best_val_loss =
        best.is_null() ? std::numeric_limits<double>::infinity() : get_number(best, "best_val_loss");
    m.best_step = get_int(at(j, "best_step"), "best_step");
    m.train_seconds = get_number(at(j, "train_seconds"), "train_seconds");
    // The tensor files must be the ones this metadata was written with.
    const json::Json& file_list = at(j, "files");
    for (const auto& [name, record] : file_list.items()) {
      // Only the checkpoint's own files: another name could point anywhere ("../x", a FIFO, a device).
      if (name != kModelFile && name != kOptimizerFile)
        throw Error(fmt::format("files lists \"{}\"; a checkpoint holds only {} and {}", name, kModelFile,
                                kOptimizerFile));
      std::string path = dir + "/" + name;
      std::string data = files::read_file(path);
      int64_t size = get_int(at(record, "bytes"), "files.bytes");
      if (static_cast<int64_t>(data.size()) != size)
        throw Error(fmt::format("{} has {} bytes, the checkpoint recorded {} (truncated or replaced)", name,
                                data.size(), size));
      if (json::hex_u64(files::fnv1a64(data)) != get_string(at(record, "fnv1a64"), "files.fnv1a64"))
        throw Error(fmt::format("{} does not match its recorded hash (corrupted)", name));
    }
    if (!file_list.contains(kModelFile)) throw Error(fmt::format("no {} recorded", kModelFile));
  } catch (const Error& e) {
    throw Error(fmt::format("checkpoint {} is unusable: {}", dir, e.what()));
  }
  return m;
}

void load_checkpoint_weights(const std::string& dir, CharLM& model) {
  try {
    nn::load_module(model, dir + "/" + kModelFile);
  } catch (const Error& e) {
    throw Error(fmt::format("checkpoint {} is unusable: {}", dir, e.what()));
  }
}

void load_checkpoint_optimizer(const std::string& dir, optim::AdamW& optimizer) {
  try {
    optimizer.load(dir + "/" + kOptimizerFile);
  } catch (const Error& e) {
    throw Error(fmt::format("checkpoint {} is unusable: {}", dir, e.what()));
  }
}

}  // namespace lg::charlm
