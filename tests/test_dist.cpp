// tests/test_dist.cpp: training on several processes (dist/): grad-ready hooks, the bucketed reducer
// and shard ranges in one process; then real jobs under mpirun (2 to 4 ranks): equivalence with
// one process, distributed evaluation, resume with another number of ranks, SIGTERM, a killed
// rank, and ranks that disagree.
//
// mpirun runs as root only with OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM), which the jobs below set.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/files.h"
#include "core/json_io.h"
#include "dist/dist.h"
#include "models/charlm.h"
#include "models/charlm_checkpoint.h"
#include "tests/testing.h"

extern char** environ;

using namespace lg;
using namespace lg::charlm;
using namespace lg::testing;

namespace {

// ============================================================================
// In one process
// ============================================================================

ModelConfig small_model(const std::string& kind) {
  ModelConfig c;
  c.vocab = 11;
  c.layers = 2;
  c.heads = 2;
  c.dim = 16;
  c.ctx = 8;
  c.attention = kind;
  c.latents = 4;
  c.window = 2;
  c.dropout = 0.1f;
  return c;
}

void random_batch(int64_t B, int64_t T, std::vector<int32_t>& x, std::vector<int32_t>& y, uint64_t seed) {
  Rng rng(seed);
  x.resize(static_cast<size_t>(B * T));
  y.resize(x.size());
  for (auto& v : x) v = static_cast<int32_t>(1 + rng.below(10));
  for (auto& v : y) v = static_cast<int32_t>(1 + rng.below(10));
}

std::vector<std::vector<float>> grads_of(const CharLM& model) {
  std::vector<std::vector<float>> g;
  for (const Tensor& p : model.parameters())
    g.push_back(p.grad().defined() ? p.grad().to_vector() : std::vector<float>{});
  return g;
}

}  // namespace

TEST_CASE("grad-ready hook: runs once per backward, when the leaf's gradient is final") {
  // w is read by three ops at different depths; its gradient is complete only after the last.
  Tensor w = Tensor::from_vector({0.5f, -1.0f, 2.0f}, {3}).set_requires_grad();
  Tensor b = Tensor::from_vector({1.0f, 1.0f, 1.0f}, {3}).set_requires_grad();
  std::vector<std::vector<float>> seen_w;
  int calls_b = 0;
  w.set_grad_ready_hook([&] { seen_w.push_back(w.grad().to_vector()); });
  b.set_grad_ready_hook([&] { ++calls_b; });
  Tensor h = mul(w, b);                 // first use of w
  Tensor out = sum(mul(add(h, w), w));  // (w b + w) w: two more uses
  out.backward();
  REQUIRE(seen_w.size() == 1);
  CHECK(seen_w[0] == w.grad().to_vector());  // what the hook saw is the final gradient
  CHECK(calls_b == 1);
  // d/dw of (w b + w) w = 2 w b + 2 w = 4 w with b = 1
  CHECK(seen_w[0] == std::vector<float>{2.0f, -4.0f, 8.0f});
}

TEST_CASE("grad-ready hook: every CharLM parameter reports once, with its final gradient") {
  // With --recompute the blocks' parameters are read in the inner backward of each block.
  for (auto [kind, recompute] : {std::pair{"latent", false}, std::pair{"mha", false}, std::pair{"mla", false},
                                 std::pair{"latent", true}, std::pair{"mha", true}}) {
    CAPTURE(kind);
    CAPTURE(recompute);
    Rng init(3), drop(4);
    CharLM model(small_model(kind), init);
    model.recompute = recompute;
    std::vector<Tensor> params = model.parameters();
    std::vector<int> calls(params.size(), 0);
    std::vector<std::vector<float>> seen(params.size());
    for (size_t i = 0; i < params.size(); ++i)
      params[i].set_grad_ready_hook([&, i] {
        ++calls[i];
        seen[i] = params[i].grad().to_vector();
      });
    std::vector<int32_t> x, y;
    random_batch(3, 8, x, y, 5);
    CharLM::loss(model.forward(x, 3, 8, drop), y).backward();
    for (size_t i = 0; i < params.size(); ++i) {
      CAPTURE(i);
      CHECK(calls[i] == 1);
      CHECK(seen[i] == params[i].grad().to_vector());
    }
    for (Tensor& p : params) p.set_grad_ready_hook({});
  }
}

