// models/charlm.cpp: the char-level LM's forward pass, incremental steps, evaluation and sampling.
#include "models/charlm.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <numeric>

#include "core/precision.h"
#include "core/recompute.h"
#include "dist/dist.h"
#include "models/charlm_data.h"

namespace lg::charlm {

// ============================================================================
// Model
// ============================================================================

CharLM::CharLM(const ModelConfig& config, Rng& init_rng) : config_(config) {
  config_.validate();
  const nn::BlockConfig& block = config_.block_config();
  wte = register_module("wte", std::make_shared<nn::Embedding>(config_.vocab, config_.dim, init_rng));
  for (int64_t i = 0; i < config_.layers; ++i)
    blocks.push_back(register_module(fmt::format("blocks.{}", i),
                                     std::make_shared<nn::TransformerBlock>(block, init_rng)));
  ln_f = register_module("ln_f", nn::make_norm(block, init_rng));
}

Tensor CharLM::forward(const std::vector<int32_t>& ids, int64_t B, int64_t T, Rng& dropout_rng) {
  if (T < 1 || T > config_.ctx)
    throw Error(fmt::format("CharLM::forward: T = {} must be in [1, ctx = {}]", T, config_.ctx));
  return forward_positions(ids, B, T, dropout_rng);
}

Tensor CharLM::forward_positions(const std::vector<int32_t>& ids, int64_t B, int64_t T, Rng& dropout_rng) {
  if (T < 1) throw Error(fmt::format("CharLM::forward: T = {} must be at least 1", T));
  Tensor h = wte->forward(ids, {B, T});  // (B, T, D)
  for (auto& block : blocks) {
    if (!recompute || !is_training()) {
      h = block->forward(h, 0, dropout_rng);  // (B, T, D)
      continue;
    }
    // The block runs twice (forward, then again in backward): both times from this state of the
    // dropout generator, so that both draw the same masks; the caller's generator then moves on
    // as one run would have moved it.
    auto after = std::make_shared<Rng>(dropout_rng);
    const Rng start = dropout_rng;
    nn::TransformerBlock* b = block.get();
    h = recomputed(
        [b, start, after](const Tensor& x) {
          Rng rng = start;
          Tensor y = b->forward(x, 0, rng);
          *after = rng;
          return y;
        },
        h);
    dropout_rng = *after;
  }
  h = ln_f->forward(h);  // (B, T, D)
  return head(h);        // (B, T, V)
}

// linear() in bf16 and matmul() in fp32 compute the same logits and input gradient, but linear's
// fp32 weight gradient may sum its rows in parts (core/matmul.cpp), another rounding: fp32 keeps
// the matmul, so that fp32 runs and checkpoints give the losses they always gave.
Tensor CharLM::head(const Tensor& h) const {
  if (matmul_precision() == Precision::bf16) return linear(h, wte->weight, Tensor());
  return matmul(h, transpose(wte->weight, 0, 1));  // W^T as a view
}

Tensor CharLM::loss(const Tensor& logits, const std::vector<int32_t>& targets) {
  return cross_entropy(reshape(logits, {-1, logits.size(-1)}), targets);  // (B*T, V) -> ()
}

CharLM::State CharLM::make_state(int64_t batch) const {
  State state;
  for (auto& block : blocks) state.layers.push_back(block->attn->make_state(batch));
  return state;
}

Tensor CharLM::step(const std::vector<int32_t>& ids, State& state) {
  NoGradGuard no_grad;
  int64_t B = static_cast<int64_t>(ids.size());
  Tensor h = wte->forward(ids, {B, 1});  // (B, 1, D)
  for (size_t i = 0; i < blocks.size(); ++i) h = blocks[i]->step(h, *state.layers[i]);
  h = ln_f->forward(h);
  ++state.position;
  return reshape(head(h), {B, config_.vocab});  // (B, V)
}

// ============================================================================
// Data-parallel training step
// ============================================================================

DataParallel::DataParallel(CharLM& model, int64_t shards) : model_(model) {
  if (shards < 1) throw Error(fmt::format("DataParallel: shards must be >= 1, got {}", shards));
  for (int64_t s = 1; s < shards; ++s) {
    Rng unused(0);  // the replica's own initial values are dropped at once
    auto replica = std::make_unique<CharLM>(model.config(), unused);
    replica->share_parameters(model);
    replicas_.push_back(std::move(replica));
  }
  params_.push_back(model.parameters());
  for (auto& r : replicas_) params_.push_back(r->parameters());
}

float DataParallel::forward_backward(const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                                     int64_t B, int64_t T, Rng& dropout_rng) {
  const int64_t S = std::min(shards(), std::max<int64_t>(B, 1));
  std::vector<double> losses;
  forward_backward_shards(ids, targets, B, T, dropout_rng, ShardRange{S, 0, S}, losses);
  double total = 0;
  for (double l : losses) total += l;
  return static_cast<float>(total);
}

void DataParallel::forward_backward_shards(const std::vector<int32_t>& ids,
                                           const std::vector<int32_t>& targets, int64_t B, int64_t T,
                                           Rng& dropout_rng, const ShardRange& range,
                                           std::vector<double>& shard_losses, dist::GradReducer* reducer,
                                           float weight) {
  if (static_cast<int64_t>(ids.size()) != B * T || static_cast<int64_t>(targets.size()) != B * T)
    throw Error(fmt::format("DataParallel: {} ids and {} targets for a ({}, {}) batch", ids.size(),
                            targets.size(), B, T));
  const int64_t S = range.total, C = range.count;
  if (S < 1 || S > B || range.first < 0 || C < 0 || range.first + C > S || C > shards())
    throw Error(fmt::format("DataParallel: shards [{}, {}) of {} for a batch of {} on {} local shards",
                            range.first, range.first + C, S, B, shards()));
  shard_losses.assign(static_cast<size_t>(S), 0.0);
  std::vector<CharLM*> models{&model_};
  for (auto& r : replicas_) {
    r->train(model_.is_training());
    r->recompute = model_.recompute;
    r->zero_grad();
    models.push_back(r.get());
  }
  // The reducer hears of every local shard's gradients as backward finishes them.
  std::vector<std::vector<Tensor>> sources(params_.begin(), params_.begin() + C);
  struct Unhook {  // the hooks come off when this step ends, however it ends
    std::vector<std::vector<Tensor>>& sources;
    ~Unhook() {
      for (auto& list : sources)
        for (Tensor& p : list) p.set_grad_ready_hook({});
    }
  } unhook{sources};
  if (reducer) {
    reducer->begin(sources);
    for (auto& list : sources)
      for (size_t i = 0; i < list.size(); ++i)
        list[i].set_grad_ready_hook([reducer, i] { reducer->grad_ready(i); });
  }

  if (S == 1) {  // the whole batch here: exactly the plain forward and backward
    if (C == 1) {
      Tensor loss = CharLM::loss(model_.forward(ids, B, T, dropout_rng), targets);
      loss.backward(Tensor::full({}, weight));
      shard_losses[0] = loss.item() * static_cast<double>(weight);
    }
  } else {
    std::vector<Rng> rngs;
    for (int64_t s = 0; s < S; ++s) rngs.emplace_back(dropout_rng.next_u64());
    std::vector<std::exception_ptr> errors(static_cast<size_t>(C));
    // Shard s: sequences [B s / S, B (s + 1) / S). Its loss is a mean over its own tokens, so
    // its gradient is weighted by its share of the batch.
    auto run_shard = [&](int64_t local) {
      try {
        const int64_t s = range.first + local;
        const int64_t b0 = B * s / S, b1 = B * (s + 1) / S;
        std::vector<int32_t> x(ids.begin() + b0 * T, ids.begin() + b1 * T);
        std::vector<int32_t> y(targets.begin() + b0 * T, targets.begin() + b1 * T);
        Tensor loss = CharLM::loss(models[local]->forward(x, b1 - b0, T, rngs[s]), y);
        const double value = loss.item();
        loss.backward(Tensor::full({}, static_cast<float>(b1 - b0) / static_cast<float>(B) * weight));
        shard_losses[s] = value * static_cast<double>(b1 - b0) / static_cast<double>(B) * weight;
      } catch (...) {
        errors[local] = std::current_exception();
      }
    };
    if (C == 1) {
      run_shard(0);
    } else {
#pragma omp parallel for num_threads(static_cast <int>(C)) schedule(static, 1)
      for (int64_t local = 0; local < C; ++local) run_shard(local);
    }
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  }

  if (reducer) {
    reducer->finish();
  } else if (C > 1) {
    // The model's gradients += each replica's, in shard order; every thread takes one slice
    // of every parameter.
    const std::vector<std::vector<Tensor>>& params = params_;
    for (size_t i = 0; i < params[0].size(); ++i) {
      bool any = false;
      for (int64_t s = 1; s < C; ++s) any = any || params[s][i].grad().defined();
      if (any && !params[0][i].grad().defined())
        accumulate_grad(params[0][i], Tensor::zeros(params[0][i].shape()));
    }
#pragma omp parallel num_threads(static_cast <int>(C))
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      for (size_t i = 0; i < params[0].size(); ++i) {
        Tensor acc = params[0][i].grad();
        if (!acc.defined()) continue;
        const int64_t n = acc.numel(), lo = n * t / nt, hi = n * (t + 1) / nt;
        float* out = acc.data();
        for (int64_t s = 1; s < C; ++s) {
          Tensor g = params[s][i].grad();
          if (!g.defined()) continue;
          const float* in = g.data();
          for (int64_t k = lo; k < hi; ++k) out[k] += in[k];
        }
      }
    }
  }
  for (int64_t s = 1; s < C; ++s) models[s]->zero_grad();
}

