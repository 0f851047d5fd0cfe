// nn/causal_attention_fused.cpp: MHA's core softmax(q k^T / sqrt(d) + causal mask) v as one op with its backward.
//
// The composed path (causal_attention_composed, mha.cpp) records five nodes per layer and
// stores the (B, H, T, T) scores, the masked scores and the probabilities, and runs B H
// small sgemms one after another. This op runs every (batch, head) on its own thread and skips
// the masked half. For sequences up to 128 it keeps the probabilities (16 KB per head at
// T = 64); past that it saves only the output and one log-sum-exp per row, and the backward
// recomputes the probabilities (FlashAttention's trick, Dao et al. 2022, Alg. 2 without tiling).
//
// Per head, rows t = 0..T-1, s <= t, with scale = 1 / sqrt(d):
//   S_ts = scale q_t . k_s,   lse_t = log sum_s exp S_ts,   P_ts = exp(S_ts - lse_t),   o_t = sum_s P_ts v_s
// Backward (softmax rule, D_t = sum_s P_ts dP_ts = dO_t . o_t):
//   dP_ts = dO_t . v_s,   dS_ts = P_ts (dP_ts - D_t),
//   dq_t = scale sum_s dS_ts k_s,   dk_s += scale dS_ts q_t,   dv_s += P_ts dO_t.
// Scores are computed 4 rows x 16 keys at a time against a transposed copy of the head's keys,
// K^T (d, T), accumulating over d in registers (a small sgemm micro-kernel, no horizontal sums).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#if defined(__AVX512F__)
#include "core/intrinsics.h"
#endif

#include "core/fastmath.h"
#include "nn/mha.h"
#include "nn/row_kernels.h"

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

constexpr int64_t kRows = 4, kLanes = 16;  // a block of scores: 4 rows x 16 keys, in registers

inline int64_t padded(int64_t T) { return (T + kLanes - 1) / kLanes * kLanes; }

// out[r][s] = scale a_r . x_s for rows r < R (R <= kRows, a_r = rows.row(first + r)) and keys s < n,
// from xt = X^T (d, Tp). Each 4 x 16 block sums over d in registers: one load of xt per 4 FMAs.
template <int64_t kD>
void block_scores(const HeadView& rows, int64_t first, int64_t R, const float* xt, int64_t Tp,
                  int64_t d_runtime, int64_t n, float scale, float* out) {
  const int64_t d = kD > 0 ? kD : d_runtime;
  const float* a[kRows];
  for (int64_t r = 0; r < kRows; ++r) a[r] = rows.row(first + std::min(r, R - 1));
  int64_t s0 = 0;
#if defined(__AVX512F__)
  // 32 keys at a time while two blocks remain: 4 rows x 2 registers, eight independent sums, enough
  // to keep both FMA units busy (one block's four would wait on each FMA's latency). Each score
  // is the same FMA chain over i as below: the same values.
  if constexpr (kD == 32) {
    for (; s0 + kLanes < n; s0 += 2 * kLanes) {
      __m512 acc[kRows][2];
      for (int64_t r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int64_t i = 0; i < kD; ++i) {
        const float* x = xt + i * Tp + s0;
        const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + kLanes);
        for (int64_t r = 0; r < kRows; ++r) {
          const __m512 ar = _mm512_set1_ps(a[r][i]);
          acc[r][0] = _mm512_fmadd_ps(ar, x0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(ar, x1, acc[r][1]);
        }
      }
      const __m512 sc = _mm512_set1_ps(scale);
      for (int64_t r = 0; r < R; ++r) {
        _mm512_storeu_ps(out + r * Tp + s0, _mm512_mul_ps(acc[r][0], sc));
        _mm512_storeu_ps(out + r * Tp + s0 + kLanes, _mm512_mul_ps(acc[r][1], sc));
      }
    }
  }
#endif
  for (; s0 < n; s0 += kLanes) {
    float acc[kRows][kLanes] = {};
    for (int64_t i = 0; i < d; ++i) {
      const float* x = xt + i * Tp + s0;
      for (int64_t r = 0; r < kRows; ++r) {
        const float ar = a[r][i];
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) acc[r][l] += ar * x[l];
      }
    }
    for (int64_t r = 0; r < R; ++r)
      for (int64_t l = 0; l < kLanes; ++l) out[r * Tp + s0 + l] = acc[r][l] * scale;
  }
}

