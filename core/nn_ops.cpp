// core/nn_ops.cpp: fused network primitives: embedding, softmax, log_softmax, cross-entropy, layer_norm.
//
// Each is one op with a hand-written backward because composing it from elementwise
// ops would store several activations and lose precision (log of a softmax).
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "core/fastmath.h"
#include "core/ops.h"

namespace lg {

static constexpr int64_t kRowsGrain = 64;  // rows per thread before parallelising a row loop

// x viewed as (rows, cols) over its last axis.
static void rows_cols(const Tensor& x, const char* op, int64_t& rows, int64_t& cols) {
  if (x.dim() < 1) throw Error(fmt::format("{}: needs at least one axis, got a scalar", op));
  cols = x.size(-1);
  rows = cols ? x.numel() / cols : 0;
}

// ============================================================================
// Embedding: out[i, :] = weight[ids[i], :]; backward scatter-adds rows.
// ============================================================================

Tensor embedding(const Tensor& weight, const std::vector<int32_t>& ids, const Shape& ids_shape) {
  if (weight.dim() != 2)
    throw Error(fmt::format("embedding: weight must be (V, D), got {}", shape_str(weight.shape())));
  if (shape_numel(ids_shape) != static_cast<int64_t>(ids.size()))
    throw Error(fmt::format("embedding: {} ids for ids shape {}", ids.size(), shape_str(ids_shape)));
  int64_t V = weight.size(0), D = weight.size(1);
  for (int32_t id : ids)
    if (id < 0 || id >= V)
      throw Error(fmt::format("embedding: index {} out of range for weight {}", id, shape_str(weight.shape())));
  Tensor w = weight.is_contiguous() ? weight : contiguous_copy(weight);
  Shape out_shape = ids_shape;
  out_shape.push_back(D);
  Tensor out = Tensor::empty(out_shape);
  int64_t n = static_cast<int64_t>(ids.size());
#pragma omp parallel for schedule(static) if (n > kRowsGrain)
  for (int64_t i = 0; i < n; ++i) std::copy_n(w.data() + ids[i] * D, D, out.data() + i * D);
  return attach_node(out, "embedding", {weight}, [weight, ids, V, D](const Tensor& g) {
    Tensor gc = g.is_contiguous() ? g : contiguous_copy(g);
    Tensor gw = Tensor::zeros({V, D});
    // Parallel over columns: each thread owns a column band, so no two threads add to the
    // same element and the order of additions is fixed.
    int64_t n = static_cast<int64_t>(ids.size());
#pragma omp parallel for schedule(static) if (n * D > (1 << 15))
    for (int64_t c0 = 0; c0 < D; c0 += 16)
      for (int64_t i = 0; i < n; ++i) {
        float* dst = gw.data() + ids[i] * D;
        const float* src = gc.data() + i * D;
        for (int64_t c = c0; c < std::min(D, c0 + 16); ++c) dst[c] += src[c];
      }
    accumulate_grad(weight, std::move(gw));
  });
}

// ============================================================================
// Softmax and log-softmax over the last axis
// ============================================================================

// y[r, :] = softmax(x[r, :]) (log_out: log-softmax), with the row max subtracted first.
static Tensor softmax_forward(const Tensor& x, bool log_out, const char* op) {
  int64_t rows, cols;
  rows_cols(x, op, rows, cols);
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  Tensor y = Tensor::empty(x.shape());
#pragma omp parallel for schedule(static) if (rows > kRowsGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = xc.data() + r * cols;
    float* out = y.data() + r * cols;
    float mx = max_of(in, cols);
    if (mx == -std::numeric_limits<float>::infinity()) mx = 0.0f;  // a fully masked row
    std::copy_n(in, cols, out);
    const float z = exp_shift_sum(out, cols, mx);
    if (log_out) {
      float lz = std::log(z) + mx;
      for (int64_t j = 0; j < cols; ++j) out[j] = in[j] - lz;
    } else {
      float inv = 1.0f / z;
      for (int64_t j = 0; j < cols; ++j) out[j] *= inv;
    }
  }
  return y;
}

