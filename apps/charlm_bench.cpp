// apps/charlm_bench.cpp: speed and memory of the char-level LM: training throughput with model FLOP
// utilisation, and generation time per token against position.
//
//   charlm_bench train    [model flags] [--steps N --warmup N --threads N --data PATH --json]
//   charlm_bench generate [model flags] [--positions 100,1000,10000 --threads N --json]
//   charlm_bench peak     [--threads N --size N]
//   mpirun -np K charlm_bench allreduce [--kb 4,64,1024,16384 --reps N]
//
// Figures are medians over the timed steps. "peak" is the machine's measured sgemm rate, the
// denominator of model FLOP utilisation (MFU).
#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "dist/dist.h"
#include "models/charlm.h"
#include "models/charlm_data.h"
#include "optim/adamw.h"
#include "optim/clip.h"

using namespace lg;
using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux reports KiB
}

static double current_rss_mb() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * 4096.0 / (1024.0 * 1024.0);
}

// ---- flags ----------------------------------------------------------------------------------

struct Flags {
  std::map<std::string, std::string> values;
  bool json = false;

  std::string get(const std::string& name, const std::string& fallback) const {
    auto it = values.find(name);
    return it == values.end() ? fallback : it->second;
  }
  int64_t integer(const std::string& name, int64_t fallback) const {
    std::string v = get(name, std::to_string(fallback));
    size_t used = 0;
    long long n = 0;
    try {
      n = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || n < 0) throw Error(fmt::format("--{} {}: expected a non-negative integer", name, v));
    return n;
  }
};

static const char* kHelp = R"(charlm_bench: speed and memory of the char-level LM.

usage:
  charlm_bench train    [model flags] [--steps N=20 --warmup N=3 --threads N --shards N --data PATH
                         --seed N --json]
      Times full training steps (forward, loss, backward, clipping, AdamW) on random windows
      of PATH (random tokens over a 65-symbol vocabulary without --data). Reports the median
      step time, tokens/s, model FLOP/s and its fraction of the measured sgemm peak (MFU),
      and peak RSS. The batch is cut into --shards data-parallel pieces, one per thread
      (default: the thread count, as charlm train does); --shards 1 instead splits each op
      over the threads.
  charlm_bench generate [model flags] [--positions 100,1000,10000 --threads N --json]
      Steps one sequence token by token with the incremental state and reports the median
      time per token around each position, and resident memory there.
  charlm_bench peak     [--threads N --size N=1024]
      The sgemm rate of an N x N x N product: the MFU denominator.
  mpirun -np K charlm_bench allreduce [--kb 4,64,1024,16384 --reps N=30]
      The trainer's gradient all-reduce (dist::GradReducer, one bucket) of each size across
      the ranks: median time, and bus bandwidth 2 (K - 1) / K x bytes / time, the figure that
      the ring all-reduce formula in docs/distributed.md uses.

model flags (defaults: the baseline config):
  --attn KIND (latent)  --ffn KIND (gelu)  --norm KIND (layernorm): the kinds charlm train --help lists
  --layers N (4)  --heads N (4)  --dim N (128)  --ctx N (64)
  --batch N (12)  --latents M (16)  --window W (16)  --chunk C (32)  --recompute 0|1 (0; train only)
)";

static Flags parse_flags(int argc, char** argv, int first) {
  Flags f;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") {
      f.json = true;
    } else if (a == "--help" || a == "-h") {
      fmt::print("{}", kHelp);
      std::exit(0);
    } else if (a.rfind("--", 0) == 0 && i + 1 < argc) {
      // A misspelt flag would otherwise leave its setting at the default, unnoticed.
      static const std::set<std::string> known = {
          "attn",   "ffn",   "norm", "recompute",    "layers", "heads",  "dim",   "ctx",       "batch", "latents", "window",
          "chunk",  "steps", "warmup",  "threads", "shards", "data", "seed", "positions", "size",  "kb", "reps"};
      if (!known.count(a.substr(2))) throw Error(fmt::format("unknown flag '{}' (see --help)", a));
      f.values[a.substr(2)] = argv[++i];
    } else {
      throw Error(fmt::format("unknown or incomplete argument '{}' (see --help)", a));
    }
  }
  return f;
}