TEST_CASE("GradReducer in one process: the same gradients as DataParallel's own sum, any bucket size") {
  for (int64_t bucket_bytes : {int64_t{64}, int64_t{4096}, int64_t{1} << 20}) {
    CAPTURE(bucket_bytes);
    Rng init_a(3), init_b(3), drop_a(4), drop_b(4);
    CharLM plain(small_model("latent"), init_a);
    CharLM reduced(small_model("latent"), init_b);
    std::vector<int32_t> x, y;
    random_batch(5, 8, x, y, 6);
    DataParallel dp_plain(plain, 3), dp_reduced(reduced, 3);
    dist::GradReducer reducer(reduced.parameters(), bucket_bytes);
    CHECK(reducer.buckets() >= 1);
    for (int step = 0; step < 2; ++step) {  // twice: the reducer is reused across steps
      plain.zero_grad();
      reduced.zero_grad();
      std::vector<double> la, lb;
      dp_plain.forward_backward_shards(x, y, 5, 8, drop_a, ShardRange{3, 0, 3}, la);
      dp_reduced.forward_backward_shards(x, y, 5, 8, drop_b, ShardRange{3, 0, 3}, lb, &reducer);
      CHECK(la == lb);
      CHECK(grads_of(plain) == grads_of(reduced));  // bitwise: the same additions in the same order
    }
  }
}

TEST_CASE("ShardRange: shards run in separate places add up to the whole batch") {
  // What two ranks do, without MPI: each runs its range; the sum of their gradients and
  // weighted losses is the one-process result (here with 3 shards of a batch of 7: 2, 2, 3).
  Rng i0(3), i1(3), i2(3), d0(4), d1(4), d2(4);
  CharLM whole(small_model("mha"), i0), first(small_model("mha"), i1), rest(small_model("mha"), i2);
  std::vector<int32_t> x, y;
  random_batch(7, 8, x, y, 9);
  DataParallel dw(whole, 3), df(first, 1), dr(rest, 2);
  std::vector<double> lw, lf, lr;
  dw.forward_backward_shards(x, y, 7, 8, d0, ShardRange{3, 0, 3}, lw);
  df.forward_backward_shards(x, y, 7, 8, d1, ShardRange{3, 0, 1}, lf);
  dr.forward_backward_shards(x, y, 7, 8, d2, ShardRange{3, 1, 2}, lr);
  CHECK(d0.state() == d1.state());  // every place draws every shard's dropout seed
  REQUIRE(lw.size() == 3);
  CHECK(lf[1] == 0.0);
  CHECK(lr[0] == 0.0);
  for (size_t s = 0; s < 3; ++s) CHECK(lw[s] == lf[s] + lr[s]);
  auto gw = grads_of(whole), gf = grads_of(first), gr = grads_of(rest);
  for (size_t i = 0; i < gw.size(); ++i)
    for (size_t k = 0; k < gw[i].size(); ++k)
      CHECK(gw[i][k] == doctest::Approx(gf[i][k] + gr[i][k]).epsilon(1e-5));
  CHECK_THROWS_AS(dw.forward_backward_shards(x, y, 7, 8, d0, ShardRange{8, 0, 3}, lw), Error);  // 8 > B
  CHECK_THROWS_AS(df.forward_backward_shards(x, y, 7, 8, d0, ShardRange{3, 0, 2}, lw), Error);  // 2 > shards
}

// ============================================================================
// Real jobs under mpirun
// ============================================================================

