// apps/charlm_bench.cpp: speed and memory of the char-level LM: training throughput with model FLOP
// utilisation, and generation time per token against position.
//
//   charlm_bench train    [model flags] [--steps N --warmup N --threads N --data PATH --json]
//   charlm_bench sweep    [--ctx LIST --kinds LIST --batch N --threads N --steps N --rounds N --recompute 0|1]
//   charlm_bench generate [model flags] [--positions 100,1000,10000 --threads N --json]
//   charlm_bench peak     [--threads N --size N --json]
//   charlm_bench gemm     [--shapes MxNxK:tt,... --variants naive,packed,... --threads N --json]
//   mpirun -np K charlm_bench allreduce [--kb 4,64,1024,16384 --reps N]
//
// Figures are medians over the timed steps. "peak" measures what the cores can do: the fp32 FMA
// and bf16 dot-product rates of register-only loops, and the sgemm rate, the denominator of
// model FLOP utilisation (MFU). "gemm" times the bf16 GEMM (core/gemm_bf16.h) step by step.
#include <cpuid.h>
#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/blas.h"
#include "core/cpu.h"
#include "core/gemm_bf16.h"
#include "core/intrinsics.h"
#include "core/json_io.h"
#include "core/precision.h"
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

// The time a piece of work got on the CPU rather than on the wall clock, for a machine shared
// with other jobs: the calling thread's CPU time when it works alone, else the process's
// divided by the thread count (time spent waiting for a preempted thread at a barrier counts,
// time spent preempted does not). `--clock cpu` selects it; the default is the wall clock.
struct WorkClock {
  bool cpu = false;
  int threads = 1;
  double now() const {
    if (!cpu) return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
    timespec ts{};
    clock_gettime(threads == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec)) / threads;
  }
};