// ============================================================================
// Evaluation
// ============================================================================

double EvalResult::ppl() const { return std::exp(loss); }
double EvalResult::bpc() const { return loss / std::log(2.0); }
double EvalResult::accuracy() const { return tokens ? static_cast<double>(correct) / tokens : 0.0; }

// Adds each row's -log softmax(logits)[target] (in double) and argmax hits.
static void score_rows(const Tensor& logits, const std::vector<int32_t>& targets, EvalResult& r) {
  Tensor lc = logits.is_contiguous() ? logits : contiguous_copy(logits);
  int64_t V = lc.size(-1), rows = lc.numel() / V;
  const float* p = lc.data();
  for (int64_t i = 0; i < rows; ++i, p += V) {
    int64_t best = std::max_element(p, p + V) - p;
    double mx = p[best], z = 0;
    for (int64_t j = 0; j < V; ++j) z += std::exp(static_cast<double>(p[j]) - mx);
    r.loss += std::log(z) + mx - p[targets[i]];
    r.correct += best == targets[i];
    r.unknown += targets[i] == kUnknownId;
  }
  r.tokens += rows;
}

// The sums of an evaluation added over ranks (in rank order: the same bits on every rank).
static void sum_over_ranks(EvalResult& r, const dist::World& world) {
  if (world.size == 1) return;
  std::vector<double> sums{r.loss, static_cast<double>(r.tokens), static_cast<double>(r.correct),
                           static_cast<double>(r.unknown)};
  dist::sum_over_ranks(sums);
  r.loss = sums[0];
  r.tokens = static_cast<int64_t>(sums[1]);
  r.correct = static_cast<int64_t>(sums[2]);
  r.unknown = static_cast<int64_t>(sums[3]);
}