namespace {

const std::string kMpirun = LG_MPIEXEC;
const std::string kCharlm = LG_CHARLM;

// Polls `done` every 20 ms for up to `seconds`.
template <typename Done>
bool wait_until(Done done, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// A child process (mpirun, or charlm alone) with stdout and stderr in files.
struct Job {
  pid_t pid = -1;
  std::string out_path, err_path;

  Job(const std::vector<std::string>& argv, const std::string& out, const std::string& err)
      : out_path(out), err_path(err) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(rc == 0);
  }
  // Exit code (128 + signal if killed), or -1 if still running after `seconds` (then killed).
  int wait(double seconds) {
    int status = 0;
    if (wait_until([&] { return waitpid(pid, &status, WNOHANG) == pid; }, seconds))
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    ::kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
  }
  std::string out() const { return files::read_file(out_path); }
  std::string err() const { return files::read_file(err_path); }
  // The ranks: the children mpirun started on this machine.
  std::vector<pid_t> children() const {
    std::vector<pid_t> kids;
    for (const auto& entry : fs::directory_iterator("/proc")) {
      const std::string name = entry.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(entry.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const size_t close = line.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(line.substr(close + 2));
      std::string state;
      pid_t parent = 0;
      rest >> state >> parent;
      if (parent == pid) kids.push_back(static_cast<pid_t>(std::stoi(name)));
    }
    std::sort(kids.begin(), kids.end());
    return kids;
  }
};

std::vector<std::string> mpirun(int ranks) {
  return {kMpirun, "--oversubscribe", "-np", std::to_string(ranks)};
}

std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The run's flags: a small model on a generated corpus; batch 7 does not divide by 2, 3 or 4,
// so shards are uneven, and dropout makes each shard's random stream matter.
std::vector<std::string> train_args(const TempDir& dir, const std::string& out, int64_t steps) {
  return {kCharlm,        "train",   "--data",         dir / "corpus.txt",
          "--out",        dir / out, "--layers",       "2",
          "--heads",      "2",       "--dim",          "32",
          "--ctx",        "16",      "--batch",        "7",
          "--latents",    "4",       "--window",       "4",
          "--dropout",    "0.1",     "--steps",        std::to_string(steps),
          "--eval-every", "5",       "--eval-batches", "2",
          "--warmup",     "3",       "--lr",           "3e-3",
          "--json"};
}

json::Json final_json(const Job& job) {
  const std::string out = job.out();
  INFO("stdout: " << out << "\nstderr: " << job.err());
  REQUIRE(!out.empty());
  return json::parse(out.substr(out.rfind('{')));
}

std::vector<double> step_losses(const json::Json& j) {
  std::vector<double> v;
  for (const json::Json& x : j.at("step_losses")) v.push_back(x.get<double>());
  return v;
}

double relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(a), 1e-30); }

// Same loss at every step (bitwise where `bitwise`), same final val and test within 1e-5.
void check_equivalent(const json::Json& one, const json::Json& many, bool bitwise) {
  const std::vector<double> a = step_losses(one), b = step_losses(many);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    if (bitwise) CHECK(a[i] == b[i]);
    CHECK(relative(a[i], b[i]) <= 1e-5);
  }
  CHECK(relative(one.at("val_loss").get<double>(), many.at("val_loss").get<double>()) <= 1e-5);
  CHECK(relative(one.at("test_loss").get<double>(), many.at("test_loss").get<double>()) <= 1e-5);
}

void set_job_environment() {
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  setenv("OMP_NUM_THREADS", "1", 1);
  // OpenMPI's own allocations live until exit; LeakSanitizer (sanitizer builds) ignores them.
  const std::string lsan = std::string("suppressions=") + LG_LSAN_SUPPRESSIONS;
  setenv("LSAN_OPTIONS", lsan.c_str(), 1);
}