static bool cpu_clock(const std::string& name) {
  if (name != "wall" && name != "cpu") throw Error(fmt::format("--clock {}: expected wall or cpu", name));
  return name == "cpu";
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
                         --seed N --precision fp32|bf16 --json]
      Times full training steps (forward, loss, backward, clipping, AdamW) on random windows
      of PATH (random tokens over a 65-symbol vocabulary without --data). Reports the median
      step time, tokens/s, model FLOP/s and its fraction (MFU) of the hardware's peak (one
      core's register-only peak, as `peak` measures it, times the threads: the fp32 FMA peak,
      or the bf16 dot peak under --precision bf16) and of the measured sgemm rate of the BLAS
      in use, and peak RSS. The batch is cut into --shards data-parallel pieces, one per thread
      (default: the thread count, as charlm train does); --shards 1 instead splits each op
      over the threads.
  charlm_bench sweep    [--ctx 256,1024,4096,16384,65536 --kinds latent,latent-w0,mha,mla --batch N=12
                         --threads N=2 --steps N=3 --rounds N=1 --recompute 0|1 --max-step-s S=120]
      The long-context table: `train` (the baseline model otherwise) for each attention kind at
      each ctx, each cell in a fresh process so that its peak RSS is its own; batch --batch at
      the shortest ctx, 1 above. latent-w0 is latent attention with --window 0. With --rounds R
      each cell is the median of R runs, the rounds interleaved over the cells. A cell whose
      step would take longer than --max-step-s, predicted from the kind's previous ctx (ctx^2
      for mha and mla, ctx for latent), is skipped and marked so; a run that fails (out of
      memory, say) marks its cell and the kind's longer contexts. The last column is the
      growth of peak RSS per token between the two longest batch-1 contexts measured.
  charlm_bench generate [model flags] [--positions 100,1000,10000 --threads N --json]
      Steps one sequence token by token with the incremental state and reports the median
      time per token around each position, and resident memory there.
  charlm_bench peak     [--threads N --size N=1024 --clock wall|cpu --json]
      What the CPU can do, on one core and on N threads: the fp32 FMA peak (a register-only
      loop of vfmadd231ps on zmm), the bf16 dot-product peak (the same with vdpbf16ps; reported
      unavailable without AVX512-BF16), and the sgemm rate of an N x N x N product (the MFU
      denominator) with the OpenBLAS kernels it names.
  charlm_bench gemm     [--shapes MxNxK:tt,... --variants LIST --threads N --reps N=7 --clock wall|cpu --json]
      GFLOP/s of C (M x N) = op(A) op(B) with K the summed dimension; ":nt" after a shape says
      which operands are transposed (A, then B; default nn). The default shapes are the 10.7M
      model's products (4096 rows: its qkv, output, and feed-forward layers; forward nt,
      input gradient nn, weight gradient tn) and 1536^3. Variants, the steps of the bf16
      kernel's construction: naive (the scalar reference), packed (packing and micro-kernel,
      one block of the whole product, one thread), blocked (+ cache blocks, one thread),
      threads (+ N threads: gemm_bf16 as it runs), and sgemm1, sgemm (fp32 as matmul and
      linear run it, one and N threads: tall products in bands of rows, one OpenBLAS call
      each) and openblas (one OpenBLAS call, threaded by OpenBLAS). Default:
      packed,blocked,threads,sgemm. Each as a share of the measured bf16 dot peak of as many
      threads.
  --clock cpu (peak, gemm): rates per second of CPU time the work got (one thread's, or the
      process's over the thread count) instead of per wall-clock second: on a machine shared
      with other jobs, time spent preempted does not count. (The sgemm of peak: wall clock.)
  --mc N --kc N --nc N (gemm): the cache blocks of the blocked and threads variants
      (default: gemm_bf16's own, core/gemm_bf16.cpp).
  mpirun -np K charlm_bench allreduce [--kb 4,64,1024,16384 --reps N=30]
      The trainer's gradient all-reduce (dist::GradReducer, one bucket) of each size across
      the ranks: median time, and bus bandwidth 2 (K - 1) / K x bytes / time, the figure that
      the ring all-reduce formula in docs/distributed.md uses.

model flags (defaults: the baseline config):
  --attn KIND (latent)  --ffn KIND (gelu)  --norm KIND (layernorm): the kinds charlm train --help lists
  --layers N (4)  --heads N (4)  --dim N (128)  --ctx N (64)
  --batch N (12)  --latents M (16)  --window W (16)  --chunk C (32)  --recompute 0|1 (0; train only)
  --precision fp32|bf16 (fp32; train only): linear's products in bf16 mixed precision (charlm train --help)
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
          "attn",   "ffn",   "norm",    "recompute", "layers", "heads",  "dim",   "ctx",       "batch", "latents",
          "window", "chunk", "steps",   "warmup",  "threads", "shards", "data", "seed", "positions", "size",
          "kb",     "reps",  "shapes",  "variants", "clock", "mc",     "kc",   "nc",   "kinds", "rounds",
          "max-step-s", "precision"};
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

// ---- hardware peaks ---------------------------------------------------------------------------

// The CPU's name as the kernel reports it, to print next to every figure.
static std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

// Register-only loops: 24 independent chains of one instruction, enough to cover its latency
// (4-6 cycles) times its throughput (2 per cycle) twice over, so the loop runs at the units'
// issue rate, with no load or store inside. Written in assembly because the compiler, given
// the same loop in intrinsics, keeps the accumulators in memory. The registers hold zeros, so
// no denormal or overflow slows an instruction. Compiled for AVX-512 by attribute (which the
// zmm16-23 clobbers need; the portable build's baseline flags do not allow it) and called only
// where the CPU has the instructions.
#define LG_X4(op, a, b, c, d) op(a) op(b) op(c) op(d)
#define LG_X24(op)                                                                                  \
  LG_X4(op, 0, 1, 2, 3) LG_X4(op, 4, 5, 6, 7) LG_X4(op, 8, 9, 10, 11) LG_X4(op, 12, 13, 14, 15) \
  LG_X4(op, 16, 17, 18, 19) LG_X4(op, 20, 21, 22, 23)
#define LG_ZERO(r) "vpxord %%zmm" #r ", %%zmm" #r ", %%zmm" #r "\n\t"
#define LG_FMA(r) "vfmadd231ps %%zmm31, %%zmm30, %%zmm" #r "\n\t"
#define LG_DPBF16(r) "vdpbf16ps %%zmm31, %%zmm30, %%zmm" #r "\n\t"
#define LG_CLOBBERS                                                                                       \
  "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", \
      "zmm13", "zmm14", "zmm15", "zmm16", "zmm17", "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23",    \
      "zmm30", "zmm31", "cc"
constexpr int kAccumulators = 24;

__attribute__((target("avx512f"))) static void fma_loop(int64_t iterations) {
  asm volatile(LG_X24(LG_ZERO) LG_ZERO(30) LG_ZERO(31)  //
               "1:\n\t" LG_X24(LG_FMA) "dec %0\n\t"
               "jnz 1b\n\t"
               : "+r"(iterations)
               :
               : LG_CLOBBERS);
}

__attribute__((target("avx512f,avx512bf16"))) static void bf16_dot_loop(int64_t iterations) {
  asm volatile(LG_X24(LG_ZERO) LG_ZERO(30) LG_ZERO(31)  //
               "1:\n\t" LG_X24(LG_DPBF16) "dec %0\n\t"
               "jnz 1b\n\t"
               : "+r"(iterations)
               :
               : LG_CLOBBERS);
}

// GFLOP/s of one of the loops on `threads` threads, each running it to the end; median of 7.
// An FMA on 16 floats is 32 FLOPs; a vdpbf16ps is 16 lanes x 2 products x 2 = 64.
static double loop_gflops(void (*loop)(int64_t), double flops_per_instruction, int threads, bool cpu) {
  const int64_t iterations = 20'000'000;
  const WorkClock clock{cpu, threads};
  std::vector<double> rates;
  for (int rep = 0; rep < 8; ++rep) {  // the first round starts the threads and is not counted
    const double t0 = clock.now();
#pragma omp parallel num_threads(threads)
    loop(iterations);
    const double t = clock.now() - t0;
    if (rep > 0) rates.push_back(threads * flops_per_instruction * kAccumulators * iterations / t / 1e9);
  }
  return median(rates);
}

static bool cpu_has_avx512f() { return __builtin_cpu_supports("avx512f"); }

// AVX512-BF16 is CPUID leaf 7, subleaf 1, EAX bit 5. Asked here rather than through
// gemm_bf16_available(), which a portable build's LATENTGRAD_ISA=generic also turns off.
static bool cpu_has_avx512_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return cpu_has_avx512f() && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5)) != 0;
}

