// dist/dist.cpp: the MPI world, collectives and the bucketed gradient all-reduce (see dist.h).
#include "dist/dist.h"

#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#if defined(__SANITIZE_ADDRESS__)
#include <dlfcn.h>
#include <link.h>
#include <sanitizer/lsan_interface.h>
#endif

namespace lg::dist {

// ============================================================================
// The world
// ============================================================================

namespace {

// Open MPI keeps allocations until the process exits. Many are made by plugins (mca_*.so), or
// libraries they load, that MPI_Finalize unloads, or that MPI_Init loads, tries and unloads;
// LeakSanitizer then cannot name their module, and its suppression file
// (tests/lsan_mpi.supp) cannot match them. In sanitizer builds, every library loaded after
// MPI_Init stays mapped (RTLD_NODELETE), so the suppressions match by name; and what
// MPI_Init and MPI_Finalize allocate on this thread is left out of the check (ScopedLeakCheckOff).
// Our own allocations are checked as always.
void keep_libraries_loaded() {
#if defined(__SANITIZE_ADDRESS__)
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void*) {
        if (info->dlpi_name && info->dlpi_name[0])
          dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
        return 0;
      },
      nullptr);
#endif
}

struct ScopedLeakCheckOff {
#if defined(__SANITIZE_ADDRESS__)
  ScopedLeakCheckOff() { __lsan_disable(); }
  ~ScopedLeakCheckOff() { __lsan_enable(); }
#endif
};

World g_world;
bool g_initialised = false;
int g_thread_level = MPI_THREAD_SINGLE;  // what MPI_Init_thread provided

// mpirun (Open MPI, MPICH, Intel MPI) and srun set one of these in every rank's environment.
bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(name)) return true;
  return false;
}

void check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw Error(fmt::format("{} failed: {}", what, std::string(text, static_cast<size_t>(length))));
}
}  // namespace

const World& init() {
  if (g_initialised) return g_world;
  g_initialised = true;
  if (!launched_by_mpi()) return g_world;
  // Serialized: the reducer's threads take turns calling MPI (under its mutex).
  [[maybe_unused]] ScopedLeakCheckOff mpi_init_allocations;
  check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &g_thread_level), "MPI_Init_thread");
  keep_libraries_loaded();
  MPI_Comm_rank(MPI_COMM_WORLD, &g_world.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world.size);
  g_world.mpi = true;
  return g_world;
}

const World& world() { return g_world; }

void finalize() {
  keep_libraries_loaded();
  [[maybe_unused]] ScopedLeakCheckOff mpi_finalize_allocations;
  if (g_world.mpi) MPI_Finalize();
  g_world.mpi = false;
}

void abort(int code) {
  if (g_world.mpi) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::vector<std::string> all_hosts() {
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int length = 0;
  if (!g_world.mpi) {
    if (gethostname(name, sizeof name - 1) != 0) std::strcpy(name, "localhost");
    return {name};
  }
  MPI_Get_processor_name(name, &length);
  std::vector<char> all(static_cast<size_t>(g_world.size) * MPI_MAX_PROCESSOR_NAME);
  check(MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR,
                      MPI_COMM_WORLD),
        "MPI_Allgather");
  std::vector<std::string> hosts;
  for (int r = 0; r < g_world.size; ++r)
    hosts.emplace_back(all.data() + static_cast<size_t>(r) * MPI_MAX_PROCESSOR_NAME);
  return hosts;
}

std::vector<std::vector<uint64_t>> all_gather(const std::vector<uint64_t>& values) {
  const size_t n = values.size();
  std::vector<uint64_t> flat(n * static_cast<size_t>(g_world.size));
  if (g_world.mpi)
    check(MPI_Allgather(values.data(), static_cast<int>(n), MPI_UINT64_T, flat.data(), static_cast<int>(n),
                        MPI_UINT64_T, MPI_COMM_WORLD),
          "MPI_Allgather");
  else
    flat = values;
  std::vector<std::vector<uint64_t>> all;
  for (size_t r = 0; r < static_cast<size_t>(g_world.size); ++r)
    all.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(r * n),
                     flat.begin() + static_cast<std::ptrdiff_t>((r + 1) * n));
  return all;
}

void sum_over_ranks(std::vector<double>& values) {
  if (!g_world.mpi || g_world.size == 1) return;
  const int n = static_cast<int>(values.size());
  std::vector<double> all(static_cast<size_t>(n) * static_cast<size_t>(g_world.size));
  check(MPI_Allgather(values.data(), n, MPI_DOUBLE, all.data(), n, MPI_DOUBLE, MPI_COMM_WORLD),
        "MPI_Allgather");
  for (int i = 0; i < n; ++i) {
    double total = 0;
    for (int r = 0; r < g_world.size; ++r) total += all[static_cast<size_t>(r) * n + i];
    values[i] = total;
  }
}

void broadcast(float* data, int64_t n) {
  if (!g_world.mpi || g_world.size == 1) return;
  constexpr int64_t kChunk = int64_t{1} << 28;  // MPI counts are int
  for (int64_t i = 0; i < n; i += kChunk)
    check(MPI_Bcast(data + i, static_cast<int>(std::min(kChunk, n - i)), MPI_FLOAT, 0, MPI_COMM_WORLD),
          "MPI_Bcast");
}

