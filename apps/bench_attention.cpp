// apps/bench_attention.cpp: forward+backward and step() times of MHA, MLA and latent attention against T.
//
// Training: median over repetitions of forward + backward of one attention layer on (1, T, D).
// Quadratic attention (MHA, MLA) costs O(T) per token; latent attention O(C + M + W), so its
// per-token time should stay flat as T grows. Generation: median time of one step() at
// positions near 100 and near T (latent attention's state does not grow; the caches do).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/precision.h"
#include "nn/kinds.h"
#include "nn/latent_attention.h"

using namespace lg;

namespace {

struct Options {
  std::vector<int64_t> lengths = {256, 1024, 4096};
  int64_t dim = 128, heads = 4, latents = 16, chunk = 32, window = 16;
  int reps = 5, steps = 32, threads = 1;
  bool generation = true;
  Precision precision = Precision::fp32;
  std::string kinds;  // empty: every variant; else a comma list of mha, mla, latent, latent-chunked
};

void usage() {
  fmt::print(
      "usage: bench_attention [options]\n"
      "Times forward+backward of one attention layer on a (1, T, D) batch for MHA, MLA and latent\n"
      "attention (W = 0 and W > 0; fused and chunked cores), then the time per generation step()\n"
      "at positions ~100 and ~T.\n"
      "  --ctx LIST      comma-separated sequence lengths T (default 256,1024,4096; --T is the same)\n"
      "  --dim D         model width (default 128)\n"
      "  --heads H       heads (default 4)\n"
      "  --latents M     latents of latent attention (default 16)\n"
      "  --window W      window of the windowed latent variant (default 16)\n"
      "  --chunk C       chunk length of latent attention's chunked core (default 32)\n"
      "  --reps N        timed repetitions per cell, the median is printed (default 5)\n"
      "  --steps N       generation steps timed per position (default 32)\n"
      "  --threads N     OpenMP/BLAS threads (default 1: per-token scaling is the point, and on a\n"
      "                  shared machine two threads waiting on each other distort the timings;\n"
      "                  0 = as OMP_NUM_THREADS says; with more than one, OMP_WAIT_POLICY=passive\n"
      "                  keeps OpenMP's idle threads from starving OpenBLAS's)\n"
      "  --kinds LIST    only these: a comma list of mha, mla, latent, latent-chunked (default: all)\n"
      "  --precision P   fp32 (default) or bf16: mixed precision as charlm train --precision runs it\n"
      "                  (the projections' products and MHA's attention core in bf16; needs AVX512-BF16)\n"
      "  --no-generation skip the step() timings\n"
      "  --help          this text\n");
}

std::vector<int64_t> parse_list(const char* text) {
  std::vector<int64_t> out;
  std::string s(text);
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) comma = s.size();
    out.push_back(std::stoll(s.substr(start, comma - start)));
    start = comma + 1;
  }
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        fmt::print(stderr, "bench_attention: {} needs a value\n", a);
        std::exit(2);
      }
      return argv[++i];
    };
    try {
      if (a == "--help" || a == "-h") {
        usage();
        std::exit(0);
      } else if (a == "--ctx" || a == "--T") {
        o.lengths = parse_list(value());
      } else if (a == "--dim") {
        o.dim = std::stoll(value());
      } else if (a == "--heads") {
        o.heads = std::stoll(value());
      } else if (a == "--latents") {
        o.latents = std::stoll(value());
      } else if (a == "--window") {
        o.window = std::stoll(value());
      } else if (a == "--chunk") {
        o.chunk = std::stoll(value());
      } else if (a == "--reps") {
        o.reps = std::stoi(value());
      } else if (a == "--steps") {
        o.steps = std::stoi(value());
      } else if (a == "--threads") {
        o.threads = std::stoi(value());
      } else if (a == "--kinds") {
        o.kinds = value();
      } else if (a == "--precision") {
        o.precision = parse_precision(value());
      } else if (a == "--no-generation") {
        o.generation = false;
      } else {
        fmt::print(stderr, "bench_attention: unknown option '{}' (see --help)\n", a);
        std::exit(2);
      }
    } catch (const std::logic_error&) {
      fmt::print(stderr, "bench_attention: bad value for {}\n", a);
      std::exit(2);
    } catch (const lg::Error& e) {
      fmt::print(stderr, "bench_attention: {}\n", e.what());
      std::exit(2);
    }
  }
  bool bad = o.lengths.empty() || o.reps < 1 || o.steps < 1 || o.dim < 1 || o.heads < 1;
  for (int64_t T : o.lengths) bad = bad || T < 1;
  if (bad) {
    fmt::print(stderr, "bench_attention: lengths, reps, steps, dim and heads must be positive\n");
    std::exit(2);
  }
  return o;
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Variant {
  std::string label;
  nn::BlockConfig config;
  bool chunked_core = false;  // latent attention: the composed chunked path instead of the fused op
  bool generation = true;     // step() is the same for both latent cores: time it once
};