// The fp32 FMA and bf16 dot peaks; nullopt where the CPU lacks the instructions.
static std::optional<double> fma_peak(int threads, bool cpu) {
  if (!cpu_has_avx512f()) return std::nullopt;
  return loop_gflops(fma_loop, 32, threads, cpu);
}
static std::optional<double> bf16_peak(int threads, bool cpu) {
  if (!cpu_has_avx512_bf16()) return std::nullopt;
  return loop_gflops(bf16_dot_loop, 64, threads, cpu);
}

static std::string text_of(std::optional<double> gflops) {
  return gflops ? fmt::format("{:8.1f} GFLOP/s", *gflops) : std::string("   unavailable on this CPU");
}
static std::string json_of(std::optional<double> gflops) {
  return gflops ? fmt::format("{:.2f}", *gflops) : std::string("null");
}

static int run_peak(const Flags& f) {
  set_num_threads(static_cast<int>(f.integer("threads", 0)));
  const int threads = get_num_threads();
  const int64_t n = f.integer("size", 1024);
  const bool cpu = cpu_clock(f.get("clock", "wall"));
  const auto fma1 = fma_peak(1, cpu), fma_n = fma_peak(threads, cpu);
  const auto bf1 = bf16_peak(1, cpu), bf_n = bf16_peak(threads, cpu);
  set_num_threads(1);
  const double sgemm1 = sgemm_gflops(n);
  set_num_threads(threads);
  const double sgemm_n = sgemm_gflops(n);
  if (f.json) {
    fmt::print(
        "{{\"cpu\": \"{}\", \"clock\": \"{}\", \"threads\": {}, \"blas_core\": \"{}\", \"fma_peak_gflops_per_core\": {}, "
        "\"fma_peak_gflops\": {}, \"bf16_dot_peak_gflops_per_core\": {}, \"bf16_dot_peak_gflops\": {}, "
        "\"sgemm_size\": {}, \"sgemm_gflops_per_core\": {:.2f}, \"sgemm_gflops\": {:.2f}}}\n",
        cpu_name(), cpu ? "cpu" : "wall", threads, blas_corename(), json_of(fma1), json_of(fma_n), json_of(bf1), json_of(bf_n), n, sgemm1,
        sgemm_n);
  } else {
    fmt::print("{}, OpenBLAS kernels: {}, {} clock\n", cpu_name(), blas_corename(), cpu ? "CPU" : "wall");
    fmt::print("  {:<34} {:>24} {:>24}\n", "", "1 core", fmt::format("{} threads", threads));
    fmt::print("  {:<34} {:>24} {:>24}\n", "fp32 FMA peak (vfmadd231ps zmm)", text_of(fma1), text_of(fma_n));
    fmt::print("  {:<34} {:>24} {:>24}\n", "bf16 dot peak (vdpbf16ps zmm)", text_of(bf1), text_of(bf_n));
    fmt::print("  {:<34} {:>24} {:>24}\n", fmt::format("sgemm {}x{}x{}", n, n, n), text_of(sgemm1),
               text_of(sgemm_n));
  }
  return 0;
}