#if defined(__AVX512F__)
// out row i = column i of in, for a 16 x 16 block: rows `is` and `os` floats apart.
inline void transpose16(const float* in, int64_t is, float* out, int64_t os) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(in + i * is);
  for (int k = 0; k < 8; ++k) {  // interleave pairs of rows: 2 x 2 blocks
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {  // 4 x 4 blocks
    const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * k + 2]), e = _mm512_castps_pd(t[4 * k + 3]);
    r[4 * k + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    r[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  for (int k = 0; k < 2; ++k)  // 8 x 8 blocks, by 128-bit lanes
    for (int j = 0; j < 4; ++j) {
      t[8 * k + j] = _mm512_shuffle_f32x4(r[8 * k + j], r[8 * k + 4 + j], 0x88);
      t[8 * k + 4 + j] = _mm512_shuffle_f32x4(r[8 * k + j], r[8 * k + 4 + j], 0xDD);
    }
  for (int j = 0; j < 8; ++j) {  // 16 x 16
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(out + i * os, r[i]);
}
#endif

// X^T (d, Tp) of one head's rows, Tp = T rounded up to whole blocks (the padding is never read
// as a score: rows use keys s <= t < T only).
void transpose_head(const HeadView& x, int64_t T, int64_t d, float* xt) {
  const int64_t Tp = padded(T);
  int64_t s0 = 0;
#if defined(__AVX512F__)
  if (d % 16 == 0)
    for (; s0 + 16 <= T; s0 += 16)
      for (int64_t i0 = 0; i0 < d; i0 += 16) transpose16(x.row(s0) + i0, x.row_stride, xt + i0 * Tp + s0, Tp);
#endif
  for (int64_t s = s0; s < T; ++s) {
    const float* r = x.row(s);
    for (int64_t i = 0; i < d; ++i) xt[i * Tp + s] = r[i];
  }
}

#if defined(__AVX512F__)
// o_t = sum_{s <= t} P_ts v_s for the block's rows t = t0 + r, r < R, at d = 32, from the
// probabilities p (rows Tp apart): each v_s is loaded once for the block's rows instead of once
// per row. Like weighted_rows, even and odd s go to two sums added at the end, so each o_t gets
// the same operations in the same order as there: the same values. Keys past a row's causal
// edge, up to the block's last, are given weight 0, which adds exactly 0 (rows past R: all 0).
inline void block_pv_32(float* p, int64_t Tp, int64_t t0, int64_t R, int64_t cols, const HeadView& vh, float* o,
                        int64_t o_row_stride) {
  for (int64_t r = 0; r < kRows; ++r) std::fill(p + r * Tp + (r < R ? t0 + r + 1 : 0), p + r * Tp + cols, 0.0f);
  __m512 even[kRows][2], odd[kRows][2];
  for (int64_t r = 0; r < kRows; ++r)
    for (int h = 0; h < 2; ++h) even[r][h] = odd[r][h] = _mm512_setzero_ps();
  int64_t s = 0;
  for (; s + 2 <= cols; s += 2) {
    const float *v0 = vh.row(s), *v1 = vh.row(s + 1);
    const __m512 a0 = _mm512_loadu_ps(v0), a1 = _mm512_loadu_ps(v0 + 16);
    const __m512 b0 = _mm512_loadu_ps(v1), b1 = _mm512_loadu_ps(v1 + 16);
    for (int64_t r = 0; r < kRows; ++r) {
      const __m512 we = _mm512_set1_ps(p[r * Tp + s]), wo = _mm512_set1_ps(p[r * Tp + s + 1]);
      even[r][0] = _mm512_fmadd_ps(we, a0, even[r][0]);
      even[r][1] = _mm512_fmadd_ps(we, a1, even[r][1]);
      odd[r][0] = _mm512_fmadd_ps(wo, b0, odd[r][0]);
      odd[r][1] = _mm512_fmadd_ps(wo, b1, odd[r][1]);
    }
  }
  if (s < cols) {
    const float* v0 = vh.row(s);
    const __m512 a0 = _mm512_loadu_ps(v0), a1 = _mm512_loadu_ps(v0 + 16);
    for (int64_t r = 0; r < kRows; ++r) {
      const __m512 we = _mm512_set1_ps(p[r * Tp + s]);
      even[r][0] = _mm512_fmadd_ps(we, a0, even[r][0]);
      even[r][1] = _mm512_fmadd_ps(we, a1, even[r][1]);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    float* ot = o + (t0 + r) * o_row_stride;
    _mm512_storeu_ps(ot, _mm512_add_ps(even[r][0], odd[r][0]));
    _mm512_storeu_ps(ot + 16, _mm512_add_ps(even[r][1], odd[r][1]));
  }
}
#endif

// One (batch, head). kD > 0 fixes the head size at compile time (32 and 64): the d-long loops unroll.
// p: the probabilities of one block of rows (4, Tp), or with `keep`, of all the head's rows
// (padded(T) rows), kept for the backward. lse (T) gets each row's log-sum-exp, unless null.
template <int64_t kD>
void forward_head(const HeadView& qh, const HeadView& kh, const HeadView& vh, int64_t T, int64_t d_runtime,
                  float scale, float* o, int64_t o_row_stride, float* lse, float* kt, float* p_rows, bool keep) {
  const int64_t d = kD > 0 ? kD : d_runtime;
  const int64_t Tp = padded(T);
  transpose_head(kh, T, d, kt);
  for (int64_t t0 = 0; t0 < T; t0 += kRows) {
    const int64_t R = std::min(kRows, T - t0), cols = std::min(T, t0 + kRows);  // keys s < cols
    float* p = keep ? p_rows + t0 * Tp : p_rows;
    block_scores<kD>(qh, t0, R, kt, Tp, d, cols, scale, p);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = t0 + r, n = t + 1;
      float* pr = p + r * Tp;
      const float mx = max_of(pr, n);
      const float z = exp_shift_sum(pr, n, mx);
      const float inv = 1.0f / z;
#pragma omp simd
      for (int64_t s = 0; s < n; ++s) pr[s] *= inv;
      if (lse) lse[t] = mx + std::log(z);
    }
#if defined(__AVX512F__)
    if constexpr (kD == 32) {
      block_pv_32(p, Tp, t0, R, cols, vh, o, o_row_stride);
      continue;
    }
#endif
    for (int64_t r = 0; r < R; ++r)
      weighted_rows<kD>(p + r * Tp, vh.row(0), vh.row_stride, t0 + r + 1, d, o + (t0 + r) * o_row_stride);
  }
}

#if defined(__AVX512F__)
// The updates of one block of 4 rows t0..t0+3 at d = 32 (two 512-bit registers per row), keys
// s < cols: dq_r = sum_s dS_rs k_s, dk_s += sum_r dS_rs q_r, dv_s += sum_r P_rs dO_r. The block's
// q, dO and dq rows stay in registers (24 of 32), so each key's dk_s and dv_s are loaded and
// stored once per block instead of once per row. dS and P are zero past each row's causal edge.
// Every dk_s and dv_s takes its terms in the same order as the row-by-row loop (rows ascending),
// one fused multiply-add each: the same values.
inline void block_updates_32(const HeadView& qh, const HeadView& kh, const HeadView& gh, int64_t t0, int64_t cols,
                             const float* p_block, const float* ds_block, int64_t Tp, float* dq, float* dk,
                             float* dv) {
  __m512 q[kRows][2], go[kRows][2], aq[kRows][2];
  for (int64_t r = 0; r < kRows; ++r)
    for (int h = 0; h < 2; ++h) {
      q[r][h] = _mm512_loadu_ps(qh.row(t0 + r) + 16 * h);
      go[r][h] = _mm512_loadu_ps(gh.row(t0 + r) + 16 * h);
      aq[r][h] = _mm512_setzero_ps();
    }
  for (int64_t s = 0; s < cols; ++s) {
    const float* ks = kh.row(s);
    const __m512 k0 = _mm512_loadu_ps(ks), k1 = _mm512_loadu_ps(ks + 16);
    __m512 dk0 = _mm512_loadu_ps(dk + s * 32), dk1 = _mm512_loadu_ps(dk + s * 32 + 16);
    __m512 dv0 = _mm512_loadu_ps(dv + s * 32), dv1 = _mm512_loadu_ps(dv + s * 32 + 16);
    for (int64_t r = 0; r < kRows; ++r) {
      const __m512 ds = _mm512_set1_ps(ds_block[r * Tp + s]), ps = _mm512_set1_ps(p_block[r * Tp + s]);
      aq[r][0] = _mm512_fmadd_ps(ds, k0, aq[r][0]);
      aq[r][1] = _mm512_fmadd_ps(ds, k1, aq[r][1]);
      dk0 = _mm512_fmadd_ps(ds, q[r][0], dk0);
      dk1 = _mm512_fmadd_ps(ds, q[r][1], dk1);
      dv0 = _mm512_fmadd_ps(ps, go[r][0], dv0);
      dv1 = _mm512_fmadd_ps(ps, go[r][1], dv1);
    }
    _mm512_storeu_ps(dk + s * 32, dk0);
    _mm512_storeu_ps(dk + s * 32 + 16, dk1);
    _mm512_storeu_ps(dv + s * 32, dv0);
    _mm512_storeu_ps(dv + s * 32 + 16, dv1);
  }
  for (int64_t r = 0; r < kRows; ++r) {
    _mm512_storeu_ps(dq + (t0 + r) * 32, aq[r][0]);
    _mm512_storeu_ps(dq + (t0 + r) * 32 + 16, aq[r][1]);
  }
}
#endif

// dk, dv are zeroed by the caller; dq rows are written whole. kept: the forward's probabilities
// of all the head's rows (rows Tp apart), or null: recompute them per block into p_scratch.
template <int64_t kD>
void backward_head(const HeadView& qh, const HeadView& kh, const HeadView& vh, const HeadView& gh,
                   const HeadView& oh, const float* lse, float* kept, int64_t T, int64_t d_runtime, float scale,
                   float* dq, float* dk, float* dv, float* kt, float* vt, float* p_scratch, float* ds_block) {
  const int64_t d = kD > 0 ? kD : d_runtime;
  const int64_t Tp = padded(T);
  if (!kept) transpose_head(kh, T, d, kt);
  transpose_head(vh, T, d, vt);
  for (int64_t t0 = 0; t0 < T; t0 += kRows) {
    const int64_t R = std::min(kRows, T - t0), cols = std::min(T, t0 + kRows);  // keys s < cols
    float* p_block = kept ? kept + t0 * Tp : p_scratch;
    if (!kept) block_scores<kD>(qh, t0, R, kt, Tp, d, cols, scale, p_block);
    block_scores<kD>(gh, t0, R, vt, Tp, d, cols, 1.0f, ds_block);
    // Each row's P (kept, or recomputed from the saved log-sum-exp) and dS = P (dP - D) / sqrt(d),
    // with D_t = dO_t . o_t, over keys s <= t; zero from the causal edge to the block's last key.
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = t0 + r, n = t + 1;
      float *p = p_block + r * Tp, *ds = ds_block + r * Tp;
      if (!kept) exp_shift_sum(p, n, lse[t]);
      const float D = dot(gh.row(t), oh.row(t), d);
      for (int64_t s = 0; s < n; ++s) ds[s] = p[s] * (ds[s] - D) * scale;
      std::fill(p + n, p + cols, 0.0f);
      std::fill(ds + n, ds + cols, 0.0f);
    }
#if defined(__AVX512F__)
    if (kD == 32 && R == kRows) {
      block_updates_32(qh, kh, gh, t0, cols, p_block, ds_block, Tp, dq, dk, dv);
      continue;
    }
#endif
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = t0 + r, n = t + 1;
      const float *p = p_block + r * Tp, *ds = ds_block + r * Tp, *qt = qh.row(t), *got = gh.row(t);
      float acc[kD > 0 ? kD : 1];
      float* dqt = kD > 0 ? acc : dq + t * d;
      std::fill_n(dqt, d, 0.0f);
      for (int64_t s = 0; s < n; ++s) {
        axpy(ds[s], kh.row(s), dqt, d);
        axpy(ds[s], qt, dk + s * d, d);
        axpy(p[s], got, dv + s * d, d);
      }
      if (kD > 0) std::copy_n(acc, d, dq + t * d);
    }
  }
}