// args with FLAG's value replaced.
std::vector<std::string> with(std::vector<std::string> args, const std::string& flag,
                              const std::string& value) {
  args[static_cast<size_t>(std::find(args.begin(), args.end(), flag) - args.begin()) + 1] = value;
  return args;
}

bool wait_for_text(const std::string& path, const std::string& text, double seconds) {
  return wait_until(
      [&] { return files::exists(path) && files::read_file(path).find(text) != std::string::npos; }, seconds);
}

bool wait_for_file(const std::string& path, double seconds) {
  return wait_until([&] { return files::exists(path); }, seconds);
}

}  // namespace

TEST_CASE("mpirun -np K --threads 1 equals one process with K threads; eval across ranks equals eval") {
  set_job_environment();
  TempDir dir("dist-equal");
  write_text(dir / "corpus.txt", generated_text(30000));
  for (int K : {2, 3, 4}) {
    CAPTURE(K);
    Job one(train_args(dir, fmt::format("one{}", K), 12) +
                std::vector<std::string>{"--threads", std::to_string(K)},
            dir / "one.out", dir / "one.err");
    REQUIRE(one.wait(120) == 0);
    Job many(mpirun(K) + train_args(dir, fmt::format("many{}", K), 12) +
                 std::vector<std::string>{"--threads", "1"},
             dir / "many.out", dir / "many.err");
    REQUIRE(many.wait(120) == 0);
    json::Json a = final_json(one), b = final_json(many);
    CHECK(b.at("ranks").get<int64_t>() == K);
    // Two ranks add two gradients, in either order the same bits; more may group the sums differently.
    check_equivalent(a, b, /*bitwise=*/K == 2);
    // Only rank 0 writes: one metrics line per evaluation, no files from the others.
    std::string metrics = files::read_file(dir / fmt::format("many{}/metrics.jsonl", K));
    CHECK(std::count(metrics.begin(), metrics.end(), '\n') == 3);
    CHECK(many.err().find(fmt::format("{} ranks x 1 thread", K)) != std::string::npos);
  }

  // charlm eval on 3 ranks: the same metrics as on one.
  Job solo({kCharlm, "eval", "--ckpt", dir / "one2", "--data", dir / "corpus.txt", "--json"}, dir / "e1.out",
           dir / "e1.err");
  REQUIRE(solo.wait(60) == 0);
  Job split(mpirun(3) + std::vector<std::string>{kCharlm, "eval", "--ckpt", dir / "one2", "--data",
                                                 dir / "corpus.txt", "--json"},
            dir / "e3.out", dir / "e3.err");
  REQUIRE(split.wait(60) == 0);
  json::Json e1 = final_json(solo), e3 = final_json(split);
  CHECK(e1.at("tokens").get<int64_t>() == e3.at("tokens").get<int64_t>());
  CHECK(relative(e1.at("loss").get<double>(), e3.at("loss").get<double>()) <= 1e-9);
  CHECK(e1.at("accuracy").get<double>() == e3.at("accuracy").get<double>());
}

TEST_CASE("--accum under mpirun: ranks exchange once per step and equal one process") {
  // The micro-batches' gradients add up on each rank; the last one's all-reduce carries the sum.
  set_job_environment();
  TempDir dir("dist-accum");
  write_text(dir / "corpus.txt", generated_text(30000));
  const std::vector<std::string> accum = {"--accum", "3"};
  Job one(train_args(dir, "one", 8) + accum + std::vector<std::string>{"--threads", "2"}, dir / "one.out",
          dir / "one.err");
  REQUIRE(one.wait(120) == 0);
  Job many(mpirun(2) + train_args(dir, "many", 8) + accum + std::vector<std::string>{"--threads", "1"},
           dir / "many.out", dir / "many.err");
  REQUIRE(many.wait(120) == 0);
  // The sums are grouped differently (per rank, then across), so equal up to float rounding.
  check_equivalent(final_json(one), final_json(many), /*bitwise=*/false);
}