void barrier() {
  if (g_world.mpi) check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

// ============================================================================
// GradReducer
// ============================================================================

struct GradReducer::Requests {
  std::vector<MPI_Request> handles;
};

GradReducer::GradReducer(std::vector<Tensor> params, int64_t bucket_bytes, bool overlap)
    : params_(std::move(params)),
      bucket_of_(params_.size()),
      overlap_(overlap),
      any_thread_may_call_mpi_(!g_world.mpi || g_thread_level >= MPI_THREAD_SERIALIZED),
      requests_(std::make_unique<Requests>()) {
  // Last parameter first: roughly the order in which backward finishes them.
  const int64_t max_floats = std::max<int64_t>(1, bucket_bytes / 4);
  int64_t filled = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const int64_t n = params_[k].numel();
    if (buckets_.empty() || (filled > 0 && filled + n > max_floats)) {
      buckets_.push_back(std::make_unique<Bucket>());
      filled = 0;
    }
    Bucket& b = *buckets_.back();
    b.params.push_back(k);
    b.offset.push_back(filled);
    bucket_of_[k] = buckets_.size() - 1;
    filled += n;
    total_floats_ += n;
  }
  for (auto& b : buckets_) {
    int64_t n = 0;
    for (size_t k : b->params) n += params_[k].numel();
    b->flat = Tensor::empty({n});
  }
  requests_->handles.assign(buckets_.size(), MPI_REQUEST_NULL);
}

GradReducer::~GradReducer() = default;

void GradReducer::begin(const std::vector<std::vector<Tensor>>& sources) {
  for (const auto& s : sources)
    if (s.size() != params_.size())
      throw Error(
          fmt::format("GradReducer: a shard lists {} parameters, the model {}", s.size(), params_.size()));
  sources_ = &sources;
  for (auto& b : buckets_) {
    b->pending = static_cast<int64_t>(b->params.size() * sources.size());
    b->summed = false;
  }
  next_launch_ = 0;
  std::fill(requests_->handles.begin(), requests_->handles.end(), MPI_REQUEST_NULL);
}

// flat = shard 0's gradients + shard 1's + ... in shard order (the order DataParallel adds
// them in a single process, so one rank gives the same bits).
void GradReducer::sum_shards(Bucket& b) {
  for (size_t j = 0; j < b.params.size(); ++j) {
    const size_t k = b.params[j];
    const int64_t n = params_[k].numel();
    float* out = b.flat.data() + b.offset[j];
    bool first = true;
    for (const auto& shard : *sources_) {
      Tensor g = shard[k].grad();
      if (!g.defined()) continue;
      const float* in = g.data();
      if (first)
        std::memcpy(out, in, static_cast<size_t>(n) * sizeof(float));
      else
        for (int64_t e = 0; e < n; ++e) out[e] += in[e];
      first = false;
    }
    if (first) std::memset(out, 0, static_cast<size_t>(n) * sizeof(float));  // no shard used it
  }
}

void GradReducer::launch_ready() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_]->summed) {
    Bucket& b = *buckets_[next_launch_];
    if (g_world.mpi && g_world.size > 1)
      check(MPI_Iallreduce(MPI_IN_PLACE, b.flat.data(), static_cast<int>(b.flat.numel()), MPI_FLOAT, MPI_SUM,
                           MPI_COMM_WORLD, &requests_->handles[next_launch_]),
            "MPI_Iallreduce");
    ++next_launch_;
  }
}

// MPI moves a non-blocking collective forward only inside MPI calls: test the started ones.
void GradReducer::make_progress() {
  if (!g_world.mpi || next_launch_ == 0) return;
  int done = 0;
  MPI_Testall(static_cast<int>(next_launch_), requests_->handles.data(), &done, MPI_STATUSES_IGNORE);
}

void GradReducer::grad_ready(size_t param) {
  Bucket& b = *buckets_[bucket_of_[param]];
  if (b.pending.fetch_sub(1) == 1) {
    sum_shards(b);  // every shard's part of this bucket is final: nobody else touches it now
    std::lock_guard<std::mutex> lock(mutex_);
    b.summed = true;
    if (overlap_ && any_thread_may_call_mpi_) {
      launch_ready();
      make_progress();
    }
  } else if (overlap_ && any_thread_may_call_mpi_ && next_launch_ > 0) {
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (lock.owns_lock()) make_progress();
  }
}

void GradReducer::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& b : buckets_)
    if (!b->summed) {  // a parameter no shard reported (unused, or a shard-less rank)
      sum_shards(*b);
      b->summed = true;
    }
  launch_ready();
  const auto start = std::chrono::steady_clock::now();
  if (g_world.mpi)
    check(MPI_Waitall(static_cast<int>(requests_->handles.size()), requests_->handles.data(),
                      MPI_STATUSES_IGNORE),
          "MPI_Waitall");
  wait_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (auto& b : buckets_)
    for (size_t j = 0; j < b->params.size(); ++j) {
      Tensor& p = params_[b->params[j]];
      Tensor g = Tensor::empty(p.shape());
      std::memcpy(g.data(), b->flat.data() + b->offset[j], static_cast<size_t>(p.numel()) * sizeof(float));
      p.zero_grad();
      accumulate_grad(p, std::move(g));
    }
  sources_ = nullptr;
}

}  // namespace lg::dist