// (B, H, T, d) view of x (B, T, H d): heads side by side in each row, as the output projection
// takes them. No graph: the fused ops' own views of their outputs and output gradients.
Tensor heads_view(const Tensor& x, int64_t H) {
  NoGradGuard views_only;
  return permute(reshape(x, {x.size(0), x.size(1), H, x.size(2) / H}), {0, 2, 1, 3});
}

// Sequences up to this long keep their probabilities for the backward (padded(T)^2 floats per
// head: 16 KB at T = 64), which then needs neither the scores q k^T nor their exponentials
// again. Longer ones save one log-sum-exp per row and recompute them.
constexpr int64_t kKeepUpTo = 128;

// Probabilities kept per head, or an undefined tensor when the forward builds no graph or T is long.
Tensor kept_probabilities(int64_t BH, int64_t T, bool grad) {
  if (!grad || T > kKeepUpTo) return Tensor();
  return Tensor::empty({BH, padded(T), padded(T)});
}

// Forward over every (batch, head) of q, k, v (B, H, T, d), unit stride along d, into out
// (B, H, T, d) with unit stride along d. With kept defined, it gets every row's probabilities;
// otherwise lse gets each row's log-sum-exp, from which the backward recomputes them.
void run_forward(const Tensor& qc, const Tensor& kc, const Tensor& vc, float scale, const Tensor& out, Tensor& lse,
                 const Tensor& kept) {
  const int64_t B = qc.size(0), H = qc.size(1), T = qc.size(2), d = qc.size(3), Tp = padded(T);
  const bool parallel = B * H > 1 && T * T * d > 8192, keep = kept.defined();
  lse = keep ? Tensor() : Tensor::empty({B, H, T});  // needed only to recompute the probabilities
#pragma omp parallel if (parallel)
  {
    std::vector<float> kt(d * Tp), p(keep ? 0 : kRows * Tp);  // K^T (d, Tp), scores (4, Tp)
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      float* o = out.data() + (bh / H) * out.strides()[0] + (bh % H) * out.strides()[1];
      (d == 32 ? forward_head<32> : d == 64 ? forward_head<64> : forward_head<0>)(
          head_view(qc, bh, H), head_view(kc, bh, H), head_view(vc, bh, H), T, d, scale, o,
          out.strides()[2], keep ? nullptr : lse.data() + bh * T, kt.data(), keep ? kept.data() + bh * Tp * Tp : p.data(), keep);
    }
  }
}