TEST_CASE("--resume with another number of ranks continues as one process would") {
  set_job_environment();
  TempDir dir("dist-resume");
  write_text(dir / "corpus.txt", generated_text(30000));
  // One process: 8 steps on 2 threads, then 8 more on 3. Ranks: 8 steps on 2, then 8 on 3.
  auto threads = [](int n) { return std::vector<std::string>{"--threads", std::to_string(n)}; };
  Job a1(train_args(dir, "one", 8) + threads(2), dir / "a1.out", dir / "a1.err");
  REQUIRE(a1.wait(60) == 0);
  Job a2(train_args(dir, "one", 16) + threads(3) + std::vector<std::string>{"--resume"}, dir / "a2.out",
         dir / "a2.err");
  REQUIRE(a2.wait(60) == 0);
  Job b1(mpirun(2) + train_args(dir, "many", 8) + threads(1), dir / "b1.out", dir / "b1.err");
  REQUIRE(b1.wait(60) == 0);
  Job b2(mpirun(3) + train_args(dir, "many", 16) + threads(1) + std::vector<std::string>{"--resume"},
         dir / "b2.out", dir / "b2.err");
  REQUIRE(b2.wait(60) == 0);
  check_equivalent(final_json(a1), final_json(b1), true);
  json::Json second_one = final_json(a2), second_many = final_json(b2);
  CHECK(step_losses(second_many).size() == 8);
  check_equivalent(second_one, second_many, false);
}

TEST_CASE(
    "SIGTERM to one rank or to mpirun: every rank stops at one step, rank 0 saves, --resume continues") {
  set_job_environment();
  TempDir dir("dist-term");
  write_text(dir / "corpus.txt", generated_text(30000));
  for (bool to_mpirun : {false, true}) {
    CAPTURE(to_mpirun);
    const std::string out = to_mpirun ? "via-mpirun" : "via-rank";
    // No evaluation (and so no checkpoint) before the signal: latest/ is the stop's own save.
    // A signalled mpirun passes SIGTERM on after odls_base_sigkill_timeout seconds and kills as
    // long after that; a slow machine (a sanitizer build) may need more than the default 1 s to
    // finish the step and save, as the README says.
    std::vector<std::string> launcher = mpirun(2);
    launcher.insert(launcher.begin() + 1, {"--mca", "odls_base_sigkill_timeout", "4"});
    Job job(launcher + with(train_args(dir, out, 100000), "--eval-every", "100000"), dir / "t.out",
            dir / "t.err");
    REQUIRE(wait_for_text(dir / "t.err", "tok/s", 60));  // a progress line: training has started
    std::vector<pid_t> ranks = job.children();
    REQUIRE(ranks.size() == 2);
    ::kill(to_mpirun ? job.pid : ranks[1], SIGTERM);
    const int code = job.wait(30);
    INFO("stderr: " << job.err());
    CHECK(code != -1);
    if (!to_mpirun) CHECK(code == 143);  // mpirun passes on the first rank's exit code
    REQUIRE(wait_for_file(dir / (out + "/latest/checkpoint.json"), 5));
    const int64_t saved = read_checkpoint_meta(dir / (out + "/latest")).step;
    CHECK(saved >= 1);
    if (!to_mpirun) CHECK(job.err().find(fmt::format("interrupted at step {}:", saved)) != std::string::npos);
    // The saved run continues, here in one process.
    std::vector<std::string> more = with(train_args(dir, out, saved + 3), "--eval-every", "100000");
    more.push_back("--resume");
    Job resume(more, dir / "r.out", dir / "r.err");
    CHECK(resume.wait(60) == 0);
    CHECK(step_losses(final_json(resume)).size() == 3);
  }
}