static charlm::ModelConfig model_config(const Flags& f, int64_t vocab) {
  charlm::ModelConfig c;
  c.vocab = vocab;
  c.attention = f.get("attn", "latent");
  c.ffn = f.get("ffn", "gelu");
  c.norm = f.get("norm", "layernorm");
  c.layers = f.integer("layers", 4);
  c.heads = f.integer("heads", 4);
  c.dim = f.integer("dim", 128);
  c.ctx = f.integer("ctx", 64);
  c.latents = f.integer("latents", 16);
  c.window = f.integer("window", 16);
  c.validate();
  return c;
}

// ---- sgemm peak -----------------------------------------------------------------------------

static double sgemm_gflops(int64_t n) {
  Rng rng(1);
  Tensor a = randn({n, n}, rng), b = randn({n, n}, rng);
  NoGradGuard no_grad;
  matmul(a, b);  // warm-up: thread pool, page faults
  std::vector<double> rates;
  for (int rep = 0; rep < 7; ++rep) {
    auto t0 = Clock::now();
    Tensor c = matmul(a, b);
    rates.push_back(2.0 * n * n * n / seconds_since(t0) / 1e9);
  }
  return median(rates);
}

// ---- train ----------------------------------------------------------------------------------

// Training FLOPs per token: 6 per parameter (forward 2, backward 4) plus the attention
// scores and mixing, 12 L D x (positions each query touches): T for mha (the square, as in
// nanoGPT's estimate), M + W + C for latent attention (latents, window, the chunk's square).
static double flops_per_token(const charlm::ModelConfig& c, int64_t params, int64_t chunk) {
  double touched = c.attention == "latent"
                       ? static_cast<double>(c.latents + c.window + chunk)
                       : static_cast<double>(c.ctx);
  return 6.0 * static_cast<double>(params) + 12.0 * c.layers * c.dim * touched;
}