// Gradients into dq, dk, dv: (B, H, T, d) contiguous each, every element written.
void run_backward(const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& g, const Tensor& out,
                  const Tensor& lse, const Tensor& kept, float scale, float* dq, float* dk, float* dv) {
  const int64_t B = qc.size(0), H = qc.size(1), T = qc.size(2), d = qc.size(3), Tp = padded(T);
  Tensor go = unit_last_stride(g);
  const bool parallel = B * H > 1 && T * T * d > 8192;
#pragma omp parallel if (parallel)
  {
    std::vector<float> kt(d * padded(T)), vt(d * padded(T)), p(kRows * padded(T)), dp(kRows * padded(T));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t at = bh * T * d;
      std::fill_n(dk + at, T * d, 0.0f);  // dk, dv add up over rows: zeroed here, in cache, head by head
      std::fill_n(dv + at, T * d, 0.0f);
      (d == 32 ? backward_head<32> : d == 64 ? backward_head<64> : backward_head<0>)(
          head_view(qc, bh, H), head_view(kc, bh, H), head_view(vc, bh, H), head_view(go, bh, H),
          head_view(out, bh, H), kept.defined() ? nullptr : lse.data() + bh * T,
          kept.defined() ? kept.data() + bh * Tp * Tp : nullptr, T, d,
          scale, dq + at, dk + at, dv + at, kt.data(), vt.data(), p.data(), dp.data());
    }
  }
}