// ---- gemm -----------------------------------------------------------------------------------

struct GemmShape {
  int64_t M, N, K;
  bool ta = false, tb = false;
  std::string label;
};

// The 10.7M model (dim 384, batch 16 x ctx 256 = 4096 rows): each linear layer's forward
// y = x W^T (nt), input gradient dx = dy W (nn) and weight gradient dW = dy^T x (tn); and 1536^3.
static std::vector<GemmShape> model_shapes() {
  std::vector<GemmShape> shapes;
  const int64_t rows = 4096;
  const std::pair<const char*, std::pair<int64_t, int64_t>> layers[] = {
      {"qkv", {384, 1152}}, {"attn out", {384, 384}}, {"ffn up", {384, 1536}}, {"ffn down", {1536, 384}}};
  for (const auto& [name, io] : layers) {
    const auto [in, out] = io;
    shapes.push_back({rows, out, in, false, true, fmt::format("{} fwd", name)});
    shapes.push_back({rows, in, out, false, false, fmt::format("{} dx", name)});
    shapes.push_back({out, in, rows, true, false, fmt::format("{} dW", name)});
  }
  shapes.push_back({1536, 1536, 1536, false, false, "square"});
  return shapes;
}

static std::vector<GemmShape> parse_shapes(const std::string& spec) {
  std::vector<GemmShape> shapes;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = spec.find(',', start);
    const std::string item = spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    GemmShape s;
    char t[3] = {'n', 'n', 0};
    long long m = 0, n = 0, k = 0;
    const int got = std::sscanf(item.c_str(), "%lldx%lldx%lld:%2c", &m, &n, &k, t);
    if ((got != 3 && got != 4) || m <= 0 || n <= 0 || k <= 0 || (t[0] != 'n' && t[0] != 't') ||
        (t[1] != 'n' && t[1] != 't'))
      throw Error(fmt::format("--shapes: '{}' is not MxNxK or MxNxK:tt (t or n for A and B)", item));
    s.M = m, s.N = n, s.K = k, s.ta = t[0] == 't', s.tb = t[1] == 't';
    s.label = item;
    shapes.push_back(s);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return shapes;
}