static int run_train(const Flags& f) {
  int64_t threads = f.integer("threads", 0);
  set_num_threads(static_cast<int>(threads));
  std::vector<int32_t> ids;
  int64_t vocab = 65;
  if (f.values.count("data")) {
    std::string text = charlm::read_corpus(f.get("data", ""));
    charlm::Vocab v = charlm::Vocab::from_text(text);
    ids = v.encode(text);
    vocab = v.size();
  } else {
    Rng r(7);
    ids.resize(1 << 20);
    for (auto& id : ids) id = static_cast<int32_t>(1 + r.below(vocab - 1));
  }
  charlm::ModelConfig cfg = model_config(f, vocab);
  const nn::BlockConfig& acfg = cfg.block_config();
  int64_t chunk = f.integer("chunk", acfg.chunk);
  int64_t B = f.integer("batch", 12), T = cfg.ctx;
  int64_t steps = f.integer("steps", 20), warmup = f.integer("warmup", 3);
  if (steps == 0 || B == 0) throw Error("--steps and --batch must be positive");
  if (static_cast<int64_t>(ids.size()) < T + 2) throw Error("corpus shorter than --ctx");

  Rng init(f.integer("seed", 0)), data_rng(f.integer("seed", 0) + 1), dropout_rng(3);
  charlm::CharLM model(cfg, init);
  model.recompute = f.integer("recompute", 0) != 0;
  optim::AdamWConfig ocfg;
  ocfg.beta2 = 0.99f;
  ocfg.weight_decay = 0.1f;
  optim::AdamW opt(model.named_parameters(), ocfg);
  std::vector<Tensor> params = model.parameters();
  const int64_t shards = f.integer("shards", get_num_threads());
  charlm::DataParallel parallel(model, shards);
  std::vector<int32_t> x, y;
  std::vector<double> times;
  float last_loss = 0;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    charlm::sample_batch(ids, B, T, data_rng, x, y);
    auto t0 = Clock::now();
    opt.zero_grad();
    last_loss = parallel.forward_backward(x, y, B, T, dropout_rng);
    optim::clip_grad_norm(params, 1.0f);
    opt.step();
    if (s >= warmup) times.push_back(seconds_since(t0));
  }
  double step_s = median(times);
  double tokens_per_s = static_cast<double>(B * T) / step_s;
  double flops = flops_per_token(cfg, model.parameter_count(), chunk) * tokens_per_s;
  double peak = sgemm_gflops(1024) * 1e9;
  double rss = peak_rss_mb();
  if (f.json) {
    fmt::print(
        "{{\"attn\": \"{}\", \"kernels\": \"{}\", \"threads\": {}, \"shards\": {}, \"params\": {}, "
        "\"step_ms\": {:.3f}, \"tokens_per_s\": {:.1f}, "
        "\"model_gflops\": {:.2f}, \"sgemm_peak_gflops\": {:.2f}, \"mfu\": {:.4f}, \"peak_rss_mb\": {:.1f}, "
        "\"loss\": {:.4f}}}\n",
        cfg.attention, cpu_kernels(), get_num_threads(), parallel.shards(),
        model.parameter_count(), step_s * 1e3, tokens_per_s, flops / 1e9, peak / 1e9, flops / peak, rss,
        last_loss);
  } else {
    fmt::print(
        "{} attention, {} layers, dim {}, ctx {}, batch {}, {} parameters, {} threads, {} shards, {} "
        "kernels\n",
        cfg.attention, cfg.layers, cfg.dim, T, B, model.parameter_count(),
        get_num_threads(), parallel.shards(), cpu_kernels());
    fmt::print("  step (median of {}): {:.2f} ms   {:.0f} tokens/s\n", steps, step_s * 1e3, tokens_per_s);
    fmt::print("  model: {:.2f} GFLOP/s of a measured sgemm peak of {:.2f} GFLOP/s: MFU {:.1f}%\n", flops / 1e9,
               peak / 1e9, 100.0 * flops / peak);
    fmt::print("  peak RSS {:.1f} MB\n", rss);
  }
  return 0;
}

// ---- generate -------------------------------------------------------------------------------