void check_shapes(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (q.dim() != 4 || k.shape() != q.shape() || v.shape() != q.shape())
    throw Error(fmt::format("causal_attention_fused: q, k, v must share one (B, H, T, d) shape, got {}, {}, {}",
                            shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape())));
}

}  // namespace

Tensor causal_attention_fused(const Tensor& q, const Tensor& k, const Tensor& v) {
  check_shapes(q, k, v);
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.size(3)));
  Tensor qc = unit_last_stride(q), kc = unit_last_stride(k), vc = unit_last_stride(v);
  Tensor lse;  // saved: log-sum-exp of each row's scores
  // Stored (B, T, H, d) and returned as a (B, H, T, d) view: merging the heads afterwards
  // (permute back, reshape to (B, T, D)) then copies nothing.
  Tensor out = heads_view(Tensor::empty({q.size(0), q.size(2), q.size(1) * q.size(3)}), q.size(1));
  const bool grad = grad_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  Tensor kept = kept_probabilities(q.size(0) * q.size(1), q.size(2), grad);
  run_forward(qc, kc, vc, scale, out, lse, kept);
  Tensor out_saved = out.detach();
  return attach_node(out, "causal_attention", {q, k, v},
                     [q, k, v, qc, kc, vc, out_saved, lse, kept, scale](const Tensor& g) {
    Tensor dq = Tensor::empty(qc.shape()), dk = Tensor::empty(qc.shape()), dv = Tensor::empty(qc.shape());
    run_backward(qc, kc, vc, g, out_saved, lse, kept, scale, dq.data(), dk.data(), dv.data());
    accumulate_grad(q, std::move(dq));  // moved: a first gradient takes the buffer instead of a copy
    accumulate_grad(k, std::move(dk));
    accumulate_grad(v, std::move(dv));
  });
}