Tensor softmax(const Tensor& x) {
  Tensor y = softmax_forward(x, false, "softmax");
  Tensor ys = y.detach();
  return attach_node(y, "softmax", {x}, [x, ys](const Tensor& g) {
    // dx = y * (g - sum(g * y))
    int64_t rows, cols;
    rows_cols(ys, "softmax", rows, cols);
    Tensor gc = g.is_contiguous() ? g : contiguous_copy(g);
    Tensor gx = Tensor::empty(ys.shape());
#pragma omp parallel for schedule(static) if (rows > kRowsGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const float* py = ys.data() + r * cols;
      const float* pg = gc.data() + r * cols;
      float* px = gx.data() + r * cols;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < cols; ++j) dot += pg[j] * py[j];
      for (int64_t j = 0; j < cols; ++j) px[j] = py[j] * (pg[j] - dot);
    }
    accumulate_grad(x, std::move(gx));
  });
}

Tensor log_softmax(const Tensor& x) {
  Tensor y = softmax_forward(x, true, "log_softmax");
  Tensor ys = y.detach();
  return attach_node(y, "log_softmax", {x}, [x, ys](const Tensor& g) {
    // dx = g - softmax(x) * sum(g)
    int64_t rows, cols;
    rows_cols(ys, "log_softmax", rows, cols);
    Tensor gc = g.is_contiguous() ? g : contiguous_copy(g);
    Tensor gx = Tensor::empty(ys.shape());
#pragma omp parallel for schedule(static) if (rows > kRowsGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const float* py = ys.data() + r * cols;
      const float* pg = gc.data() + r * cols;
      float* px = gx.data() + r * cols;
      float total = 0.0f;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < cols; ++j) total += pg[j];
      for (int64_t j = 0; j < cols; ++j) px[j] = pg[j] - fast_exp(py[j]) * total;
    }
    accumulate_grad(x, std::move(gx));
  });
}

// ============================================================================
// Cross-entropy from logits: mean over rows of -log softmax(logits)[target]
// ============================================================================

Tensor cross_entropy(const Tensor& logits, const std::vector<int32_t>& targets) {
  int64_t rows, V;
  rows_cols(logits, "cross_entropy", rows, V);
  if (static_cast<int64_t>(targets.size()) != rows)
    throw Error(fmt::format("cross_entropy: {} targets for logits {} ({} rows)", targets.size(),
                            shape_str(logits.shape()), rows));
  if (rows == 0) throw Error("cross_entropy: no rows");
  for (int32_t t : targets)
    if (t < 0 || t >= V)
      throw Error(fmt::format("cross_entropy: target {} out of range for logits {}", t,
                              shape_str(logits.shape())));
  // One pass per row: the softmax probabilities (saved for backward) and the row's loss
  // log(sum exp(x - max)) + max - x[target].
  Tensor lc = logits.is_contiguous() ? logits : contiguous_copy(logits);
  Tensor probs = Tensor::empty({rows, V});
  std::vector<double> row_loss(rows);
#pragma omp parallel for schedule(static) if (rows > kRowsGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = lc.data() + r * V;
    float* p = probs.data() + r * V;
    const float mx = max_of(in, V);
    std::copy_n(in, V, p);
    const float z = exp_shift_sum(p, V, mx);
    float inv = 1.0f / z;
    for (int64_t j = 0; j < V; ++j) p[j] *= inv;
    row_loss[r] = std::log(static_cast<double>(z)) + mx - in[targets[r]];
  }
  double total = 0;
  for (double l : row_loss) total += l;
  Tensor out = Tensor::full({}, static_cast<float>(total / rows));
  return attach_node(out, "cross_entropy", {logits}, [logits, probs, targets, rows, V](const Tensor& g) {
    // d loss / d logits = (softmax - onehot(target)) / rows
    float scale = g.item() / static_cast<float>(rows);
    Tensor gx = Tensor::empty(logits.shape());
#pragma omp parallel for schedule(static) if (rows > kRowsGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const float* p = probs.data() + r * V;
      float* d = gx.data() + r * V;
      for (int64_t j = 0; j < V; ++j) d[j] = p[j] * scale;
      d[targets[r]] -= scale;
    }
    accumulate_grad(logits, std::move(gx));
  });
}

// ============================================================================
// LayerNorm over the last axis: y = (x - mean) * rstd * gamma + beta
// ============================================================================

