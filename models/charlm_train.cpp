// models/charlm_train.cpp: the training run: setup and checks, the step loop, evaluations, checkpoints,
// reports.
#include "models/charlm_train.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <thread>

#include "core/cpu.h"
#include "core/files.h"
#include "core/precision.h"
#include "dist/dist.h"
#include "models/charlm_checkpoint.h"
#include "models/charlm_flags.h"
#include "models/charlm_settings.h"
#include "models/svg_plot.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/schedule.h"

namespace lg::charlm {

// Windows per forward pass in every-token evaluation; the same in `train` and `eval`, so both
// compute exactly the same numbers for the same text.
static constexpr int64_t kEvalBatch = 16;
// The sample printed at the end of training.
static constexpr int64_t kSampleTokens = 300;
static constexpr float kSampleTemperature = 0.8f;

// ============================================================================
// Settings
// ============================================================================

// TrainSettings::validate, to_json and from_json are models/charlm_settings.cpp's: the settings' declarations
// drive them.

uint64_t stream_seed(uint64_t seed, Stream stream) {
  return seed ^ (static_cast<uint64_t>(stream) * 0x9E3779B97F4A7C15ull);
}

// ============================================================================
// Stop requests (SIGINT, SIGTERM)
// ============================================================================

static volatile std::sig_atomic_t g_stop = 0;  // the signal's number

void request_stop(int signal_number) { g_stop = signal_number; }
bool stop_requested() { return g_stop != 0; }
int stop_signal() { return g_stop; }
void clear_stop() { g_stop = 0; }

static void on_stop_signal(int signal_number) {
  g_stop = signal_number;
  // Whoever sent the signal may be closing our terminal or pipe too (mpirun does, when it is
  // stopped): the checkpoint matters more than the report, so losing them must not kill us.
  std::signal(SIGHUP, SIG_IGN);
  std::signal(SIGPIPE, SIG_IGN);
}

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND | SA_RESTART;  // one-shot: a second signal ends the process at once
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

// ============================================================================
// Formatting
// ============================================================================

std::string human_count(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string human_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

std::string metrics_line(const char* label, const EvalResult& r) {
  return fmt::format("{:<5} {:>9} tokens  loss {:.4f}  ppl {:.3f}  bpc {:.4f}  accuracy {:.2f}%", label,
                     human_count(r.tokens), r.loss, r.ppl(), r.bpc(), 100.0 * r.accuracy());
}

void end_job(std::ostream& err, const std::string& message, int exit_code) {
  const dist::World& world = dist::world();
  if (world.rank != 0) std::this_thread::sleep_for(std::chrono::seconds(1));
  err << "charlm: error: " << (world.rank != 0 ? fmt::format("rank {}: ", world.rank) : "") << message
      << std::endl;
  dist::abort(exit_code);
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ============================================================================
// Memory: what a step will take, measured before anything large is allocated
// ============================================================================

MemoryEstimate estimate_step_memory(CharLM& model, int64_t tokens, int64_t shards) {
  // One forward and backward of one sequence at two lengths. Every attention kind keeps O(T)
  // per sequence for backward (mha's fused core keeps one log-sum-exp per row past T = 128),
  // so the activations are a fixed part plus a cost per token.
  const int64_t ctx = model.config().ctx, t1 = std::min<int64_t>(ctx, 512), t0 = std::max<int64_t>(1, t1 / 2);
  auto peak_of_step = [&](int64_t T) {
    const std::vector<int32_t> ids(static_cast<size_t>(T), 1);
    Rng dropout(0);
    const int64_t before = storage_bytes_live();
    reset_storage_peak();
    CharLM::loss(model.forward(ids, 1, T, dropout), ids).backward();
    const int64_t used = storage_bytes_peak() - before;
    model.zero_grad();
    return used;
  };
  const int64_t p0 = peak_of_step(t0), p1 = t1 > t0 ? peak_of_step(t1) : p0;
  MemoryEstimate e;
  e.bytes_per_token = t1 > t0 ? static_cast<double>(p1 - p0) / static_cast<double>(t1 - t0)
                              : static_cast<double>(p0) / static_cast<double>(t0);
  const double param_bytes = 4.0 * static_cast<double>(model.parameter_count());
  // Weights, their gradient, AdamW's two moments, and each further shard's own gradient.
  const double fixed = param_bytes * (4.0 + static_cast<double>(shards - 1));
  const double per_sequence =
      std::max(0.0, static_cast<double>(p0) - e.bytes_per_token * static_cast<double>(t0) - param_bytes);
  e.bytes = static_cast<int64_t>(fixed + per_sequence * static_cast<double>(shards) +
                                 e.bytes_per_token * static_cast<double>(tokens));
  return e;
}

// ============================================================================
// The run
// ============================================================================

namespace {

// One evaluation during training (a line of metrics.jsonl).
struct EvalPoint {
  int64_t step;
  double train_loss, val_loss, lr, tokens_per_s;
  double train_seconds;  // time inside training steps up to here, over every run of this --out
  json::Json to_json() const {
    return {{"step", step},
            {"train_loss", train_loss},
            {"val_loss", val_loss},
            {"val_ppl", std::exp(val_loss)},
            {"val_bpc", val_loss / std::log(2.0)},
            {"train_bpc", train_loss / std::log(2.0)},
            {"lr", lr},
            {"tokens_per_s", tokens_per_s},
            {"train_seconds", train_seconds}};
  }
};

// The evaluations already in OUT/metrics.jsonl up to `step` (a resumed run continues the file).
std::vector<EvalPoint> read_metrics(const std::string& path, int64_t step) {
  std::vector<EvalPoint> points;
  if (!files::exists(path)) return points;
  std::string text = files::read_file(path);
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    try {
      json::Json v = json::parse(std::string_view(text).substr(start, end - start));
      auto number = [&](const char* key) { return json::get_number(json::at(v, key), key); };
      EvalPoint p{json::get_int(json::at(v, "step"), "step"),
                  number("train_loss"),
                  number("val_loss"),
                  number("lr"),
                  number("tokens_per_s"),
                  number("train_seconds")};
      if (p.step <= step) points.push_back(p);
    } catch (const Error&) {
      // a line that does not parse is dropped: the file is a report, rewritten below
    }
    start = end + 1;
  }
  return points;
}

void write_reports(const std::string& out, const std::vector<EvalPoint>& points) {
  std::string jsonl;
  plot::Series train{"train loss", "#1f77b4", {}, {}}, val{"val loss", "#d62728", {}, {}};
  for (const EvalPoint& p : points) {
    jsonl += json::dump(p.to_json()) + "\n";
    train.x.push_back(static_cast<double>(p.step));
    train.y.push_back(p.train_loss);
    val.x.push_back(static_cast<double>(p.step));
    val.y.push_back(p.val_loss);
  }
  files::write_file_atomic(out + "/metrics.jsonl", jsonl);
  files::write_file_atomic(out + "/loss.svg",
                           plot::line_chart_svg({train, val}, "charlm: loss during training", "step",
                                                "cross-entropy loss (nats)", /*x_from_zero=*/true));
}

std::string shape_text(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

// ---- several ranks (dist/dist.h) -----------------------------------------------------------

// Fingerprint of this program's binary: ranks running another build refuse to start together.
uint64_t build_fingerprint() {
  try {
    return files::fnv1a64(files::read_file("/proc/self/exe"));
  } catch (const Error&) {
    return 0;  // no /proc: builds are not compared
  }
}

// What a rank is about to run; every rank must agree with rank 0 before training starts.
struct StartCheck {
  std::string error;      // this rank's setup error, "" when it is ready
  uint64_t settings = 0;  // hash of the settings that change results (flags, resumed checkpoint)
  uint64_t corpus = 0;    // FNV-1a of the corpus
  int64_t corpus_bytes = 0;
  uint64_t build = 0;
};

// Every rank takes part (a collective), ready or not: all start, or all return false with the
// reason printed once (by rank 0, or by the rank that alone knows it).
bool agree_to_start(const dist::World& world, const StartCheck& mine, const std::vector<std::string>& hosts,
                    std::ostream& err) {
  // One collective: every rank's (ready, error, settings, corpus, bytes, build), in rank order.
  const auto all = dist::all_gather({mine.error.empty() ? 1u : 0u, files::fnv1a64(mine.error), mine.settings,
                                     mine.corpus, static_cast<uint64_t>(mine.corpus_bytes), mine.build});
  auto column = [&](size_t k) {
    std::vector<uint64_t> c;
    for (const auto& row : all) c.push_back(row[k]);
    return c;
  };
  const std::vector<uint64_t> ok = column(0), error = column(1), settings = column(2), corpus = column(3),
                              bytes = column(4), build = column(5);
  const size_t r = static_cast<size_t>(world.rank);
  auto where = [&](size_t rank) { return fmt::format("rank {} ({})", rank, hosts[rank]); };
  if (std::find(ok.begin(), ok.end(), 0) != ok.end()) {
    // Rank 0 prints its own error; another rank prints its error where rank 0's is different.
    if (!mine.error.empty() && (r == 0 || error[r] != error[0]))
      err << "charlm: error: " << (r == 0 ? "" : where(r) + ": ") << mine.error << std::endl;
    if (r == 0 && ok[0] == 1)
      for (size_t q = 1; q < ok.size(); ++q)
        if (!ok[q])
          err << fmt::format("charlm: error: {} could not start (its error is above)", where(q)) << std::endl;
    return false;
  }
  for (size_t q = 1; q < ok.size(); ++q) {
    std::string what;
    if (build[q] != build[0])
      what = "runs another build of charlm (the binaries differ)";
    else if (corpus[q] != corpus[0] || bytes[q] != bytes[0])
      what = fmt::format("reads another corpus ({} bytes, FNV-1a {:016x}; rank 0: {} bytes, {:016x})",
                         bytes[q], corpus[q], bytes[0], corpus[0]);
    else if (settings[q] != settings[0])
      what = "has other settings (flags, or the checkpoint it resumes from)";
    if (what.empty()) continue;
    if (r == 0)
      err << fmt::format("charlm: error: {} disagrees with rank 0: it {}; every rank must run the same job",
                         where(q), what)
          << std::endl;
    return false;
  }
  return true;
}

}  // namespace

TrainResult run_train(TrainSettings settings, const std::set<std::string>& given, Console& console,
                      const StepHook& after_step) {
  using clock = std::chrono::steady_clock;
  const auto wall_start = clock::now();
  TrainResult result;
  // Several ranks (started by mpirun): rank 0 prints and writes every file; the others compute.
  const dist::World& world = dist::world();
  const bool ranks = world.size > 1;
  std::ostream silent(nullptr);  // discards what ranks other than 0 would print
  std::ostream& human = world.rank != 0 ? silent : settings.json ? console.err : console.out;
  // Under mpirun every rank's output is a pseudo-terminal, wherever mpirun's own output goes
  // (often a batch job's log file): there, plain progress lines every --log-every steps.
  const bool tty = !ranks && (settings.json ? console.err_is_tty : console.out_is_tty);
  bool progress_open = false;  // a \r progress line is on screen and needs ending before other output
  auto end_progress = [&] {
    if (progress_open) human << "\n";
    progress_open = false;
  };
  const std::vector<std::string> hosts = dist::all_hosts();
  StartCheck start_check;
  bool started = false;  // every rank agreed to start
  // An error on this rank. Before training starts every rank hears of it (agree_to_start) and
  // returns; once it has started, the other ranks would wait for this one forever, so the job ends.
  auto fail = [&](const std::string& message) {
    end_progress();
    result.exit_code = 1;
    if (!ranks) {
      console.err << "charlm: error: " << message << std::endl;
    } else if (!started) {
      start_check.error = message;
      agree_to_start(world, start_check, hosts, console.err);
    } else {
      end_job(console.err, message, 1);
    }
    return result;
  };
  // An error that every rank meets at the same step (a non-finite loss): rank 0 reports it.
  auto fail_everywhere = [&](const std::string& message) {
    end_progress();
    if (world.rank == 0) console.err << "charlm: error: " << message << std::endl;
    result.exit_code = 1;
    return result;
  };
  clear_stop();

  try {
    // ---- everything that can be wrong with the input is checked before any file is written ----
    const std::string latest_dir = settings.out + "/latest", best_dir = settings.out + "/best";
    CheckpointMeta resumed;
    if (settings.resume) {
      if (!files::exists(latest_dir + "/checkpoint.json") &&
          !files::exists(latest_dir + ".old/checkpoint.json"))
        return fail(
            fmt::format("--resume: no checkpoint at {}/checkpoint.json{}", latest_dir,
                        ranks ? " (every rank reads it: --out must be on storage all ranks see)" : ""));
      std::string dir = resolve_checkpoint_dir(latest_dir);
      resumed = read_checkpoint_meta(dir);
      TrainSettings saved = TrainSettings::from_json(resumed.training);
      for (const Setting& setting : train_settings()) {
        const bool given_here = given.count(setting.flag()) > 0;
        if (setting.scope == Scope::Command || (setting.scope == Scope::Session && given_here)) {
          setting.copy(saved, settings);
        } else if (given_here) {
          const std::string given_value = json::dump(setting.to_json(settings)),
                            saved_value = json::dump(setting.to_json(saved));
          if (given_value != saved_value)
            return fail(fmt::format(
                "--resume: {} {} differs from the checkpoint's {} (only {} may change when resuming)",
                setting.flag(), given_value, saved_value, resumable_flags()));
        }
      }
      settings = saved;
      if (resumed.step > settings.steps)
        return fail(fmt::format("--resume: the checkpoint has already run {} steps, more than --steps {}",
                                resumed.step, settings.steps));
    }
    settings.validate(false);

    const std::string corpus = read_corpus(settings.data);
    const Splits splits = split_corpus(corpus, settings.split);
    check_split_lengths(splits, static_cast<int64_t>(corpus.size()), settings.model.ctx);
    CorpusInfo corpus_info{settings.data, static_cast<int64_t>(corpus.size()), files::fnv1a64(corpus)};
    if (settings.resume &&
        (corpus_info.bytes != resumed.corpus.bytes || corpus_info.fnv1a != resumed.corpus.fnv1a))
      return fail(fmt::format(
          "--resume: {} ({} bytes) is not the corpus the checkpoint was trained on ({}, {} bytes)",
          settings.data, corpus_info.bytes, resumed.corpus.path, resumed.corpus.bytes));
    const Vocab vocab = settings.resume ? resumed.vocab : Vocab::from_text(splits.train);
    settings.model.vocab = vocab.size();
    settings.validate(true);
    const Precision matmul = parse_precision(settings.precision);
    require_precision_available(matmul);
    const PrecisionGuard precision(matmul);  // for the rest of the run
    if (world.rank == 0 && !settings.resume && (files::exists(latest_dir) || files::exists(best_dir)))
      return fail(
          fmt::format("{} already holds a training run; pass --resume to continue it or choose another --out",
                      settings.out));

    set_num_threads(static_cast<int>(settings.threads));
    const std::vector<int32_t> train_ids = vocab.encode(splits.train);
    const std::vector<int32_t> val_ids = vocab.encode(splits.val);
    const std::vector<int32_t> test_ids = vocab.encode(splits.test);

    Rng init_rng(stream_seed(settings.seed, Stream::Init));
    Rng data_rng(stream_seed(settings.seed, Stream::Data));
    Rng dropout_rng(stream_seed(settings.seed, Stream::Dropout));
    CharLM model(settings.model, init_rng);
    model.recompute = settings.recompute;
    optim::AdamWConfig adam;
    adam.lr = static_cast<float>(settings.lr);
    adam.beta1 = static_cast<float>(settings.beta1);
    adam.beta2 = static_cast<float>(settings.beta2);
    adam.weight_decay = static_cast<float>(settings.weight_decay);
    optim::AdamW optimizer(model.named_parameters(), adam);
    const optim::LrSchedule schedule{static_cast<float>(settings.lr), static_cast<float>(settings.min_lr),
                                     std::min(settings.warmup, settings.steps), settings.steps};

    int64_t step = 0;  // optimizer steps completed
    double best_val = std::numeric_limits<double>::infinity();
    int64_t best_step = -1;
    double train_seconds_before = 0;  // training time of earlier runs of this --out
    if (settings.resume) {
      std::string dir = resolve_checkpoint_dir(latest_dir);
      load_checkpoint_weights(dir, model);
      load_checkpoint_optimizer(dir, optimizer);
      if (optimizer.step_count() != resumed.step)
        return fail(
            fmt::format("checkpoint {} is unusable: optimizer state is at step {}, checkpoint.json at {}",
                        dir, optimizer.step_count(), resumed.step));
      step = resumed.step;
      data_rng.set_state(resumed.data_rng);
      dropout_rng.set_state(resumed.dropout_rng);
      best_val = resumed.best_val_loss;
      best_step = resumed.best_step;
      train_seconds_before = resumed.train_seconds;
    }
    // Before any file is written: would a step fit in memory?
    const int64_t sequences_here = (settings.batch + world.size - 1) / world.size;
    const MemoryEstimate memory = estimate_step_memory(model, sequences_here * settings.model.ctx,
                                                       std::min<int64_t>(sequences_here, get_num_threads()));
    const int64_t available = available_memory_bytes();
    if (available > 0 && memory.bytes > available)
      return fail(
          fmt::format("--ctx {} with --batch {} needs about {} MB per training step ({:.1f} KB per token of "
                      "batch x ctx{}), "
                      "more than the {} MB available{}: {}a smaller --batch with --accum, or a smaller --ctx",
                      settings.model.ctx, settings.batch, memory.bytes >> 20, memory.bytes_per_token / 1024.0,
                      ranks ? " on this rank" : "", available >> 20,
                      std::getenv("LATENTGRAD_MEMORY_MB") ? " (LATENTGRAD_MEMORY_MB)" : "",
                      settings.recompute ? "use " : "use --recompute, "));
    result.memory_estimate_mb = static_cast<double>(memory.bytes) / 1048576.0;
    if (world.rank == 0) {
      files::ensure_writable_dir(settings.out);
      files::write_file_atomic(settings.out + "/config.toml", train_config_toml(settings));
    }
    result.first_step = result.last_step = step;
    result.params = model.parameter_count();

    // ---- several ranks: all run the same job, and each knows its shards of every batch ----
    // (A rank that failed above joins the agreement from fail(): nothing collective may come
    // before it.)
    std::unique_ptr<dist::GradReducer> reducer;
    if (ranks) {
      TrainSettings same = settings;  // ranks may run different thread counts
      same.threads = 0;
      start_check.settings = files::fnv1a64(fmt::format("{} resume {} step {} bucket-mb {} overlap {}",
                                                        json::dump(same.to_json()), settings.resume, step,
                                                        settings.bucket_mb, settings.overlap));
      start_check.corpus = corpus_info.fnv1a;
      start_check.corpus_bytes = corpus_info.bytes;
      start_check.build = build_fingerprint();
      if (!agree_to_start(world, start_check, hosts, console.err)) {
        result.exit_code = 1;
        return result;
      }
      reducer = std::make_unique<dist::GradReducer>(
          model.parameters(), static_cast<int64_t>(settings.bucket_mb * 1024 * 1024), settings.overlap);
    }
    started = true;
    // The batch is cut into S = min(threads of all ranks, B) shards, as one process with that
    // many threads would cut it; rank r runs the next ones in order, one per thread.
    std::vector<uint64_t> rank_threads;
    for (const auto& row : dist::all_gather({static_cast<uint64_t>(get_num_threads())}))
      rank_threads.push_back(row[0]);
    int64_t all_threads = 0, threads_before = 0;
    for (size_t r = 0; r < rank_threads.size(); ++r) {
      if (static_cast<int>(r) < world.rank) threads_before += static_cast<int64_t>(rank_threads[r]);
      all_threads += static_cast<int64_t>(rank_threads[r]);
    }
    ShardRange shards;
    shards.total = std::min(all_threads, settings.batch);
    shards.first = shards.total * threads_before / all_threads;
    shards.count = shards.total * (threads_before + get_num_threads()) / all_threads - shards.first;

    // ---- the configuration and the parameters ----
    human << fmt::format("charlm train: {} {}\n", settings.resume ? "resuming" : "starting",
                         settings.resume ? fmt::format("{} at step {}", settings.out, step) : settings.out);
    human << fmt::format("  {:<14}{} ({} bytes; split {} -> train {} / val {} / test {} bytes)\n", "data",
                         settings.data, human_count(corpus_info.bytes), split_str(settings.split),
                         human_count(static_cast<int64_t>(splits.train.size())),
                         human_count(static_cast<int64_t>(splits.val.size())),
                         human_count(static_cast<int64_t>(splits.test.size())));
    human << fmt::format(
        "  {:<14}{} ids: {} distinct bytes of the train split + id 0 for unknown bytes "
        "(val has {}, test has {})\n",
        "vocab", vocab.size(), vocab.size() - 1, vocab.count_unknown(splits.val),
        vocab.count_unknown(splits.test));
    const json::Json settings_json = settings.to_json();
    for (const auto& [key, value] : settings_json.items())
      human << fmt::format("  {:<14}{}\n", key,
                           value.is_string() ? value.get_ref<const std::string&>() : json::dump(value));
    if (!ranks) {
      human << fmt::format("  {:<14}{} (each step: {} data-parallel shards of the batch, one per thread)\n",
                           "threads used", get_num_threads(), shards.total);
    } else {
      std::string placement;  // "vm1: ranks 0-1, vm2: ranks 2-3"
      for (size_t r = 0; r < hosts.size();) {
        size_t q = r;
        while (q + 1 < hosts.size() && hosts[q + 1] == hosts[r]) ++q;
        placement += fmt::format("{}{}: {}", placement.empty() ? "" : ", ", hosts[r],
                                 q == r ? fmt::format("rank {}", r) : fmt::format("ranks {}-{}", r, q));
        r = q + 1;
      }
      const bool same_threads = std::all_of(rank_threads.begin(), rank_threads.end(),
                                            [&](uint64_t t) { return t == rank_threads[0]; });
      human << fmt::format("  {:<14}{} ranks x {} ({})\n", "world", world.size,
                           same_threads
                               ? fmt::format("{} thread{}", rank_threads[0], rank_threads[0] == 1 ? "" : "s")
                               : std::string("threads of each rank's own"),
                           placement);
      human << fmt::format(
          "  {:<14}each step: {} data-parallel shards of the batch of {}, one per rank and thread; "
          "gradients ({} MB) all-reduced in {} bucket{} of <= {} MB while backward runs{}\n",
          "layout", shards.total, settings.batch, fmt::format("{:.1f}", reducer->bytes() / 1048576.0),
          reducer->buckets(), reducer->buckets() == 1 ? "" : "s", settings.bucket_mb,
          settings.overlap ? "" : " (--no-overlap: after backward)");
      if (all_threads > settings.batch)
        human << fmt::format(
            "  {:<14}--batch {} is smaller than the {} threads of all ranks: some threads, or whole ranks, "
            "have no sequence to run\n",
            "note", settings.batch, all_threads);
    }
    human << fmt::format("  {:<14}{}\n", "kernels", cpu_kernels());
    if (settings.precision == "bf16")
      human << fmt::format("  {:<14}bf16 (linear's products: bf16 inputs, fp32 sums; all else fp32)\n",
                           "precision");
    human << fmt::format("  {:<14}about {} MB a step ({:.1f} KB per token of batch x ctx; {} MB available)\n",
                         "memory", memory.bytes >> 20, memory.bytes_per_token / 1024.0, available >> 20);
    human << "parameters (the output head reuses wte.weight):\n";
    for (const auto& [name, tensor] : model.named_parameters())
      human << fmt::format("  {:<34}{:<14}{:>10}\n", name, shape_text(tensor.shape()),
                           human_count(tensor.numel()));
    human << fmt::format("  {:<48}{:>10}\n", "total", human_count(result.params));
    human.flush();

    std::vector<EvalPoint> points;
    if (world.rank == 0) points = read_metrics(settings.out + "/metrics.jsonl", step);
    auto make_meta = [&] {
      CheckpointMeta m;
      m.model = settings.model;
      m.vocab = vocab;
      m.training = settings.to_json();
      m.corpus = corpus_info;
      m.step = step;
      m.data_rng = data_rng.state();
      m.dropout_rng = dropout_rng.state();
      m.best_val_loss = best_val;
      m.best_step = best_step;
      return m;
    };
    bool latest_saved = settings.resume;
    int64_t latest_step = step;

    // ---- training ----
    const int64_t B = settings.batch, T = settings.model.ctx, N = settings.accum;
    const int64_t start_step = step;
    double train_seconds = 0;  // this process's time inside training steps
    double comm_seconds = 0;   // of which waiting on other ranks
    int stop = 0;              // the signal every rank agreed to stop on
    const auto loop_start = clock::now();
    auto last_line = loop_start - std::chrono::seconds(1);  // the last progress line printed
    std::vector<int32_t> x, y;
    std::vector<double> shard_losses, step_seconds;
    reset_storage_peak();
    DataParallel parallel(model, std::max<int64_t>(shards.count, 1));
    model.train();
    while (step < settings.steps) {
      if (!ranks && stop_requested()) break;
      const auto step_start = clock::now();
      const float lr = optim::lr_at(schedule, step + 1);  // the k-th update (k = step + 1) uses lr_at(k)
      optimizer.config.lr = lr;
      optimizer.zero_grad();
      // N micro-batches (--accum) draw the N B windows one batch of N B would, in the same order,
      // each weighted 1 / N: their gradients add up in .grad to the step's. Only the last one
      // goes through the reducer, which sums what the shards hold then over ranks (as DDP's
      // no_sync does), so ranks exchange once per step.
      std::vector<double> micro_losses;
      for (int64_t micro = 0; micro < N; ++micro) {
        sample_batch(train_ids, B, T, data_rng, x, y);  // the whole micro-batch, on every rank
        // This rank's shards, one per thread; across ranks, the reducer sums the gradients.
        parallel.forward_backward_shards(x, y, B, T, dropout_rng, shards, micro_losses,
                                         micro + 1 == N ? reducer.get() : nullptr,
                                         1.0f / static_cast<float>(N));
        if (micro == 0) shard_losses.assign(micro_losses.size(), 0.0);
        for (size_t s = 0; s < micro_losses.size(); ++s) shard_losses[s] += micro_losses[s];
      }
      if (ranks) {
        // One small collective: every shard's loss, and whether any rank was asked to stop.
        const auto comm_start = clock::now();
        std::vector<double> sums = shard_losses;
        sums.push_back(stop_signal() == SIGTERM ? 1 : 0);
        sums.push_back(stop_signal() == SIGINT ? 1 : 0);
        dist::sum_over_ranks(sums);
        comm_seconds += reducer->wait_seconds() + seconds_since(comm_start);
        stop = sums[shard_losses.size()] > 0 ? SIGTERM : sums[shard_losses.size() + 1] > 0 ? SIGINT : 0;
        sums.resize(shard_losses.size());
        shard_losses = sums;
      }
      double batch_loss = 0;  // shard order: the same sum on any number of ranks
      for (double l : shard_losses) batch_loss += l;
      const float loss_value = static_cast<float>(batch_loss);
      const float grad_norm =
          settings.grad_clip > 0
              ? optim::clip_grad_norm(model.parameters(), static_cast<float>(settings.grad_clip))
              : optim::clip_grad_norm(model.parameters(), std::numeric_limits<float>::infinity());
      if (!std::isfinite(loss_value) || !std::isfinite(grad_norm)) {
        std::string what = !std::isfinite(loss_value) ? fmt::format("loss is {}", loss_value)
                                                      : fmt::format("gradient norm is {}", grad_norm);
        return fail_everywhere(fmt::format(
            "{} at step {}; training stopped without updating the weights. {}", what, step + 1,
            latest_saved ? fmt::format("The last good checkpoint is {} (step {}).", latest_dir, latest_step)
                         : std::string("No checkpoint had been saved yet.")));
      }
      optimizer.step();
      ++step;
      step_seconds.push_back(seconds_since(step_start));
      train_seconds += step_seconds.back();
      result.losses.push_back(loss_value);
      result.last_step = step;

      // progress: one line rewritten in place on a terminal, plain lines otherwise
      const int64_t done_here = step - start_step;
      const double tokens_per_s = static_cast<double>(done_here * N * B * T) / train_seconds;
      const double eta = seconds_since(loop_start) / static_cast<double>(done_here) *
                         static_cast<double>(settings.steps - step);
      std::string line = fmt::format("step {:>{}}/{}  loss {:.4f}  lr {:.2e}  {:>7} tok/s  ETA {}", step,
                                     std::to_string(settings.steps).size(), settings.steps, loss_value, lr,
                                     human_count(std::llround(tokens_per_s)), human_duration(eta));
      if (ranks)
        line += fmt::format("  comm {:.1f} ms/step", 1e3 * comm_seconds / static_cast<double>(done_here));
      // Once asked to stop, print nothing until the checkpoint is saved: whoever signalled may
      // have stopped reading our output, and a full pipe would block us here. (A signalled
      // mpirun stops forwarding its ranks' output at once, and passes the signal on only
      // odls_base_sigkill_timeout seconds later: under mpirun, at most one line a second, so
      // that the pipe does not fill up in the meantime.)
      const bool quiet = stop_requested();
      const bool due = step == settings.steps || seconds_since(last_line) >= (ranks ? 1.0 : 0.2);
      if (!quiet && tty) {  // on a terminal, redrawn at most 5 times a second
        if (due || step % settings.eval_every == 0) {
          human << "\r\x1b[2K" << line << std::flush;
          progress_open = true;
          last_line = clock::now();
        }
      } else if (!quiet && (step == start_step + 1 || (step % settings.log_every == 0 && (!ranks || due)))) {
        human << line << "\n" << std::flush;
        last_line = clock::now();
      }

      if (step % settings.eval_every == 0 || step == settings.steps) {
        EvalPoint p{step,
                    estimate_loss(model, train_ids, settings.eval_batches, B,
                                  stream_seed(settings.seed, Stream::TrainEstimate), world),
                    estimate_loss(model, val_ids, settings.eval_batches, B,
                                  stream_seed(settings.seed, Stream::ValEstimate), world),
                    lr,
                    tokens_per_s,
                    train_seconds_before + train_seconds};
        if (!std::isfinite(p.train_loss) || !std::isfinite(p.val_loss))
          return fail_everywhere(fmt::format(
              "evaluation at step {} gave a non-finite loss (train {}, val {}); training stopped. {}", step,
              p.train_loss, p.val_loss,
              latest_saved ? fmt::format("The last good checkpoint is {} (step {}).", latest_dir, latest_step)
                           : std::string("No checkpoint had been saved yet.")));
        const bool improved = p.val_loss < best_val;
        if (improved) {
          best_val = p.val_loss;
          best_step = step;
        }
        if (world.rank == 0) {  // the one writer
          points.push_back(p);
          write_reports(settings.out, points);
          CheckpointMeta meta = make_meta();
          meta.train_seconds = train_seconds_before + train_seconds;
          save_checkpoint(latest_dir, meta, model, &optimizer);
          if (improved) save_checkpoint(best_dir, meta, model, &optimizer);
        }
        latest_saved = true;
        latest_step = step;
        end_progress();
        if (!quiet)
          human
              << fmt::format(
                     "step {} eval: train loss {:.4f} (ppl {:.3f}, bpc {:.3f})  val loss {:.4f} (ppl {:.3f}, "
                     "bpc "
                     "{:.3f}){}\n",
                     step, p.train_loss, std::exp(p.train_loss), p.train_loss / std::log(2.0), p.val_loss,
                     std::exp(p.val_loss), p.val_loss / std::log(2.0),
                     improved ? "  [best, saved]" : "  [saved]")
              << std::flush;
      }
      if (after_step) after_step(step, model);
      if (!ranks) stop = stop_signal();
      if (stop) break;
    }
    end_progress();
    result.tokens_per_s =
        train_seconds > 0 ? static_cast<double>((step - start_step) * N * B * T) / train_seconds : 0;
    result.memory_peak_mb = static_cast<double>(storage_bytes_peak()) / 1048576.0;
    result.comm_ms_per_step =
        step > start_step ? 1e3 * comm_seconds / static_cast<double>(step - start_step) : 0;
    if (!step_seconds.empty()) {
      std::nth_element(step_seconds.begin(), step_seconds.begin() + step_seconds.size() / 2,
                       step_seconds.end());
      result.step_ms_median = 1e3 * step_seconds[step_seconds.size() / 2];
    }

    if (stop) {
      if (world.rank == 0 && (!latest_saved || latest_step != step)) {
        CheckpointMeta meta = make_meta();
        meta.train_seconds = train_seconds_before + train_seconds;
        save_checkpoint(latest_dir, meta, model, &optimizer);
      }
      dist::barrier();  // no rank exits (which ends the job) before rank 0 has saved
      human << fmt::format("interrupted at step {}: checkpoint saved to {}; continue with --resume\n", step,
                           latest_dir);
      if (settings.json && world.rank == 0)
        console.out << fmt::format("{{\"interrupted\": true, \"step\": {}, \"checkpoint\": \"{}\"}}\n", step,
                                   latest_dir);
      console.out.flush();
      result.exit_code = 128 + stop;
      return result;
    }

    // ---- final evaluation on every token of val and test, with the best checkpoint ----
    std::string final_dir;
    CheckpointMeta final_meta;
    if (world.rank == 0) {
      final_dir = files::exists(best_dir + "/checkpoint.json") ? best_dir : latest_dir;
      final_meta = read_checkpoint_meta(final_dir);
      load_checkpoint_weights(final_dir, model);
    }
    for (Tensor& p : model.parameters()) dist::broadcast(p.data(), p.numel());  // rank 0's weights
    result.val = evaluate_tokens(model, val_ids, kEvalBatch, world);
    result.test = evaluate_tokens(model, test_ids, kEvalBatch, world);
    const double wall = seconds_since(wall_start);
    human << fmt::format("final evaluation, every token, with {} (step {}):\n", final_dir, final_meta.step);
    human << "  " << metrics_line("val", result.val) << "\n";
    human << "  " << metrics_line("test", result.test) << "\n";
    human << fmt::format("wall time {} ({:.1f} s), training throughput {} tokens/s over {} steps\n",
                         human_duration(wall), wall, human_count(std::llround(result.tokens_per_s)),
                         step - start_step);
    human << fmt::format("sample ({} characters, temperature {}):\n", kSampleTokens, kSampleTemperature);
    if (world.rank == 0) {
      Rng sample_rng(stream_seed(settings.seed, Stream::Sample));
      Generator gen(model);
      int32_t newline = vocab.id_of('\n');
      gen.feed(newline != kUnknownId ? newline : 1);
      std::string text;
      for (int64_t i = 0; i < kSampleTokens; ++i) {
        int32_t id = gen.sample(sample_rng, kSampleTemperature, 0);
        text += static_cast<char>(vocab.byte_of(id));
        gen.feed(id);
      }
      human << text << "\n" << std::flush;
    }
    if (settings.json && world.rank == 0) {
      const EvalResult& v = result.val;
      const EvalResult& t = result.test;
      json::Json j = {{"val_loss", v.loss},
                      {"val_ppl", v.ppl()},
                      {"val_bpc", v.bpc()},
                      {"test_loss", t.loss},
                      {"test_ppl", t.ppl()},
                      {"test_bpc", t.bpc()},
                      {"test_accuracy", t.accuracy()},
                      {"test_tokens", t.tokens},
                      {"tokens_per_s", result.tokens_per_s},
                      {"params", result.params},
                      {"steps", step},
                      {"best_step", final_meta.step},
                      {"best_val_loss_estimate", best_val},
                      {"wall_s", wall},
                      {"attn", settings.model.attention},
                      {"precision", settings.precision},
                      {"checkpoint", final_dir},
                      {"ranks", static_cast<int64_t>(world.size)},
                      {"comm_ms_per_step", result.comm_ms_per_step},
                      {"memory_estimate_mb", result.memory_estimate_mb},
                      {"memory_peak_mb", result.memory_peak_mb},
                      {"step_ms_median", result.step_ms_median}};
      json::Json& losses = j["step_losses"] = json::Json::array();  // every step run here, in order
      for (float l : result.losses) losses.push_back(static_cast<double>(l));
      console.out << json::dump(j) << "\n" << std::flush;
    }
    return result;
  } catch (const std::bad_alloc&) {
    return fail("out of memory (try a smaller --batch, --dim or --ctx)");
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}

}  // namespace lg::charlm
