// dist/dist.h: training on several processes or machines over MPI: the world, the few collectives
// the trainer needs, and GradReducer, which averages gradients across ranks in buckets while
// backward is still running (the scheme of PyTorch's DistributedDataParallel).
//
// dist/dist.cpp is the only file of the project that includes mpi.h, and a reader who skips
// distributed training can skip these two files. A program started without mpirun never
// initialises MPI: the world is one rank and every collective returns its input unchanged.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lg::dist {

struct World {
  int rank = 0;
  int size = 1;
  bool mpi = false;  // MPI was initialised (the process was started by mpirun)
};

// Starts MPI when this process was launched by mpirun or srun (their environment variables say
// so); otherwise does nothing and the world is one rank. Later calls return the same world.
const World& init();
const World& world();
// MPI_Finalize, if MPI was started. Every rank must call it before it exits normally.
void finalize();
// Ends every rank of the job at once (MPI_Abort) with this exit code; exits the process alone
// when MPI is not running.
[[noreturn]] void abort(int code);

// Every rank's host name, in rank order (on every rank).
std::vector<std::string> all_hosts();
// Every rank's values (the same count on every rank), in rank order (on every rank).
std::vector<std::vector<uint64_t>> all_gather(const std::vector<uint64_t>& values);
// Element-wise sum over ranks, on every rank. Summed in rank order whatever MPI's algorithm, so
// the result is the same bits on every rank and in every run.
void sum_over_ranks(std::vector<double>& values);
// Copies rank 0's buffer to every rank.
void broadcast(float* data, int64_t n);
void barrier();

// Averages (sums; the shards' losses are already weighted) gradients across ranks, as DDP does.
//
// The parameters are grouped into buckets of about `bucket_bytes`, filled from the last
// parameter to the first: backward produces gradients roughly in that order, so the first
// bucket is complete early. The trainer hooks every parameter (Tensor::set_grad_ready_hook)
// to grad_ready(); when all of a bucket's gradients are final on every local shard, the
// bucket sums its shards into one flat buffer and starts a non-blocking all-reduce of it
// (MPI_Iallreduce), while backward goes on with the layers below. Buckets start in index
// order on every rank (MPI requires the same order of collectives everywhere): a bucket
// that completes early waits for the ones before it. finish() waits for the rest and writes
// the sums into the parameters' .grad.
//
// With one rank the same code runs without MPI: buckets are summed over the local shards only.
class GradReducer {
 public:
  // params: the model's parameters in the model's order. overlap = false starts every
  // all-reduce in finish(), after backward (to measure what the overlap hides).
  GradReducer(std::vector<Tensor> params, int64_t bucket_bytes, bool overlap = true);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Starts a step. sources[s] is local shard s's view of the parameters (same order as
  // params): the model itself, or a replica sharing its storage. Every one of them must report
  // each parameter once through grad_ready(i), or finish() takes what is there.
  void begin(const std::vector<std::vector<Tensor>>& sources);
  // One shard's gradient of parameter i is final. Safe to call from several threads at once.
  void grad_ready(size_t param);
  // Sums what is left, waits for every bucket and sets each parameter's .grad to its sum over
  // local shards and ranks. Call on the thread that called begin(), after backward.
  void finish();

  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  int64_t bytes() const { return total_floats_ * 4; }
  double wait_seconds() const { return wait_seconds_; }  // in finish() for the last step

 private:
  struct Bucket {
    std::vector<size_t> params;       // indices into params_
    std::vector<int64_t> offset;      // each one's place in `flat`
    Tensor flat;                      // (n,) the bucket's gradients, summed over shards then ranks
    std::atomic<int64_t> pending{0};  // shard gradients still to come this step
    bool summed = false;              // flat holds the local sum (guarded by mutex_)
  };
  void sum_shards(Bucket& b);
  void launch_ready();   // needs mutex_
  void make_progress();  // needs mutex_

  std::vector<Tensor> params_;
  std::vector<size_t> bucket_of_;  // param index -> bucket index
  std::vector<std::unique_ptr<Bucket>> buckets_;
  const std::vector<std::vector<Tensor>>* sources_ = nullptr;
  int64_t total_floats_ = 0;
  bool overlap_;
  bool any_thread_may_call_mpi_;
  std::mutex mutex_;
  size_t next_launch_ = 0;
  struct Requests;  // the buckets' MPI_Request handles (dist.cpp)
  std::unique_ptr<Requests> requests_;
  double wait_seconds_ = 0;
};

}  // namespace lg::dist
