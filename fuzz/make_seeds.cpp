// fuzz/make_seeds.cpp: writes valid and near-valid seed inputs for every fuzz target with today's writers.
//
// usage: make_seeds DIR   (writes DIR/fuzz_safetensors/, DIR/fuzz_checkpoint/, DIR/fuzz_corpus/,
// DIR/fuzz_cli/). The committed fuzz/corpus/ is this program's output; scripts/fuzz.sh runs it
// again before every fuzzing run, so the seeds follow the writers when a format changes.
#include <fmt/format.h>

#include <cstdio>

#include "core/files.h"
#include "fuzz/fuzz_files.h"
#include "fuzz/seed_model.h"
#include "models/charlm_checkpoint.h"
#include "models/charlm_train.h"
#include "nn/safetensors.h"

namespace {

using namespace lg;
using fuzzing::fs::path;

std::string read(const path& file) { return files::read_file(file.string()); }

void write(const path& dir, const std::string& name, std::string_view bytes) {
  fuzzing::fs::create_directories(dir);
  fuzzing::write_bytes(dir / name, bytes);
}

void safetensors_seeds(const path& out, const path& scratch) {
  const path dir = out / "fuzz_safetensors";
  fuzzing::TinyModule module;
  nn::save_module(module, (scratch / "tiny").string(), {{"format", "seed"}});
  const std::string tiny = read(scratch / "tiny");
  write(dir, "tiny.safetensors", tiny);
  write(dir, "truncated.safetensors", tiny.substr(0, tiny.size() - 4));
  nn::write_safetensors((scratch / "shapes").string(),
                        {{"scalar", Tensor::full({}, 2.0f)}, {"empty", Tensor::zeros({0, 3})}});
  write(dir, "scalar_and_empty.safetensors", read(scratch / "shapes"));
  nn::write_safetensors((scratch / "none").string(), {});
  write(dir, "no_tensors.safetensors", read(scratch / "none"));
}

void checkpoint_seeds(const path& out, const path& scratch) {
  const path dir = out / "fuzz_checkpoint";
  const std::string sep(fuzzing::kFileSeparator);
  // name, attention, ffn, norm
  const char* kinds[][4] = {{"latent", "latent", "gelu", "layernorm"},
                            {"mha", "mha", "gelu", "layernorm"},
                            {"mla", "mla", "gelu", "layernorm"},
                            {"swiglu_rmsnorm", "latent", "swiglu", "rmsnorm"}};
  for (const auto& [name, attention, ffn, norm] : kinds) {
    charlm::CheckpointMeta meta;
    meta.vocab = charlm::Vocab::from_text("abc");
    meta.model = fuzzing::tiny_model_config(attention, meta.vocab.size());
    meta.model.ffn = ffn;
    meta.model.norm = norm;
    charlm::TrainSettings settings;
    settings.model = meta.model;
    meta.training = settings.to_json();
    meta.corpus = {"corpus.txt", 3, files::fnv1a64("abc")};
    meta.step = 1;
    meta.data_rng = {1, 2, 3, 4};
    meta.dropout_rng = {5, 6, 7, 8};
    meta.best_val_loss = 1.5;
    meta.best_step = 1;
    Rng init(0);
    charlm::CharLM model(meta.model, init);
    optim::AdamW optimizer(model.named_parameters());
    const path ckpt = scratch / name;
    charlm::save_checkpoint(ckpt.string(), meta, model, &optimizer);
    const std::string json = read(ckpt / "checkpoint.json");
    const std::string weights = read(ckpt / "model.safetensors");
    const std::string moments = read(ckpt / "optimizer.safetensors");
    write(dir, fmt::format("{}.ckpt", name), json + sep + weights + sep + moments);
    if (std::string(name) == "latent") {
      write(dir, "no_optimizer.ckpt", json + sep + weights);
      write(dir, "json_only.ckpt", json);
    }
  }
}

void corpus_seeds(const path& out) {
  const path dir = out / "fuzz_corpus";
  write(dir, "split.txt",
        "0.8,0.1,0.1\nthe cat sees the ball. a dog likes the sea.\nthe king keeps a red hat.\n");
  write(dir, "utf8.txt",
        "0.5,0.25,0.25\nna\xc3\xafve caf\xc3\xa9 \xe2\x86\x92 \xf0\x9f\x90\x88 r\xc3\xa9sum\xc3\xa9\n");
  write(dir, "vocab_bytes.txt", std::string("\x01\x02\x03 ABCabc\x7f\x80\xfe\xff", 15));
  write(dir, "one_byte.txt", "x");
}

void cli_seeds(const path& out) {
  const path dir = out / "fuzz_cli";
  auto args = [](std::initializer_list<std::string_view> list) {
    std::string joined;
    for (std::string_view a : list) (joined += a) += '\0';
    return joined;
  };
  write(dir, "minimal.args", args({"--data", "a.txt", "--out", "run"}));
  write(dir, "model.args",
        args({"--data",   "a.txt", "--out",      "run", "--attn",    "mla", "--layers",  "2",
              "--heads",  "2",     "--dim",      "32",  "--ctx",     "16",  "--kv-rank", "8",
              "--q-rank", "8",     "--rope-dim", "4",   "--dropout", "0.1"}));
  write(dir, "training.args",
        args({"--data=a.txt", "--out=run", "--steps",        "10",          "--lr",           "3e-4",
              "--min-lr",     "1e-5",      "--warmup",       "2",           "--weight-decay", "0",
              "--grad-clip",  "0.5",       "--split",        "0.8,0.1,0.1", "--seed",         "7",
              "--eval-every", "5",         "--eval-batches", "2",           "--log-every",    "1",
              "--threads",    "1",         "--bucket-mb",    "0.5",         "--no-overlap",   "--json",
              "--resume"}));
  write(dir, "latent.args",
        args({"--data", "a.txt", "--out", "run", "--attn", "latent", "--latents", "4", "--window", "0"}));
  write(dir, "help.args", args({"--help"}));
  write(dir, "bad_value.args", args({"--data", "a.txt", "--out", "run", "--steps", "-1"}));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  try {
    const path out = argv[1];
    const path& scratch = fuzzing::scratch().fresh();
    safetensors_seeds(out, scratch);
    checkpoint_seeds(out, scratch);
    corpus_seeds(out);
    cli_seeds(out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
