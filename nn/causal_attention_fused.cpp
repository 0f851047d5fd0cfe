// nn/causal_attention_fused.cpp: MHA's core softmax(q k^T / sqrt(d) + causal mask) v as one op with its backward.
//
// The composed path (causal_attention_composed, mha.cpp) records five nodes per layer and
// stores the (B, H, T, T) scores, the masked scores and the probabilities, and runs B H
// small sgemms one after another. This op runs every (batch, head) on its own thread, skips
// the masked half, and saves only the output and one log-sum-exp per row: the backward
// recomputes the probabilities (FlashAttention's trick, Dao et al. 2022, Alg. 2 without tiling).
//
// Per head, rows t = 0..T-1, s <= t, with scale = 1 / sqrt(d):
//   S_ts = scale q_t . k_s,   lse_t = log sum_s exp S_ts,   P_ts = exp(S_ts - lse_t),   o_t = sum_s P_ts v_s
// Backward (softmax rule, D_t = sum_s P_ts dP_ts = dO_t . o_t):
//   dP_ts = dO_t . v_s,   dS_ts = P_ts (dP_ts - D_t),
//   dq_t = scale sum_s dS_ts k_s,   dk_s += scale dS_ts q_t,   dv_s += P_ts dO_t.
// Scores of a row are computed against a transposed copy of the head's keys, K^T (d, T), so
// the inner loop runs over s with unit stride and needs no horizontal sums.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/fastmath.h"
#include "nn/mha.h"

namespace lg::nn {

namespace {

// Rows of one (batch, head) of a (B, H, T, d) tensor with unit stride along d.
struct HeadView {
  const float* data;
  int64_t row_stride;
  const float* row(int64_t t) const { return data + t * row_stride; }
};

HeadView head_view(const Tensor& x, int64_t bh, int64_t H) {
  const int64_t b = bh / H, h = bh % H;
  return {x.data() + b * x.strides()[0] + h * x.strides()[1], x.strides()[2]};
}

// x with unit stride along its last axis (a copy only when it has not).
Tensor unit_last_stride(const Tensor& x) { return x.strides()[3] == 1 ? x : contiguous_copy(x); }

// out (n) = scale * sum_i a_i rows_i, rows_i = mat + i * ld (i < d): a row of scores from K^T.
inline void row_scores(const float* a, const float* mat, int64_t ld, int64_t d, int64_t n, float scale,
                       float* out) {
  std::fill_n(out, n, 0.0f);
  for (int64_t i = 0; i < d; ++i) {
    const float ai = a[i] * scale;
    const float* r = mat + i * ld;
#pragma omp simd
    for (int64_t s = 0; s < n; ++s) out[s] += ai * r[s];
  }
}

inline void axpy(float alpha, const float* x, float* y, int64_t n) {  // y += alpha x
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// K^T (d, T) of one head: scores of row t against every key with unit stride.
void transpose_head(const HeadView& x, int64_t T, int64_t d, float* xt) {
  for (int64_t s = 0; s < T; ++s) {
    const float* r = x.row(s);
    for (int64_t i = 0; i < d; ++i) xt[i * T + s] = r[i];
  }
}

}  // namespace

Tensor causal_attention_fused(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (q.dim() != 4 || k.shape() != q.shape() || v.shape() != q.shape())
    throw Error(fmt::format("causal_attention_fused: q, k, v must share one (B, H, T, d) shape, got {}, {}, {}",
                            shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape())));
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  Tensor qc = unit_last_stride(q), kc = unit_last_stride(k), vc = unit_last_stride(v);
  // The output is stored (B, T, H, d) and returned as a (B, H, T, d) view: merging the heads
  // afterwards (permute back, reshape to (B, T, D)) then copies nothing.
  Tensor out_bthd = Tensor::empty({B, T, H, d});
  Tensor out = permute(out_bthd, {0, 2, 1, 3});  // (B, H, T, d) view
  Tensor lse = Tensor::empty({B, H, T});        // saved: log-sum-exp of each row's scores

  const bool parallel = B * H > 1 && T * T * d > 8192;
#pragma omp parallel if (parallel)
  {
    std::vector<float> kt(d * T), p(T);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const HeadView qh = head_view(qc, bh, H), kh = head_view(kc, bh, H), vh = head_view(vc, bh, H);
      transpose_head(kh, T, d, kt.data());
      float* o = out.data() + (bh / H) * out.strides()[0] + (bh % H) * out.strides()[1];
      float* lse_h = lse.data() + bh * T;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t n = t + 1;
        row_scores(qh.row(t), kt.data(), T, d, n, scale, p.data());
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t s = 0; s < n; ++s) mx = std::max(mx, p[s]);
        float z = 0.0f;
#pragma omp simd reduction(+ : z)
        for (int64_t s = 0; s < n; ++s) z += (p[s] = fast_exp(p[s] - mx));
        const float inv = 1.0f / z;
        float* ot = o + t * out.strides()[2];
        std::fill_n(ot, d, 0.0f);
        for (int64_t s = 0; s < n; ++s) axpy(p[s] * inv, vh.row(s), ot, d);
        lse_h[t] = mx + std::log(z);
      }
    }
  }

  Tensor out_saved = out.detach();
  return attach_node(out, "causal_attention", {q, k, v}, [q, k, v, qc, kc, vc, out_saved, lse, scale](const Tensor& g) {
    const int64_t B = qc.size(0), H = qc.size(1), T = qc.size(2), d = qc.size(3);
    Tensor go = unit_last_stride(g);
    Tensor dq = Tensor::empty({B, H, T, d}), dk = Tensor::zeros({B, H, T, d}), dv = Tensor::zeros({B, H, T, d});
    const bool parallel = B * H > 1 && T * T * d > 8192;
#pragma omp parallel if (parallel)
    {
      std::vector<float> kt(d * T), vt(d * T), p(T), dp(T);
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < B * H; ++bh) {
        const HeadView qh = head_view(qc, bh, H), kh = head_view(kc, bh, H), vh = head_view(vc, bh, H);
        const HeadView gh = head_view(go, bh, H), oh = head_view(out_saved, bh, H);
        transpose_head(kh, T, d, kt.data());
        transpose_head(vh, T, d, vt.data());
        const float* lse_h = lse.data() + bh * T;
        float *dq_h = dq.data() + bh * T * d, *dk_h = dk.data() + bh * T * d, *dv_h = dv.data() + bh * T * d;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t n = t + 1;
          const float *qt = qh.row(t), *got = gh.row(t), *ot = oh.row(t);
          row_scores(qt, kt.data(), T, d, n, scale, p.data());
          const float lse_t = lse_h[t];
#pragma omp simd
          for (int64_t s = 0; s < n; ++s) p[s] = fast_exp(p[s] - lse_t);
          row_scores(got, vt.data(), T, d, n, 1.0f, dp.data());
          float D = 0.0f;
#pragma omp simd reduction(+ : D)
          for (int64_t i = 0; i < d; ++i) D += got[i] * ot[i];
          float* dqt = dq_h + t * d;
          std::fill_n(dqt, d, 0.0f);
          for (int64_t s = 0; s < n; ++s) {
            const float ds = p[s] * (dp[s] - D) * scale;
            axpy(ds, kh.row(s), dqt, d);
            axpy(ds, qt, dk_h + s * d, d);
            axpy(p[s], got, dv_h + s * d, d);
          }
        }
      }
    }
    accumulate_grad(q, dq);
    accumulate_grad(k, dk);
    accumulate_grad(v, dv);
  });
}

}  // namespace lg::nn