static std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    try {
      out.push_back(std::stoll(item));
    } catch (const std::exception&) {
      throw Error(fmt::format("'{}' is not a comma-separated list of integers", s));
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

static int run_generate(const Flags& f) {
  set_num_threads(static_cast<int>(f.integer("threads", 0)));
  std::vector<int64_t> positions = parse_list(f.get("positions", "100,1000,10000"));
  std::sort(positions.begin(), positions.end());
  charlm::ModelConfig cfg = model_config(f, 65);
  Rng init(0), pick(1);
  charlm::CharLM model(cfg, init);
  model.eval();
  NoGradGuard no_grad;
  charlm::CharLM::State state = model.make_state(1);
  constexpr int64_t kWindow = 32;  // tokens timed around each position
  std::vector<std::pair<int64_t, std::pair<double, double>>> rows;
  size_t next = 0;
  std::vector<double> times;
  for (int64_t p = 0; next < positions.size(); ++p) {
    auto t0 = Clock::now();
    model.step({static_cast<int32_t>(1 + pick.below(64))}, state);
    double dt = seconds_since(t0);
    if (p >= positions[next] - kWindow / 2) times.push_back(dt);
    if (p == positions[next] + kWindow / 2) {
      rows.push_back({positions[next], {median(times), current_rss_mb()}});
      times.clear();
      ++next;
    }
  }
  if (f.json) {
    fmt::print("{{\"attn\": \"{}\", \"per_token_us\": {{", cfg.attention);
    for (size_t i = 0; i < rows.size(); ++i)
      fmt::print("{}\"{}\": {:.2f}", i ? ", " : "", rows[i].first, rows[i].second.first * 1e6);
    fmt::print("}}, \"rss_mb\": {{");
    for (size_t i = 0; i < rows.size(); ++i)
      fmt::print("{}\"{}\": {:.1f}", i ? ", " : "", rows[i].first, rows[i].second.second);
    fmt::print("}}}}\n");
  } else {
    fmt::print("{} attention generation, {} layers, dim {}, {} kernels\n",
               cfg.attention, cfg.layers, cfg.dim, cpu_kernels());
    fmt::print("  {:>9}  {:>12}  {:>8}\n", "position", "us/token", "RSS MB");
    for (auto& [pos, r] : rows) fmt::print("  {:>9}  {:>12.2f}  {:>8.1f}\n", pos, r.first * 1e6, r.second);
    fmt::print("  last / first per-token time: {:.2f}x\n", rows.back().second.first / rows.front().second.first);
  }
  return 0;
}

// ---- allreduce ------------------------------------------------------------------------------

static int run_allreduce(const Flags& f) {
  const dist::World& world = dist::world();
  const std::vector<int64_t> sizes_kb = parse_list(f.get("kb", "4,64,1024,16384"));
  const int64_t reps = f.integer("reps", 30);
  if (world.rank == 0)
    fmt::print("all-reduce across {} ranks (one bucket, GradReducer), median of {}:\n  {:>10}  {:>10}  {:>12}\n",
               world.size, reps, "KB", "us", "bus GB/s");
  for (int64_t kb : sizes_kb) {
    Tensor param = Tensor::zeros({std::max<int64_t>(1, kb * 256)}).set_requires_grad();
    accumulate_grad(param, Tensor::ones(param.shape()));
    std::vector<std::vector<Tensor>> sources{{param}};
    dist::GradReducer reducer({param}, kb * 1024 + 1024);
    std::vector<double> times;
    for (int64_t r = 0; r < reps + 3; ++r) {
      dist::barrier();
      auto t0 = Clock::now();
      reducer.begin(sources);
      reducer.grad_ready(0);
      reducer.finish();
      if (r >= 3) times.push_back(seconds_since(t0));
    }
    const double t = median(times), bytes = static_cast<double>(param.numel()) * 4;
    const double bus = 2.0 * (world.size - 1) / world.size * bytes / t / 1e9;
    if (world.rank == 0) fmt::print("  {:>10}  {:>10.1f}  {:>12.2f}\n", kb, t * 1e6, bus);
  }
  return 0;
}

static int bench_main(int argc, char** argv);

int main(int argc, char** argv) {
  dist::init();
  const int code = bench_main(argc, argv);
  dist::finalize();
  return code;
}

static int bench_main(int argc, char** argv) {
  try {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
      fmt::print("{}", kHelp);
      return argc < 2 ? 2 : 0;
    }
    std::string cmd = argv[1];
    Flags f = parse_flags(argc, argv, 2);
    if (cmd == "allreduce") return run_allreduce(f);
    if (dist::world().size > 1)
      throw Error(fmt::format("{} measures one process: run it without mpirun (allreduce is the one command "
                              "for several ranks; bench/dist_scaling.py times charlm train on ranks)",
                              cmd));
    if (cmd == "train") return run_train(f);
    if (cmd == "generate") return run_generate(f);
    if (cmd == "peak") {
      set_num_threads(static_cast<int>(f.integer("threads", 0)));
      int64_t n = f.integer("size", 1024);
      fmt::print("sgemm {}x{}x{}, {} threads: {:.2f} GFLOP/s\n", n, n, n, get_num_threads(), sgemm_gflops(n));
      return 0;
    }
    throw Error(fmt::format("unknown command '{}' (train, generate, peak, allreduce; see --help)", cmd));
  } catch (const std::exception& e) {
    fmt::print(stderr, "charlm_bench: {}\n", e.what());
    return 1;
  }
}