EvalResult evaluate_tokens(CharLM& model, const std::vector<int32_t>& ids, int64_t batch,
                           const dist::World& world, int64_t window) {
  auto start = std::chrono::steady_clock::now();
  int64_t n = static_cast<int64_t>(ids.size()), ctx = window > 0 ? window : model.config().ctx;
  if (n < 2) throw Error(fmt::format("evaluation needs at least 2 tokens, got {}", n));
  bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  Rng unused(0);  // dropout is off in eval mode
  EvalResult r;
  int64_t predictions = n - 1;
  int64_t full = predictions / ctx;  // windows of exactly ctx predictions
  // This rank's windows: [first, last) of the full ones, and the short one on the last rank.
  const int64_t first = full * world.rank / world.size, last = full * (world.rank + 1) / world.size;
  std::vector<int32_t> x, y;
  for (int64_t w0 = first; w0 < last; w0 += batch) {
    int64_t b = std::min(batch, last - w0);
    x.assign(ids.begin() + w0 * ctx, ids.begin() + (w0 + b) * ctx);
    y.assign(ids.begin() + w0 * ctx + 1, ids.begin() + (w0 + b) * ctx + 1);
    score_rows(model.forward_positions(x, b, ctx, unused), y, r);
  }
  if (int64_t rest = predictions - full * ctx; rest > 0 && world.rank == world.size - 1) {
    x.assign(ids.begin() + full * ctx, ids.begin() + full * ctx + rest);
    y.assign(ids.begin() + full * ctx + 1, ids.end());
    score_rows(model.forward_positions(x, 1, rest, unused), y, r);
  }
  sum_over_ranks(r, world);
  r.loss /= static_cast<double>(r.tokens);
  model.train(was_training);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

double estimate_loss(CharLM& model, const std::vector<int32_t>& ids, int64_t batches, int64_t batch,
                     uint64_t seed, const dist::World& world) {
  bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  Rng rng(seed), unused(0);
  int64_t T = model.config().ctx;
  std::vector<int32_t> x, y;
  // Every rank draws the same windows and scores its slice [b0, b1) of each batch.
  const int64_t b0 = batch * world.rank / world.size, b1 = batch * (world.rank + 1) / world.size;
  EvalResult r;
  for (int64_t i = 0; i < batches; ++i) {
    sample_batch(ids, batch, T, rng, x, y);
    if (b1 == b0) continue;
    std::vector<int32_t> xs(x.begin() + b0 * T, x.begin() + b1 * T),
        ys(y.begin() + b0 * T, y.begin() + b1 * T);
    score_rows(model.forward(xs, b1 - b0, T, unused), ys, r);
  }
  sum_over_ranks(r, world);
  model.train(was_training);
  return r.loss / static_cast<double>(r.tokens);
}

// ============================================================================
// Sampling
// ============================================================================

Generator::Generator(CharLM& model) : model_(model), state_(model.make_state(1)) {
  rebuilds_ = false;
  for (const auto& block : model.blocks) rebuilds_ = rebuilds_ || block->attn->state_grows();
}

void Generator::feed(int32_t id) {
  int64_t ctx = model_.config().ctx;
  if (rebuilds_) history_.push_back(id);
  if (rebuilds_ && state_.position >= ctx) {
    // Re-prime from the last ctx / 2 tokens (the newest one included, fed below).
    state_ = model_.make_state(1);
    int64_t keep = std::max<int64_t>(1, ctx / 2);
    for (size_t i = history_.size() - static_cast<size_t>(keep); i + 1 < history_.size(); ++i)
      model_.step({history_[i]}, state_);
  }
  logits_ = model_.step({id}, state_).to_vector();
  if (history_.size() > static_cast<size_t>(ctx))
    history_.erase(history_.begin());  // only what a rebuild reads
}

int32_t Generator::sample(Rng& rng, float temperature, int64_t top_k) const {
  if (logits_.empty()) throw Error("Generator::sample: feed at least one token first");
  int64_t V = static_cast<int64_t>(logits_.size());
  std::vector<int32_t> order(static_cast<size_t>(V - 1));
  std::iota(order.begin(), order.end(), 1);  // every id but unknown (0)
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits_[a] > logits_[b]; });
  if (temperature <= 0.0f) return order[0];
  size_t keep = top_k > 0 ? std::min<size_t>(order.size(), static_cast<size_t>(top_k)) : order.size();
  std::vector<double> weights(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    weights[i] = std::exp((static_cast<double>(logits_[order[i]]) - logits_[order[0]]) / temperature);
    total += weights[i];
  }
  double u = static_cast<double>(rng.uniform()) * total;
  for (size_t i = 0; i < keep; ++i) {
    u -= weights[i];
    if (u < 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace lg::charlm