Tensor causal_attention_fused(const Tensor& qkv) {
  if (qkv.dim() != 5 || qkv.size(0) != 3)
    throw Error(fmt::format("causal_attention_fused: packed q, k, v must be (3, B, H, T, d), got {}",
                            shape_str(qkv.shape())));
  Tensor packed = qkv.is_contiguous() ? qkv : contiguous_copy(qkv);
  Tensor q, k, v;
  {
    NoGradGuard views_only;  // the op's own views: the gradient goes to qkv in one piece
    q = select(packed, 0, 0);
    k = select(packed, 0, 1);
    v = select(packed, 0, 2);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.size(3)));
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3);
  Tensor lse;
  Tensor merged = Tensor::empty({B, T, H * d});  // the output, heads side by side
  Tensor out = heads_view(merged, H);
  Tensor kept = kept_probabilities(B * H, T, grad_enabled() && qkv.requires_grad());
  run_forward(q, k, v, scale, out, lse, kept);
  Tensor out_saved = out.detach();
  return attach_node(merged, "causal_attention", {qkv}, [qkv, q, k, v, out_saved, lse, kept, scale, H](const Tensor& g) {
    // dq, dk, dv side by side, every element written: one buffer, taken as qkv's gradient.
    Tensor grads = Tensor::empty(qkv.shape());
    const int64_t n = q.numel();
    run_backward(q, k, v, heads_view(g, H), out_saved, lse, kept, scale, grads.data(), grads.data() + n,
                 grads.data() + 2 * n);
    accumulate_grad(qkv, std::move(grads));
  });
}

}  // namespace lg::nn