constexpr int64_t kRowBlock = 4;  // layer_norm's rows per block

Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) {
  int64_t rows, D;
  rows_cols(x, "layer_norm", rows, D);
  if (gamma.shape() != Shape{D} || beta.shape() != Shape{D})
    throw Error(fmt::format("layer_norm: gamma {} and beta {} must be ({},) for input {}",
                            shape_str(gamma.shape()), shape_str(beta.shape()), D, shape_str(x.shape())));
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  Tensor gc = gamma.is_contiguous() ? gamma : contiguous_copy(gamma);
  Tensor bc = beta.is_contiguous() ? beta : contiguous_copy(beta);
  Tensor y = Tensor::empty(x.shape());
  // Saved for backward, as in llm.c: per-row mean and reciprocal standard deviation.
  Tensor mean_rstd = Tensor::empty({rows, 2});
  const float* pgamma = gc.data();
  const float* pbeta = bc.data();
  float* pstats = mean_rstd.data();
  // Rows go kRowBlock at a time: each row's two sums are a chain of dependent additions, and
  // four rows' chains side by side keep the adder busy (a row of 128 floats is short).
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static) if (rows > kRowsGrain)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * kRowBlock, nr = std::min(kRowBlock, rows - r0);
    float m[kRowBlock] = {}, v[kRowBlock] = {};
    for (int64_t k = 0; k < nr; ++k) {
      const float* in = xc.data() + (r0 + k) * D;
      float mk = 0.0f;
#pragma omp simd reduction(+ : mk)
      for (int64_t j = 0; j < D; ++j) mk += in[j];
      m[k] = mk / static_cast<float>(D);
    }
    for (int64_t k = 0; k < nr; ++k) {
      const float* in = xc.data() + (r0 + k) * D;
      const float mk = m[k];
      float vk = 0.0f;
#pragma omp simd reduction(+ : vk)
      for (int64_t j = 0; j < D; ++j) vk += (in[j] - mk) * (in[j] - mk);
      v[k] = vk / static_cast<float>(D);
    }
    for (int64_t k = 0; k < nr; ++k) {
      const int64_t r = r0 + k;
      const float* in = xc.data() + r * D;
      float* out = y.data() + r * D;
      const float mk = m[k], rs = 1.0f / std::sqrt(v[k] + eps);
      for (int64_t j = 0; j < D; ++j) out[j] = (in[j] - mk) * rs * pgamma[j] + pbeta[j];
      pstats[2 * r] = mk;
      pstats[2 * r + 1] = rs;
    }
  }
  return attach_node(y, "layer_norm", {x, gamma, beta}, [x, xc, gamma, gc, beta, mean_rstd, rows, D](const Tensor& g) {
    Tensor dy = g.is_contiguous() ? g : contiguous_copy(g);
    Tensor dx = Tensor::empty(x.shape());
    Tensor dgamma = Tensor::zeros({D}), dbeta = Tensor::zeros({D});
    const float* pgamma = gc.data();
    const float* pstats = mean_rstd.data();
    float* pdgamma = dgamma.data();
    float* pdbeta = dbeta.data();
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * gamma
#pragma omp parallel for schedule(static) if (rows > kRowsGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const float* in = xc.data() + r * D;
      const float* d = dy.data() + r * D;
      float m = pstats[2 * r], rs = pstats[2 * r + 1];
      float mean_dxhat = 0.0f, mean_dxhat_xhat = 0.0f;
#pragma omp simd reduction(+ : mean_dxhat, mean_dxhat_xhat)
      for (int64_t j = 0; j < D; ++j) {
        float dxhat = d[j] * pgamma[j];
        mean_dxhat += dxhat;
        mean_dxhat_xhat += dxhat * (in[j] - m) * rs;
      }
      mean_dxhat /= static_cast<float>(D);
      mean_dxhat_xhat /= static_cast<float>(D);
      float* out = dx.data() + r * D;
      for (int64_t j = 0; j < D; ++j) {
        float xhat = (in[j] - m) * rs;
        out[j] = rs * (d[j] * pgamma[j] - mean_dxhat - xhat * mean_dxhat_xhat);
      }
    }
    // Parameter gradients sum over rows: serial in rows, so the order is fixed.
    for (int64_t r = 0; r < rows; ++r) {
      const float* in = xc.data() + r * D;
      const float* d = dy.data() + r * D;
      float m = pstats[2 * r], rs = pstats[2 * r + 1];
      for (int64_t j = 0; j < D; ++j) {
        pdgamma[j] += d[j] * (in[j] - m) * rs;
        pdbeta[j] += d[j];
      }
    }
    accumulate_grad(x, std::move(dx));
    accumulate_grad(gamma, std::move(dgamma));
    accumulate_grad(beta, std::move(dbeta));
  });
}

}  // namespace lg