std::vector<Variant> variants(const Options& o) {
  nn::BlockConfig c;
  c.dim = o.dim;
  c.heads = o.heads;
  c.layers = 4;
  c.latents = o.latents;
  c.chunk = o.chunk;
  std::vector<Variant> out;
  c.attention = "mha";
  out.push_back({"mha", c});
  c.attention = "mla";
  out.push_back({"mla", c});
  c.attention = "latent";
  for (int64_t w : {int64_t{0}, o.window}) {
    c.window = w;
    out.push_back({fmt::format("latent W={}", w), c});
    out.push_back({fmt::format("latent W={} chunked", w), c, true, false});
  }
  if (o.kinds.empty()) return out;
  std::vector<Variant> chosen;
  const std::string list = "," + o.kinds + ",";
  for (Variant& v : out)
    if (list.find("," + v.config.attention + (v.chunked_core ? "-chunked," : ",")) != std::string::npos)
      chosen.push_back(std::move(v));
  return chosen;
}

std::shared_ptr<nn::Attention> build(const Variant& v) {
  Rng rng(0);
  auto layer = nn::make_attention(v.config, rng);
  if (v.chunked_core) dynamic_cast<nn::LatentAttention&>(*layer).core = nn::LatentAttention::Core::Chunked;
  return layer;
}

// Median ms of forward + backward on (1, T, D).
double time_train(nn::Attention& layer, int64_t T, int64_t D, int reps) {
  Rng rng(1);
  Tensor x = randn({1, T, D}, rng);
  x.set_requires_grad(true);
  Tensor grad = randn({1, T, D}, rng);
  std::vector<double> times;
  for (int r = 0; r <= reps; ++r) {  // r = 0 warms up (allocator, BLAS threads)
    layer.zero_grad();
    x.zero_grad();
    double t0 = now_ms();
    Tensor y = layer.forward(x);
    y.backward(grad);
    double t1 = now_ms();
    if (r > 0) times.push_back(t1 - t0);
  }
  return median(times);
}

// Median ms of one step() at positions [from, from + steps), after stepping there.
struct StepTimes {
  double near_start = 0, near_end = 0;
};
StepTimes time_generation(nn::Attention& layer, int64_t T, int64_t D, int steps) {
  NoGradGuard no_grad;
  layer.eval();
  Rng rng(2);
  Tensor x = randn({1, 1, D}, rng);
  auto state = layer.make_state(1);
  const int64_t early = std::min<int64_t>(100, T), late = std::max<int64_t>(early + steps, T);
  std::vector<double> a, b;
  for (int64_t p = 0; p < late + steps; ++p) {
    double t0 = now_ms();
    layer.step(x, *state);
    double dt = now_ms() - t0;
    if (p >= early && p < early + steps) a.push_back(dt);
    if (p >= late) b.push_back(dt);
  }
  layer.train();
  return {median(a), median(b)};
}

}  // namespace

static int run(const Options& o);

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  try {
    return run(o);
  } catch (const lg::Error& e) {
    fmt::print(stderr, "bench_attention: {}\n", e.what());
    return 1;
  }
}

static int run(const Options& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  require_precision_available(o.precision);
  const PrecisionGuard precision(o.precision);
  std::vector<Variant> kinds = variants(o);
  fmt::print("attention forward+backward, batch 1, D={}, H={}, M={}, C={}, threads {}, {}, median of {}\n\n",
             o.dim, o.heads, o.latents, o.chunk, get_num_threads(), precision_name(o.precision), o.reps);

  // One row per kind, one column per T, then the growth of the per-token time.
  std::string header = fmt::format("{:<20}", "kind");
  for (int64_t T : o.lengths) header += fmt::format(" | {:>21}", fmt::format("T={} ms (ms/token)", T));
  if (o.lengths.size() > 1)
    header += fmt::format(" | {:>13}", fmt::format("{}/{}", o.lengths.back(), o.lengths.front()));
  fmt::print("{}\n{}\n", header, std::string(header.size(), '-'));
  for (const Variant& v : kinds) {
    std::string row = fmt::format("{:<20}", v.label);
    std::vector<double> per_token;
    for (int64_t T : o.lengths) {
      auto layer = build(v);
      double ms = time_train(*layer, T, o.dim, o.reps);
      per_token.push_back(ms / static_cast<double>(T));
      row += fmt::format(" | {:>9.2f} ({:>9.5f})", ms, per_token.back());
    }
    if (per_token.size() > 1) row += fmt::format(" | {:>12.2f}x", per_token.back() / per_token.front());
    fmt::print("{}\n", row);
    std::fflush(stdout);
  }

  if (o.generation) {
    fmt::print("\ngeneration: median ms per step() over {} steps, batch 1\n\n", o.steps);
    std::string gh = fmt::format("{:<20}", "kind");
    for (int64_t T : o.lengths) gh += fmt::format(" | {:>21}", fmt::format("T={}: pos ~100 / ~T", T));
    fmt::print("{}\n{}\n", gh, std::string(gh.size(), '-'));
    for (const Variant& v : kinds) {
      if (!v.generation) continue;
      std::string row = fmt::format("{:<20}", v.label);
      for (int64_t T : o.lengths) {
        auto layer = build(v);
        StepTimes st = time_generation(*layer, T, o.dim, o.steps);
        row += fmt::format(" | {:>9.4f} / {:>9.4f}", st.near_start, st.near_end);
      }
      fmt::print("{}\n", row);
      std::fflush(stdout);
    }
  }
  return 0;
}
