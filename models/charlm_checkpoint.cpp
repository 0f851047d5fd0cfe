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

static json::Value rng_json(const std::array<uint64_t, 4>& s) {
  json::Value v = json::Value::array();
  for (uint64_t w : s) v.push(json::hex_u64(w));
  return v;
}

static std::array<uint64_t, 4> rng_from_json(const json::Value& v, const char* what) {
  const auto& words = v.as_array(what);
  if (words.size() != 4) throw Error(fmt::format("{} must hold 4 words", what));
  std::array<uint64_t, 4> s{};
  for (size_t i = 0; i < 4; ++i) s[i] = json::parse_hex_u64(words[i].as_string(what), what);
  return s;
}

static json::Value file_record(const std::string& path) {
  std::string bytes = files::read_file(path);
  json::Value v = json::Value::object();
  v.set("bytes", static_cast<int64_t>(bytes.size()));
  v.set("fnv1a64", json::hex_u64(files::fnv1a64(bytes)));
  return v;
}

void save_checkpoint(const std::string& dir, const CheckpointMeta& meta, const CharLM& model,
                     const optim::AdamW* optimizer) {
  std::string staging = fmt::format("{}.staging.{}", dir, ::getpid());
  files::remove_tree(staging);
  files::ensure_writable_dir(staging);
  try {
    json::Value config = meta.model.to_json();
    nn::save_module(model, staging + "/" + kModelFile,
                    {{"format", "latentgrad-charlm"}, {"config", config.dump()}});
    if (optimizer) optimizer->save(staging + "/" + kOptimizerFile);

    json::Value j = json::Value::object();
    j.set("format", "latentgrad-charlm");
    j.set("format_version", kCheckpointFormat);
    j.set("step", meta.step);
    j.set("model", config);
    json::Value vocab = json::Value::array();
    for (uint8_t b : meta.vocab.bytes) vocab.push(static_cast<int64_t>(b));
    j.set("vocab_note", "id 0 = unknown byte; id i >= 1 = byte vocab[i - 1]");
    j.set("vocab", vocab);
    j.set("training", meta.training);
    json::Value corpus = json::Value::object();
    corpus.set("path", meta.corpus.path);
    corpus.set("bytes", meta.corpus.bytes);
    corpus.set("fnv1a64", json::hex_u64(meta.corpus.fnv1a));
    j.set("corpus", corpus);
    json::Value rng = json::Value::object();
    rng.set("data", rng_json(meta.data_rng));
    rng.set("dropout", rng_json(meta.dropout_rng));
    j.set("rng", rng);
    j.set("best_val_loss",
          std::isfinite(meta.best_val_loss) ? json::Value(meta.best_val_loss) : json::Value());
    j.set("best_step", meta.best_step);
    j.set("train_seconds", meta.train_seconds);
    json::Value file_list = json::Value::object();
    file_list.set(kModelFile, file_record(staging + "/" + kModelFile));
    if (optimizer) file_list.set(kOptimizerFile, file_record(staging + "/" + kOptimizerFile));
    j.set("files", file_list);
    files::write_file_atomic(staging + "/" + kMetaFile, j.dump(2) + "\n");
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
  std::string meta_path = dir + "/" + kMetaFile;
  std::string text = files::read_file(meta_path);
  CheckpointMeta m;
  try {
    json::Value j = json::parse(text);
    if (!j.is_object() || !j.contains("format") || j.at("format").as_string("format") != "latentgrad-charlm")
      throw Error("not a latentgrad charlm checkpoint");
    int64_t version = j.at("format_version").as_int("format_version");
    if (version != kCheckpointFormat)
      throw Error(fmt::format("format version {} is not supported (this build reads version {})", version,
                              kCheckpointFormat));
    m.step = j.at("step").as_int("step");
    m.model = ModelConfig::from_json(j.at("model"));
    std::vector<uint8_t> bytes;
    for (const auto& b : j.at("vocab").as_array("vocab")) {
      int64_t x = b.as_int("vocab entry");
      if (x < 0 || x > 255) throw Error(fmt::format("vocab entry {} is not a byte", x));
      bytes.push_back(static_cast<uint8_t>(x));
    }
    m.vocab = Vocab::from_bytes(std::move(bytes));
    if (m.vocab.size() != m.model.vocab)
      throw Error(
          fmt::format("vocab has {} ids but the model config says {}", m.vocab.size(), m.model.vocab));
    m.model.validate();
    m.training = j.at("training");
    const json::Value& corpus = j.at("corpus");
    m.corpus.path = corpus.at("path").as_string("corpus.path");
    m.corpus.bytes = corpus.at("bytes").as_int("corpus.bytes");
    m.corpus.fnv1a = json::parse_hex_u64(corpus.at("fnv1a64").as_string("corpus.fnv1a64"), "corpus.fnv1a64");
    m.data_rng = rng_from_json(j.at("rng").at("data"), "rng.data");
    m.dropout_rng = rng_from_json(j.at("rng").at("dropout"), "rng.dropout");
    const json::Value& best = j.at("best_val_loss");
    m.best_val_loss =
        best.is_null() ? std::numeric_limits<double>::infinity() : best.as_number("best_val_loss");
    m.best_step = j.at("best_step").as_int("best_step");
    m.train_seconds = j.at("train_seconds").as_number("train_seconds");
    // The tensor files must be the ones this metadata was written with.
    for (const auto& [name, record] : j.at("files").items()) {
      // Only the checkpoint's own files: another name could point anywhere ("../x", a FIFO, a device).
      if (name != kModelFile && name != kOptimizerFile)
        throw Error(fmt::format("files lists \"{}\"; a checkpoint holds only {} and {}", name, kModelFile,
                                kOptimizerFile));
      std::string path = dir + "/" + name;
      std::string data = files::read_file(path);
      int64_t size = record.at("bytes").as_int("files.bytes");
      if (static_cast<int64_t>(data.size()) != size)
        throw Error(fmt::format("{} has {} bytes, the checkpoint recorded {} (truncated or replaced)", name,
                                data.size(), size));
      if (json::hex_u64(files::fnv1a64(data)) != record.at("fnv1a64").as_string("files.fnv1a64"))
        throw Error(fmt::format("{} does not match its recorded hash (corrupted)", name));
    }
    if (!j.at("files").contains(kModelFile)) throw Error(fmt::format("no {} recorded", kModelFile));
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