TEST_CASE("a rank killed with SIGKILL ends the job, naming the rank; latest/ stays resumable") {
  set_job_environment();
  TempDir dir("dist-kill");
  write_text(dir / "corpus.txt", generated_text(30000));
  Job job(mpirun(2) + train_args(dir, "run", 100000), dir / "k.out", dir / "k.err");
  REQUIRE(wait_for_file(dir / "run/latest/checkpoint.json", 60));
  std::vector<pid_t> ranks = job.children();
  REQUIRE(ranks.size() == 2);
  const auto start = std::chrono::steady_clock::now();
  ::kill(ranks[1], SIGKILL);
  const int code = job.wait(30);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(code != -1);
  CHECK(code != 0);
  CHECK(seconds < 30);
  INFO("stderr: " << job.err());
  CHECK(job.err().find("rank 1") != std::string::npos);
  const int64_t saved = read_checkpoint_meta(dir / "run/latest").step;
  std::vector<std::string> more = train_args(dir, "run", saved + 2);
  more.push_back("--resume");
  Job resume(more, dir / "r.out", dir / "r.err");
  CHECK(resume.wait(60) == 0);
}

TEST_CASE("ranks that disagree on flags or corpus refuse to start, with one clear message") {
  set_job_environment();
  TempDir dir("dist-disagree");
  write_text(dir / "corpus.txt", generated_text(30000));
  write_text(dir / "other.txt", generated_text(30000, 99));
  // mpirun's MPMD form: rank 0 runs the first command, rank 1 the second.
  std::vector<std::string> first = train_args(dir, "run", 10), second = with(first, "--lr", "1e-3");
  std::vector<std::string> colon{":", "-np", "1"};
  Job flags(std::vector<std::string>{kMpirun, "--oversubscribe", "-np", "1"} + first + colon + second,
            dir / "f.out", dir / "f.err");
  CHECK(flags.wait(60) == 1);
  CHECK(flags.err().find("rank 1") != std::string::npos);
  CHECK(flags.err().find("has other settings") != std::string::npos);
  CHECK(!files::exists(dir / "run/latest"));

  second = with(first, "--data", dir / "other.txt");
  Job corpus(std::vector<std::string>{kMpirun, "--oversubscribe", "-np", "1"} + first + colon + second,
             dir / "c.out", dir / "c.err");
  CHECK(corpus.wait(60) == 1);
  CHECK(corpus.err().find("reads another corpus") != std::string::npos);

  // Another build: a copy of the binary with one byte appended (it runs the same; its hash differs).
  fs::copy_file(kCharlm, dir / "charlm-other", fs::copy_options::overwrite_existing);
  { std::ofstream(dir / "charlm-other", std::ios::app) << '\n'; }
  fs::permissions(dir / "charlm-other", fs::perms::owner_all);
  std::vector<std::string> other = first;
  other[0] = dir / "charlm-other";
  Job build(std::vector<std::string>{kMpirun, "--oversubscribe", "-np", "1"} + first + colon + other,
            dir / "b.out", dir / "b.err");
  CHECK(build.wait(60) == 1);
  CHECK(build.err().find("runs another build of charlm") != std::string::npos);

  // A setup error on one rank only: that rank says what, rank 0 says who.
  Job alone(std::vector<std::string>{kMpirun, "--oversubscribe", "-np", "1"} + first + colon +
                with(first, "--data", dir / "none.txt"),
            dir / "a.out", dir / "a.err");
  CHECK(alone.wait(60) == 1);
  CHECK(alone.err().find("none.txt") != std::string::npos);
  CHECK(alone.err().find("rank 1") != std::string::npos);
  CHECK(alone.err().find("could not start") != std::string::npos);

  // A setup error on every rank is printed once.
  Job missing(
      mpirun(2) + std::vector<std::string>{kCharlm, "train", "--data", dir / "none.txt", "--out", dir / "x"},
      dir / "m.out", dir / "m.err");
  CHECK(missing.wait(60) == 1);
  const std::string err = missing.err();
  CHECK(err.find("none.txt") != std::string::npos);
  CHECK(err.find("none.txt") == err.rfind("none.txt"));
}