static int run_gemm(const Flags& f) {
  set_num_threads(static_cast<int>(f.integer("threads", 0)));
  const int threads = get_num_threads();
  const int64_t reps = std::max<int64_t>(1, f.integer("reps", 7));
  const std::vector<GemmShape> shapes = f.values.count("shapes") ? parse_shapes(f.get("shapes", "")) : model_shapes();
  std::vector<std::string> variants;
  for (const std::string& v : [&] {
         std::vector<std::string> out;
         std::string list = f.get("variants", "packed,blocked,threads,sgemm");
         for (size_t a = 0, b; a <= list.size(); a = b + 1) {
           b = list.find(',', a);
           if (b == std::string::npos) b = list.size();
           out.push_back(list.substr(a, b - a));
         }
         return out;
       }()) {
    static const std::set<std::string> known = {"naive", "packed", "blocked", "threads",
                                                "sgemm1", "sgemm", "openblas"};
    if (!known.count(v))
      throw Error(
          fmt::format("--variants: unknown '{}' (naive, packed, blocked, threads, sgemm1, sgemm, openblas)", v));
    const bool bf16 = v != "sgemm1" && v != "sgemm" && v != "openblas";
    if (bf16 && v != "naive" && !gemm_bf16_available())
      throw Error(fmt::format("--variants {}: the bf16 kernel cannot run here (no AVX512-BF16, or "
                              "LATENTGRAD_ISA=generic); naive and sgemm run anywhere",
                              v));
    variants.push_back(v);
  }
  const bool cpu = cpu_clock(f.get("clock", "wall"));
  const auto peak1 = bf16_peak(1, cpu), peak_n = bf16_peak(threads, cpu);

  std::string json_rows;
  if (!f.json) {
    fmt::print("{}, OpenBLAS kernels: {}, {} clock; bf16 dot peak {} (1 core), {} ({} threads)\n", cpu_name(),
               blas_corename(), cpu ? "CPU" : "wall", text_of(peak1), text_of(peak_n), threads);
    fmt::print("GFLOP/s (share of the bf16 dot peak of as many threads), median of up to {}:\n", reps);
    fmt::print("  {:<14} {:>16}", "product", "M x N x K op");
    for (const auto& v : variants) fmt::print(" {:>15}", v);
    fmt::print("\n");
  }
  for (const GemmShape& s : shapes) {
    Rng rng(1);
    Tensor a = randn({s.ta ? s.K : s.M, s.ta ? s.M : s.K}, rng), b = randn({s.tb ? s.N : s.K, s.tb ? s.K : s.N}, rng);
    Tensor c = Tensor::zeros({s.M, s.N});
    const int64_t lda = a.shape()[1], ldb = b.shape()[1];
    const double flops = 2.0 * s.M * s.N * s.K;
    if (!f.json)
      fmt::print("  {:<14} {:>16}", s.label, fmt::format("{}x{}x{} {}{}", s.M, s.N, s.K, s.ta ? 't' : 'n', s.tb ? 't' : 'n'));
    std::string json_variants;
    for (const std::string& v : variants) {
      int used_threads = threads;
      std::function<void()> run;
      if (v == "naive") {
        used_threads = 1;
        run = [&] { gemm_bf16_reference(s.ta, s.tb, s.M, s.N, s.K, a.data(), lda, b.data(), ldb, c.data(), s.N, false); };
      } else if (v == "packed" || v == "blocked" || v == "threads") {
        GemmBf16Blocking blocking = v == "packed" ? GemmBf16Blocking{} : gemm_bf16_default_blocking();
        if (v != "packed") {
          blocking.mc = f.integer("mc", blocking.mc);
          blocking.kc = f.integer("kc", blocking.kc);
          blocking.nc = f.integer("nc", blocking.nc);
        }
        blocking.threads = v == "threads" ? threads : 1;
        used_threads = blocking.threads;
        run = [&, blocking] {
          gemm_bf16_blocked(blocking, s.ta, s.tb, s.M, s.N, s.K, a.data(), lda, b.data(), ldb, c.data(), s.N, false);
        };
      } else if (v == "openblas") {
        used_threads = threads;
        run = [&] { sgemm_whole(s.ta, s.tb, s.M, s.N, s.K, a.data(), lda, b.data(), ldb, 0.0f, c.data(), s.N); };
      } else {
        used_threads = v == "sgemm1" ? 1 : threads;
        run = [&] { sgemm(s.ta, s.tb, s.M, s.N, s.K, a.data(), lda, b.data(), ldb, 0.0f, c.data(), s.N); };
      }
      set_num_threads(used_threads);
      // Calls for a quarter of a second first, untimed (page faults, thread start, and the clock of
      // a core that was idle: on a shared 2-core AMD EPYC the first product of a list measured
      // 40-50% of the peak over 5 calls and 82% over 30), then as many more as fit in about a
      // second. A call of over a second (the naive loops) is its own measurement.
      const WorkClock clock{cpu, used_threads};
      const double warm_start = clock.now();
      double t0 = 0.0, first = 0.0;
      do {
        t0 = clock.now();
        run();
        first = clock.now() - t0;
      } while (first < 1.0 && clock.now() - warm_start < 0.25);
      const int64_t n = first >= 1.0 ? 0 : std::clamp<int64_t>(static_cast<int64_t>(1.0 / first), 1, reps);
      std::vector<double> rates;
      if (n == 0) rates.push_back(flops / first / 1e9);
      for (int64_t r = 0; r < n; ++r) {
        t0 = clock.now();
        run();
        rates.push_back(flops / (clock.now() - t0) / 1e9);
      }
      set_num_threads(threads);
      const double rate = median(rates);
      const auto& peak = used_threads == 1 ? peak1 : peak_n;
      if (f.json) {
        json_variants += fmt::format("{}\"{}\": {:.2f}", json_variants.empty() ? "" : ", ", v, rate);
      } else {
        fmt::print(" {:>15}", peak ? fmt::format("{:.1f} ({:.0f}%)", rate, 100.0 * rate / *peak) : fmt::format("{:.1f}", rate));
        std::fflush(stdout);
      }
    }
    if (f.json)
      json_rows += fmt::format("{}{{\"product\": \"{}\", \"M\": {}, \"N\": {}, \"K\": {}, \"op\": \"{}{}\", \"gflops\": {{{}}}}}",
                               json_rows.empty() ? "" : ", ", s.label, s.M, s.N, s.K, s.ta ? 't' : 'n', s.tb ? 't' : 'n',
                               json_variants);
    else
      fmt::print("\n");
  }
  if (f.json)
    fmt::print("{{\"cpu\": \"{}\", \"clock\": \"{}\", \"threads\": {}, \"blas_core\": \"{}\", \"bf16_dot_peak_gflops_per_core\": {}, "
               "\"bf16_dot_peak_gflops\": {}, \"products\": [{}]}}\n",
               cpu_name(), cpu ? "cpu" : "wall", threads, blas_corename(), json_of(peak1), json_of(peak_n), json_rows);
  return 0;
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
  const Precision precision = parse_precision(f.get("precision", "fp32"));
  require_precision_available(precision);
  const PrecisionGuard precision_scope(precision);
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
  // The hardware's limit: one core's register-only peak times the threads (a measurement on all
  // threads at once would count the other jobs of a shared machine against the CPU). A bf16 run
  // is measured against the bf16 dot peak, an fp32 run against the fp32 FMA peak.
  const int threads_used = get_num_threads();
  const std::optional<double> hw_core = precision == Precision::bf16 ? bf16_peak(1, false) : fma_peak(1, false);
  const double hw_peak = hw_core ? *hw_core * 1e9 * threads_used : 0;
  const std::string hw_name = precision == Precision::bf16 ? "bf16 dot" : "fp32 FMA";
  double rss = peak_rss_mb();
  if (f.json) {
    fmt::print(
        "{{\"attn\": \"{}\", \"kernels\": \"{}\", \"threads\": {}, \"shards\": {}, \"params\": {}, "
        "\"step_ms\": {:.3f}, \"tokens_per_s\": {:.1f}, "
        "\"model_gflops\": {:.2f}, \"sgemm_peak_gflops\": {:.2f}, \"mfu\": {:.4f}, "
        "\"hw_peak\": \"{}\", \"hw_peak_gflops\": {}, \"mfu_hw\": {}, \"peak_rss_mb\": {:.1f}, "
        "\"loss\": {:.4f}, \"precision\": \"{}\", \"blas_core\": \"{}\"}}\n",
        cfg.attention, cpu_kernels(), get_num_threads(), parallel.shards(),
        model.parameter_count(), step_s * 1e3, tokens_per_s, flops / 1e9, peak / 1e9, flops / peak, hw_name,
        hw_core ? fmt::format("{:.2f}", hw_peak / 1e9) : "null",
        hw_core ? fmt::format("{:.4f}", flops / hw_peak) : "null", rss, last_loss, precision_name(precision),
        blas_corename());
  } else {
    fmt::print(
        "{} attention, {} layers, dim {}, ctx {}, batch {}, {} parameters, {} threads, {} shards, {} "
        "kernels, {}\n",
        cfg.attention, cfg.layers, cfg.dim, T, B, model.parameter_count(),
        get_num_threads(), parallel.shards(), cpu_kernels(), precision_name(precision));
    fmt::print("  step (median of {}): {:.2f} ms   {:.0f} tokens/s\n", steps, step_s * 1e3, tokens_per_s);
    fmt::print("  model: {:.2f} GFLOP/s of a measured sgemm peak of {:.2f} GFLOP/s ({} kernels): MFU {:.1f}%\n",
               flops / 1e9, peak / 1e9, blas_corename(), 100.0 * flops / peak);
    if (hw_core)
      fmt::print("  against the hardware: {:.1f}% of the {} peak, {:.1f} GFLOP/s ({} x {:.1f} on one core)\n",
                 100.0 * flops / hw_peak, hw_name, hw_peak / 1e9, threads_used, *hw_core);
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

static std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  for (size_t start = 0;;) {
    const size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
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

// ---- sweep ----------------------------------------------------------------------------------

// `train` for every attention kind at every ctx, each cell in a process of its own (so that its
// peak RSS is its own), run as this executable's `train --json`.
static int run_sweep(const Flags& f, const std::string& self) {
  struct Kind {
    std::string label, flags;
  };
  static const std::vector<Kind> known = {{"latent", "--attn latent"},
                                          {"latent-w0", "--attn latent --window 0"},
                                          {"mha", "--attn mha"},
                                          {"mla", "--attn mla"}};
  std::vector<Kind> kinds;
  for (const std::string& label : split_list(f.get("kinds", "latent,latent-w0,mha,mla"))) {
    auto it = std::find_if(known.begin(), known.end(), [&](const Kind& k) { return k.label == label; });
    if (it == known.end())
      throw Error(fmt::format("--kinds: unknown kind '{}' (latent, latent-w0, mha, mla)", label));
    kinds.push_back(*it);
  }
  std::vector<int64_t> ctxs = parse_list(f.get("ctx", "256,1024,4096,16384,65536"));
  std::sort(ctxs.begin(), ctxs.end());
  const int64_t first_batch = f.integer("batch", 12), threads = f.integer("threads", 2);
  const int64_t steps = f.integer("steps", 3), rounds = f.integer("rounds", 1), recompute = f.integer("recompute", 0);
  const double max_step_s = static_cast<double>(f.integer("max-step-s", 120));
  if (ctxs.empty() || ctxs.front() < 2 || steps < 1 || rounds < 1 || first_batch < 1)
    throw Error("sweep: --ctx values of at least 2, and positive --steps, --rounds and --batch");

  struct Cell {
    std::vector<double> tokens_per_s, rss_mb;
    double skipped_step_s = 0;  // > 0: predicted too slow, not run
    bool failed = false;        // the run exited non-zero (out of memory, say): longer ctx are not tried
  };
  std::map<std::pair<size_t, int64_t>, Cell> cells;
  for (int64_t round = 0; round < rounds; ++round) {
    for (size_t k = 0; k < kinds.size(); ++k) {
      // The kind's previous cell: its ctx, tokens a step and step time. A step's time grows with
      // its tokens, and for the quadratic kinds (mha, mla) with the ctx as well.
      double last_ctx = 0, last_tokens = 0, last_step_s = 0;
      const bool quadratic = kinds[k].label == "mha" || kinds[k].label == "mla";
      bool failed = false;
      for (int64_t ctx : ctxs) {
        Cell& cell = cells[{k, ctx}];
        const int64_t batch = ctx == ctxs.front() ? first_batch : 1;
        if (failed || cell.failed) {
          cell.failed = failed = true;
          continue;
        }
        if (cell.skipped_step_s > 0) continue;
        if (last_ctx > 0) {
          const double predicted = last_step_s * static_cast<double>(ctx * batch) / last_tokens *
                                   (quadratic ? static_cast<double>(ctx) / last_ctx : 1.0);
          if (predicted > max_step_s) {
            cell.skipped_step_s = predicted;
            continue;
          }
        }
        const std::string cmd =
            fmt::format("'{}' train {} --ctx {} --batch {} --threads {} --steps {} --warmup 1 --recompute {} --json",
                        self, kinds[k].flags, ctx, batch, threads, steps, recompute);
        fmt::print(stderr, "$ {}\n", cmd);
        std::FILE* pipe = popen(cmd.c_str(), "r");
        if (!pipe) throw Error(fmt::format("could not run {}", cmd));
        std::string out;
        char buf[4096];
        for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
        if (pclose(pipe) != 0) {
          fmt::print(stderr, "  failed: the cell and longer contexts of {} are marked so\n", kinds[k].label);
          cell.failed = failed = true;
          continue;
        }
        const json::Json r = json::parse(out);
        cell.tokens_per_s.push_back(r.at("tokens_per_s").get<double>());
        cell.rss_mb.push_back(r.at("peak_rss_mb").get<double>());
        last_ctx = static_cast<double>(ctx);
        last_tokens = static_cast<double>(ctx * batch);
        last_step_s = r.at("step_ms").get<double>() / 1e3;
      }
    }
  }

  fmt::print("{}, {} kernels, {} threads; training tokens/s and peak RSS, median of {} run(s) of {} steps;\n"
             "batch {} at ctx {}, 1 above{}\n\n",
             cpu_name(), cpu_kernels(), threads, rounds, steps, first_batch, ctxs.front(),
             recompute ? "; --recompute" : "");
  fmt::print("| kind |");
  for (int64_t ctx : ctxs) fmt::print(" ctx {} |", ctx);
  fmt::print(" peak RSS per token |\n|---|");
  for (size_t i = 0; i <= ctxs.size(); ++i) fmt::print("---|");
  fmt::print("\n");
  for (size_t k = 0; k < kinds.size(); ++k) {
    fmt::print("| {} |", kinds[k].label);
    double prev_ctx = 0, prev_rss = 0, per_token = 0;  // the slope of RSS over the last two batch-1 cells
    for (int64_t ctx : ctxs) {
      const Cell& cell = cells[{k, ctx}];
      if (cell.tokens_per_s.empty()) {
        if (cell.failed)
          fmt::print(" failed |");
        else
          fmt::print(" skipped: ~{:.0f} s a step |", cell.skipped_step_s);
        continue;
      }
      const double rss = median(cell.rss_mb);
      fmt::print(" {:.0f} tok/s, {:.0f} MB |", median(cell.tokens_per_s), rss);
      if (ctx != ctxs.front()) {
        if (prev_ctx > 0) per_token = (rss - prev_rss) * 1048576.0 / (static_cast<double>(ctx) - prev_ctx);
        prev_ctx = static_cast<double>(ctx);
        prev_rss = rss;
      }
    }
    if (per_token > 0)
      fmt::print(" {:.1f} KB |\n", per_token / 1024.0);
    else
      fmt::print(" |\n");
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
    if (cmd == "peak") return run_peak(f);
    if (cmd == "gemm") return run_gemm(f);
    if (cmd == "sweep") return run_sweep(f, std::filesystem::read_symlink("/proc/self/exe").string());
    throw Error(fmt::format("unknown command '{}' (train, sweep, generate, peak, gemm, allreduce; see --help)", cmd));
  } catch (const std::exception& e) {
    fmt::print(stderr, "charlm_bench: {}\n", e.what());
    return 1;
  }
}
