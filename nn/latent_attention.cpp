// nn/latent_attention.cpp: latent attention: chunked training path, naive reference, recurrent step.
//
// Formulas and names follow docs/latent-attention.md ("Definition"; "the spec" below). Shapes use
// B batch, H heads, T positions, d = D / H head size, M latents, W window, C chunk length.
#include "nn/latent_attention.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "nn/rope.h"

namespace lg::nn {

static constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ============================================================================
// Helpers
// ============================================================================

// t (...) repeated along a new leading batch axis: (B, ...). matmul wants equal batch axes;
// broadcasting through add gives the copy and, in backward, the sum over the batch.
static Tensor expand_batch(const Tensor& t, int64_t batch) {
  Shape shape = t.shape();
  shape.insert(shape.begin(), batch);
  return add(Tensor::zeros(shape), t);
}

// max(a, b) elementwise, no graph (the stabiliser is a constant to autograd).
static Tensor elementwise_max(const Tensor& a, const Tensor& b) {
  Tensor ac = contiguous_copy(a);
  Tensor bc = b.is_contiguous() ? b : contiguous_copy(b);
  float* pa = ac.data();
  const float* pb = bc.data();
  for (int64_t i = 0; i < ac.numel(); ++i) pa[i] = std::max(pa[i], pb[i]);
  return ac;
}

// (C, L) with 1 where query t = first_query + i must NOT see key s = first_key + j in the
// window: s in the future (s > t) or too old (s <= t - W).
static Tensor outside_window_mask(int64_t first_query, int64_t queries, int64_t first_key, int64_t keys,
                                  int64_t window) {
  Tensor mask = Tensor::zeros({queries, keys});
  for (int64_t i = 0; i < queries; ++i)
    for (int64_t j = 0; j < keys; ++j) {
      int64_t t = first_query + i, s = first_key + j;
      if (s > t || s <= t - window) mask.data()[i * keys + j] = 1.0f;
    }
  return mask;
}

// x cut along `axis` into pieces of `chunk` rows (the last may be shorter): one slice each.
// (A slice's backward adds into its input's gradient in place, so N slices cost O(T) in all.)
static std::vector<Tensor> chunks_of(const Tensor& x, int64_t axis, int64_t chunk) {
  std::vector<Tensor> pieces;
  for (int64_t start = 0; start < x.size(axis); start += chunk)
    pieces.push_back(slice(x, axis, start, std::min(x.size(axis), start + chunk)));
  return pieces;
}

// Rows [start, end) along axis 2 of the tensor whose chunks (of `chunk` rows) are `pieces`.
static Tensor rows_of_chunks(const std::vector<Tensor>& pieces, int64_t chunk, int64_t start, int64_t end) {
  std::vector<Tensor> parts;
  for (int64_t i = start / chunk; i * chunk < end; ++i) {
    const int64_t lo = std::max(start, i * chunk) - i * chunk,
                  hi = std::min(end, (i + 1) * chunk) - i * chunk;
    parts.push_back(lo == 0 && hi == pieces[i].size(2) ? pieces[i] : slice(pieces[i], 2, lo, hi));
  }
  return parts.size() == 1 ? parts[0] : concat(parts, 2);
}

static void check_inputs(const LatentInputs& in, const char* who) {
  const Tensor* all[] = {&in.queries, &in.keys, &in.rotated_keys, &in.values};
  for (const Tensor* t : all)
    if (t->dim() != 4 || t->shape() != in.queries.shape())
      throw Error(
          fmt::format("{}: queries, keys, rotated keys and values must share one (B, H, T, d) "
                      "shape, got {} and {}",
                      who, shape_str(in.queries.shape()), shape_str(t->shape())));
  if (in.latents.dim() != 3 || in.latents.size(0) != in.queries.size(1) ||
      in.latents.size(2) != in.queries.size(3))
    throw Error(fmt::format("{}: latents must be (H, M, d) for inputs {}, got {}", who,
                            shape_str(in.queries.shape()), shape_str(in.latents.shape())));
}

// ============================================================================
// Chunked core (spec, "Chunked"): the training algorithm, composed from core ops
// ============================================================================
//
// Positions are processed in chunks [c0, c1). Before a chunk, the carried state holds, per
// (batch, head, latent), the sums over every earlier position s < c0, all relative to a
// stabiliser mu (detached; any constant per (b, h, m) cancels in the ratios Kl = SK / Z,
// Vl = SV / Z, so only rounding depends on it):
//   Z  (B, H, 1, M)  sum exp(a - mu)
//   SK (B, H, M, d)  sum exp(a - mu) R_s k_s
//   SV (B, H, M, d)  sum exp(a - mu) v_s
// Inside the chunk, E = exp(A - mu) is (C, M), and position
// t of the chunk adds the chunk's s <= t through the causal mask:
//   Zc     = Z + cumsum_s E                                         (C, M)
//   scores = (Qr SK^T + ((Qr Kr^T) masked) E) / Zc / sqrt(d)        (C, M)  = (R_t q) . Kl_{t,m} / sqrt(d)
//   P' = P / Zc;   O = P' SV + ((P' E^T) masked) V                  (C, d)  = sum_m P Vl_{t,m}
// which are the definitions of Kl and Vl with the sums split at c0. Every product is a
// small matmul: O(C (C + M + W) d) per chunk, O(T (C + M + W) d) in all.
//
// Range: mu is one max per chunk, so Zc of a position whose own prefix scores all lie far
// below a later score of its chunk is tiny. "Any stabiliser cancels" holds in exact
// arithmetic; in float, past a spread of ~40 the backward of a / Zc (which squares Zc)
// overflows, past ~80 exp underflows to 0 and the forward is 0 / 0. latent_attention_fused
// keeps one max per position and has no such limit.
Tensor latent_attention_chunked(const LatentInputs& in, int64_t window, int64_t chunk) {
  check_inputs(in, "latent_attention_chunked");
  if (window < 0 || chunk < 1)
    throw Error(fmt::format("latent_attention_chunked: need window >= 0 and chunk >= 1, got {} and {}",
                            window, chunk));
  const int64_t B = in.queries.size(0), H = in.queries.size(1), T = in.queries.size(2);
  const int64_t d = in.queries.size(3), M = in.latents.size(1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  Tensor latents_t = transpose(expand_batch(in.latents, B), -1, -2);  // (B, H, d, M)
  std::vector<Tensor> queries = chunks_of(in.queries, 2, chunk);      // each (B, H, C, d)
  std::vector<Tensor> keys = chunks_of(in.keys, 2, chunk);
  std::vector<Tensor> rotated_keys = chunks_of(in.rotated_keys, 2, chunk);
  std::vector<Tensor> values = chunks_of(in.values, 2, chunk);

  Tensor running_max;  // (B, H, 1, M)  mu, no graph
  Tensor normaliser;   // (B, H, 1, M)  Z
  Tensor key_sum;      // (B, H, M, d)  SK
  Tensor value_sum;    // (B, H, M, d)  SV
  std::vector<Tensor> outputs;
  for (size_t n = 0; n < queries.size(); ++n) {
    const int64_t c0 = static_cast<int64_t>(n) * chunk, c1 = std::min(T, c0 + chunk), C = c1 - c0;
    const bool first = n == 0;                      // nothing carried yet
    const Tensor& q = queries[n];                   // (B, H, C, d)  R_t q_t
    const Tensor& k_rot = rotated_keys[n];          // (B, H, C, d)  R_s k_s
    const Tensor& v = values[n];                    // (B, H, C, d)
    Tensor A = matmul(keys[n], latents_t) * scale;  // (B, H, C, M)  a = l . k / sqrt(d), un-rotated k

    // New stabiliser mu' = max(mu, max over the chunk); carried sums move from mu to mu'.
    Tensor new_max, rescale, rescale_rows;  // (B, H, 1, M), (B, H, 1, M), (B, H, M, 1)
    {
      NoGradGuard no_grad;
      Tensor chunk_max = max(A.detach(), 2, true);
      new_max = first ? chunk_max : elementwise_max(running_max, chunk_max);
      if (!first) {
        rescale = exp(running_max - new_max);
        rescale_rows = reshape(rescale, {B, H, M, 1});
      }
    }
    if (!first) {
      normaliser = normaliser * rescale;
      key_sum = key_sum * rescale_rows;
      value_sum = value_sum * rescale_rows;
    }
    Tensor E = exp(A - new_max);        // (B, H, C, M)
    Tensor prefix_norm = cumsum(E, 2);  // (B, H, C, M)  Zc
    if (!first) prefix_norm = prefix_norm + normaliser;
    Tensor future = causal_mask(C);  // (C, C) 1 where s > t

    // (R_t q_t) . (R_s k_s) for the chunk's own keys, and for W > 0 also the W - 1 before it.
    Tensor qk_chunk;       // (B, H, C, C)
    Tensor window_scores;  // (B, H, C, L) over keys [w0, c1), L = c1 - w0
    Tensor window_values;  // (B, H, L, d)
    if (window > 0) {
      const int64_t w0 = std::max<int64_t>(0, c0 - window + 1);
      Tensor k_window = rows_of_chunks(rotated_keys, chunk, w0, c1);  // (B, H, L, d)
      window_values = rows_of_chunks(values, chunk, w0, c1);
      Tensor qk = matmul(q, transpose(k_window, -1, -2));  // (B, H, C, L)
      qk_chunk = slice(qk, -1, c0 - w0, c1 - w0);
      window_scores = masked_fill(qk * scale, outside_window_mask(c0, C, w0, c1 - w0, window), kNegInf);
    } else {
      qk_chunk = matmul(q, transpose(k_rot, -1, -2));
    }

    // Scores against the latent keys Kl_{t,m} of each position t.
    Tensor numerator = matmul(masked_fill(qk_chunk, future, 0.0f), E);  // (B, H, C, M)
    if (!first) numerator = numerator + matmul(q, transpose(key_sum, -1, -2));
    Tensor latent_scores = numerator / prefix_norm * scale;  // (B, H, C, M)

    // One softmax over [latents ; window positions].
    Tensor probs = softmax(window > 0 ? concat({latent_scores, window_scores}, -1) : latent_scores);
    Tensor latent_probs = window > 0 ? slice(probs, -1, 0, M) : probs;                    // (B, H, C, M)
    Tensor read = latent_probs / prefix_norm;                                             // (B, H, C, M)  P'
    Tensor o = matmul(masked_fill(matmul(read, transpose(E, -1, -2)), future, 0.0f), v);  // (B, H, C, d)
    if (!first) o = o + matmul(read, value_sum);
    if (window > 0) o = o + matmul(slice(probs, -1, M, probs.size(-1)), window_values);
    outputs.push_back(o);

    if (c1 < T) {                         // carry the chunk into the sums
      Tensor E_t = transpose(E, -1, -2);  // (B, H, M, C)
      key_sum = first ? matmul(E_t, k_rot) : key_sum + matmul(E_t, k_rot);
      value_sum = first ? matmul(E_t, v) : value_sum + matmul(E_t, v);
      normaliser = slice(prefix_norm, 2, C - 1, C);
      running_max = new_max;
    }
  }
  return outputs.size() == 1 ? outputs[0] : concat(outputs, 2);  // (B, H, T, d)
}

// ============================================================================
// Naive core: the definition, term by term (tests only)
// ============================================================================

Tensor latent_attention_naive(const LatentInputs& in, int64_t window) {
  check_inputs(in, "latent_attention_naive");
  const int64_t B = in.queries.size(0), H = in.queries.size(1), T = in.queries.size(2);
  const int64_t d = in.queries.size(3), M = in.latents.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  Tensor q = contiguous_copy(in.queries), k = contiguous_copy(in.keys);
  Tensor k_rot = contiguous_copy(in.rotated_keys), v = contiguous_copy(in.values);
  Tensor lat = contiguous_copy(in.latents);
  Tensor out = Tensor::empty({B, H, T, d});
  auto dot = [d](const float* a, const float* b) {
    double acc = 0;
    for (int64_t i = 0; i < d; ++i) acc += static_cast<double>(a[i]) * b[i];
    return acc;
  };

  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t base = (b * H + h) * T * d;  // row t of head (b, h) starts at base + t d
      const float* l = lat.data() + h * M * d;
      // w[m][t][s] = exp(a_{m,s}) / sum_{s' <= t} exp(a_{m,s'}) for s <= t, 0 for s > t.
      std::vector<double> w(M * T * T, 0.0);
      for (int64_t m = 0; m < M; ++m) {
        std::vector<double> a(T);
        for (int64_t s = 0; s < T; ++s) a[s] = dot(l + m * d, k.data() + base + s * d) * scale;
        for (int64_t t = 0; t < T; ++t) {
          double mx = *std::max_element(a.begin(), a.begin() + t + 1), z = 0;
          for (int64_t s = 0; s <= t; ++s) z += std::exp(a[s] - mx);
          for (int64_t s = 0; s <= t; ++s) w[(m * T + t) * T + s] = std::exp(a[s] - mx) / z;
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        const float* qt = q.data() + base + t * d;
        // Latent keys and values at time t.
        std::vector<double> Kl(M * d, 0.0), Vl(M * d, 0.0);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t s = 0; s <= t; ++s)
            for (int64_t i = 0; i < d; ++i) {
              Kl[m * d + i] += w[(m * T + t) * T + s] * k_rot.data()[base + s * d + i];
              Vl[m * d + i] += w[(m * T + t) * T + s] * v.data()[base + s * d + i];
            }
        // Scores: latents first, then the window positions t - W < s <= t.
        std::vector<double> scores;
        for (int64_t m = 0; m < M; ++m) {
          double acc = 0;
          for (int64_t i = 0; i < d; ++i) acc += qt[i] * Kl[m * d + i];
          scores.push_back(acc * scale);
        }
        const int64_t first_s = std::max<int64_t>(0, t - window + 1);
        for (int64_t s = first_s; window > 0 && s <= t; ++s)
          scores.push_back(dot(qt, k_rot.data() + base + s * d) * scale);
        double mx = *std::max_element(scores.begin(), scores.end()), z = 0;
        for (double& sc : scores) z += (sc = std::exp(sc - mx));
        for (int64_t i = 0; i < d; ++i) {
          double acc = 0;
          for (int64_t m = 0; m < M; ++m) acc += scores[m] / z * Vl[m * d + i];
          for (int64_t s = first_s, j = M; window > 0 && s <= t; ++s, ++j)
            acc += scores[j] / z * v.data()[base + s * d + i];
          out.data()[base + t * d + i] = static_cast<float>(acc);
        }
      }
    }
  return out;
}

// ============================================================================
// The layer
// ============================================================================

LatentAttention::LatentAttention(const BlockConfig& config, Rng& rng)
    : config_(config), head_dim_(config.heads > 0 ? config.dim / config.heads : 0) {
  const int64_t D = config.dim, H = config.heads;
  if (H < 1 || D % H != 0 || head_dim_ % 2 != 0)
    throw Error(
        fmt::format("LatentAttention: dim {} must split into {} heads of even size (RoPE pairs)", D, H));
  if (config.latents < 1 || config.window < 0 || config.chunk < 1)
    throw Error(fmt::format("LatentAttention: need latents >= 1, window >= 0, chunk >= 1; got {}, {}, {}",
                            config.latents, config.window, config.chunk));
  qkv_ = register_module("qkv", std::make_shared<Linear>(D, 3 * D, config.bias, rng));
  latents_ = register_parameter("latents", randn({config.latents, D}, rng, kLatentInitStd));
  const float residual_std =
      0.02f / std::sqrt(2.0f * static_cast<float>(std::max<int64_t>(config.layers, 1)));
  proj_ = register_module("proj", std::make_shared<Linear>(D, D, config.bias, rng, residual_std));
}

Tensor LatentAttention::project_packed(const Tensor& x, int64_t first_position) const {
  if (x.dim() != 3 || x.size(2) != config_.dim)
    throw Error(
        fmt::format("LatentAttention: input must be (B, T, {}), got {}", config_.dim, shape_str(x.shape())));
  // (B, T, 3D), groups queries, keys, values -> (4, B, H, T, d): R q, k, R k, v.
  return split_heads_rope(qkv_->forward(x), config_.heads, {{0, true}, {1, false}, {1, true}, {2, false}},
                          first_position, config_.rope_base);
}

Tensor LatentAttention::latent_bank() const {
  // (M, D) -> (M, H, d) -> (H, M, d)
  return contiguous(permute(reshape(latents_, {config_.latents, config_.heads, head_dim_}), {1, 0, 2}));
}

LatentInputs LatentAttention::project(const Tensor& x, int64_t first_position) const {
  std::vector<Tensor> parts = unstack(project_packed(x, first_position));
  LatentInputs in;
  in.queries = parts[0];
  in.keys = parts[1];
  in.rotated_keys = parts[2];
  in.values = parts[3];
  in.latents = latent_bank();
  return in;
}

Tensor LatentAttention::output(const Tensor& o) const {
  const int64_t B = o.size(0), H = o.size(1), T = o.size(2), d = o.size(3);
  Tensor joined = reshape(permute(o, {0, 2, 1, 3}), {B, T, H * d});  // (B, T, D), heads side by side
  return proj_->forward(joined);                                     // (B, T, D)
}

Tensor LatentAttention::forward(const Tensor& x, int64_t first_position) {
  if (core == Core::Fused)
    return proj_->forward(latent_attention_fused(project_packed(x, first_position), latent_bank(), config_.window));
  return output(latent_attention_chunked(project(x, first_position), config_.window, config_.chunk));
}

Tensor LatentAttention::forward_naive(const Tensor& x, int64_t first_position) {
  return output(latent_attention_naive(project(x, first_position), config_.window));
}

std::unique_ptr<AttentionState> LatentAttention::make_state(int64_t batch) const {
  auto state = std::make_unique<LatentAttentionState>();
  const int64_t H = config_.heads, M = config_.latents, d = head_dim_, W = config_.window;
  state->batch = batch;
  state->heads = H;
  state->latents = M;
  state->head_dim = d;
  state->window = W;
  state->running_max.assign(batch * H * M, kNegInf);  // exp(-inf - mu) = 0: the empty prefix
  state->normaliser.assign(batch * H * M, 0.0f);
  state->key_sum.assign(batch * H * M * d, 0.0f);
  state->value_sum.assign(batch * H * M * d, 0.0f);
  state->window_keys.assign(batch * H * W * d, 0.0f);
  state->window_values.assign(batch * H * W * d, 0.0f);
  return state;
}

// The recurrent path (spec, "Recurrent"): position p updates each latent's running sums with
// its own key and value (rescaling them when the running max moves), then reads.
Tensor LatentAttention::step(const Tensor& x, AttentionState& base_state) {
  auto* state = dynamic_cast<LatentAttentionState*>(&base_state);
  if (!state) throw Error("LatentAttention::step: the state was not made by LatentAttention::make_state");
  const int64_t B = state->batch, H = config_.heads, M = config_.latents, d = head_dim_, W = config_.window;
  if (x.dim() != 3 || x.size(0) != B || x.size(1) != 1 || x.size(2) != config_.dim)
    throw Error(fmt::format("LatentAttention::step: input must be ({}, 1, {}), got {}", B, config_.dim,
                            shape_str(x.shape())));
  NoGradGuard no_grad;
  const int64_t p = state->position;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // Same projections and rotations as forward(), at the one position p.
  Tensor qkv = reshape(qkv_->forward(x), {B, 3 * H, 1, d});    // (B, 3H, 1, d)
  Tensor q = rope(slice(qkv, 1, 0, H), p, config_.rope_base);  // (B, H, 1, d)
  Tensor k = contiguous_copy(slice(qkv, 1, H, 2 * H));         // (B, H, 1, d)
  Tensor k_rot = rope(k, p, config_.rope_base);                // (B, H, 1, d)
  Tensor v = contiguous_copy(slice(qkv, 1, 2 * H, 3 * H));     // (B, H, 1, d)
  Tensor lat = contiguous_copy(latents_);                      // (M, D)
  Tensor o = Tensor::empty({B, H, 1, d});                      // (B, H, 1, d)

  const int64_t slot = W > 0 ? p % W : 0;
  const int64_t window_start = std::max<int64_t>(0, p - W + 1);  // positions [window_start, p] in the ring
  std::vector<float> scores(M + W);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t bh = b * H + h;
      const float* qh = q.data() + bh * d;
      const float* kh = k.data() + bh * d;
      const float* krh = k_rot.data() + bh * d;
      const float* vh = v.data() + bh * d;
      float* mu = state->running_max.data() + bh * M;
      float* Z = state->normaliser.data() + bh * M;
      float* SK = state->key_sum.data() + bh * M * d;
      float* SV = state->value_sum.data() + bh * M * d;
      // Write: a = l_m . k_p / sqrt(d); mu' = max(mu, a); sums *= exp(mu - mu'); add exp(a - mu') (key,
      // value).
      for (int64_t m = 0; m < M; ++m) {
        const float* l = lat.data() + m * config_.dim + h * d;
        float a = 0;
        for (int64_t i = 0; i < d; ++i) a += l[i] * kh[i];
        a *= scale;
        const float new_mu = std::max(mu[m], a);
        const float rescale = std::exp(mu[m] - new_mu), e = std::exp(a - new_mu);
        mu[m] = new_mu;
        Z[m] = Z[m] * rescale + e;
        for (int64_t i = 0; i < d; ++i) {
          SK[m * d + i] = SK[m * d + i] * rescale + e * krh[i];
          SV[m * d + i] = SV[m * d + i] * rescale + e * vh[i];
        }
      }
      float* ring_k = state->window_keys.data() + bh * W * d;
      float* ring_v = state->window_values.data() + bh * W * d;
      if (W > 0) {
        std::copy_n(krh, d, ring_k + slot * d);
        std::copy_n(vh, d, ring_v + slot * d);
      }
      // Read: softmax over [(R_p q) . SK_m / Z_m ; (R_p q) . R_s k_s for the window] / sqrt(d).
      int64_t n = 0;
      for (int64_t m = 0; m < M; ++m, ++n) {
        float acc = 0;
        for (int64_t i = 0; i < d; ++i) acc += qh[i] * SK[m * d + i];
        scores[n] = acc / Z[m] * scale;
      }
      for (int64_t s = window_start; W > 0 && s <= p; ++s, ++n) {
        const float* ks = ring_k + (s % W) * d;
        float acc = 0;
        for (int64_t i = 0; i < d; ++i) acc += qh[i] * ks[i];
        scores[n] = acc * scale;
      }
      const float mx = *std::max_element(scores.begin(), scores.begin() + n);
      float z = 0;
      for (int64_t j = 0; j < n; ++j) z += (scores[j] = std::exp(scores[j] - mx));
      float* oh = o.data() + bh * d;
      std::fill_n(oh, d, 0.0f);
      for (int64_t m = 0; m < M; ++m) {
        const float weight = scores[m] / (z * Z[m]);  // p_m times Vl_m = SV_m / Z_m
        for (int64_t i = 0; i < d; ++i) oh[i] += weight * SV[m * d + i];
      }
      for (int64_t s = window_start, j = M; W > 0 && s <= p; ++s, ++j) {
        const float* vs = ring_v + (s % W) * d;
        for (int64_t i = 0; i < d; ++i) oh[i] += scores[j] / z * vs[i];
      }
    }
  state->position = p + 1;
  return output(o);  // (B, 1, D)
}

}  // namespace lg::nn
