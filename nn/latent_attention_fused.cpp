// nn/latent_attention_fused.cpp: the latent attention core as one op: a per-position scan and its backward.
//
// The same function as latent_attention_chunked, computed the recurrent way (spec,
// "Recurrent") for every position in one pass, with the gradient written by hand. Why a
// second fast path: the composed chunked path records ~30 graph nodes per chunk, and its
// stabiliser is one max per chunk, so when write scores within a chunk spread by more
// than ~80 the early positions' weights underflow to 0 and the ratios become 0 / 0. Here
// every position t has its own running max mu_t, so Z_t >= 1 always and no exponent is
// positive, whatever the scores.
//
// Per (batch, head) and latent m, with a_s = l_m . k_s / sqrt(d) and
// w_{t,s} = exp(a_s - mu_t) / Z_t (the write weights of position t):
//
// Forward, t = 0, 1, ...:  mu_t = max(mu_{t-1}, a_t);  Z, SK, SV rescaled by exp(mu_{t-1} - mu_t)
//   and given the new term;  Kl_t = SK / Z,  Vl_t = SV / Z;  P = softmax of the scores over
//   [latents ; window];  o_t = sum_m P_m Vl_{t,m} + sum_s P_s v_s.
//
// Backward, t = T-1, ..., 0. The read at t gives, by the softmax rule, dsigma = P (dP - P . dP)
// with dP_m = dO_t . Vl_{t,m} (dP_s = dO_t . v_s), hence dq_t, the window's dkr_s and dv_s, and
//   X_t = dKl_t = dsigma_m q_t / sqrt(d),   Y_t = dVl_t = P_m dO_t,   c_t = X_t . Kl_t + Y_t . Vl_t.
// The write weights of position s are used by every t >= s, so their gradients are sums over
// the future, carried backwards in time like the forward carries sums over the past:
//   R_s = sum_{t >= s} exp(mu_s - mu_t) (X_t, Y_t, c_t) / Z_t
//       = (X_s, Y_s, c_s) / Z_s + exp(mu_s - mu_{s+1}) R_{s+1}        (mu is non-decreasing: stable)
// and since w_{t,s} = exp(a_s - mu_s) exp(mu_s - mu_t) / Z_t, with e_s = exp(a_s - mu_s) <= 1:
//   dkr_s += e_s RX_s,   dv_s += e_s RY_s,
//   da_s   = e_s (kr_s . RX_s + v_s . RY_s - Rc_s)      (softmax rule: w (g - sum w g))
//   dk_s  += da_s l_m / sqrt(d),   dl_m += da_s k_s / sqrt(d).
// Time O(T (M + W) d) per head. The forward saves mu, Z, e, P and the latent scores per position
// (O(T (M + W))), nothing of size M d per position; the backward recomputes SK, SV going forwards
// from t = 0, replaying the forward's update with the saved mu and e (the same operations on the
// same numbers, so the same values), before it goes backwards.
// Neither pass stores Kl = SK / Z or Vl = SV / Z: products with them are products with SK, SV
// scaled by 1 / Z.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <utility>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "core/cpu.h"
#include "core/fastmath.h"
#include "nn/latent_attention.h"
#include "nn/latent_attention_scan.h"
#include "nn/row_kernels.h"

namespace lg::nn {

namespace {

using latent_scan::Dims;
using latent_scan::HeadRows;

// Whether the AVX-512 kernels may run where they fit (latent_attention_fused_avx512).
std::atomic<bool> avx512_enabled{true};

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// out[r] = x . rows[r], rows r = 0..n-1 of length d, consecutive. With AVX2 and d a multiple of
// 8, eight rows at a time share one transposing reduction instead of eight horizontal ones.
inline void dot_rows(const float* x, const float* rows, int64_t n, int64_t d, float* out) {
  int64_t r = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if (d % 8 == 0) {
    for (; r + 8 <= n; r += 8) {
      __m256 acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
      for (int64_t i = 0; i < d; i += 8) {
        const __m256 xi = _mm256_loadu_ps(x + i);
        for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(xi, _mm256_loadu_ps(rows + (r + j) * d + i), acc[j]);
      }
      const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
      const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
      _mm256_storeu_ps(out + r, _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20),
                                              _mm256_permute2f128_ps(t0, t1, 0x31)));
    }
  }
#endif
  for (; r < n; ++r) out[r] = dot(x, rows + r * d, d);
}

// out = exp(a - b), elementwise over n
inline void exp_diff(const float* __restrict a, const float* __restrict b, float* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = fast_exp(a[i] - b[i]);
}

// SK_out = rescale SK_in + e kr_t and SV_out = rescale SV_in + e v_t, latent by latent: the update
// of the sums at one position, given its rescale factors exp(mu_{t-1} - mu_t) and new-term weights e.
template <int64_t kD>
inline void add_terms(int64_t M, int64_t d_runtime, const float* rescale, const float* e, const float* krt,
                      const float* vt, const float* SK_in, const float* SV_in, float* SK_out, float* SV_out) {
  const int64_t d = kD > 0 ? kD : d_runtime;
  for (int64_t m = 0; m < M; ++m) {
    const float r = rescale[m], em = e[m];
    const float *ski = SK_in + m * d, *svi = SV_in + m * d;
    float *sko = SK_out + m * d, *svo = SV_out + m * d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) {
      sko[i] = ski[i] * r + em * krt[i];
      svo[i] = svi[i] * r + em * vt[i];
    }
  }
}

// The write of position t: the running state (mu, Z of M latents) before t is mu_in, Z_in, after
// t mu_out, Z_out (distinct arrays); the sums SK, SV (M, d) before t are SK_in, SV_in, after t
// SK_out, SV_out (the same arrays for an update in place); e (M) gets the new terms' weights
// exp(a_t - mu_t), inv_z (M) 1 / Z_out. The latent keys and values Kl = SK / Z, Vl = SV / Z are
// never stored: the read scales its M dot products by 1 / Z instead, which halves the stores of
// the step (the part of the scan that bounds its speed). l (M, d) are the latents; the M scores
// come from dot_rows (independent accumulators: a loop over d adding into one vector of M
// scores would wait on the FMA latency at every step); tmp holds 2 M floats.
template <int64_t kD>
inline void write_step(const Dims& n, const float* l, const float* kt, const float* krt, const float* vt,
                       const float* __restrict mu_in, const float* __restrict Z_in, float* __restrict mu_out,
                       float* __restrict Z_out, float* __restrict e_out, float* __restrict inv_z,
                       const float* SK_in, const float* SV_in, float* SK_out, float* SV_out,
                       float* __restrict tmp) {
  const int64_t d = kD > 0 ? kD : n.d, M = n.M;
  float *__restrict a = tmp, *__restrict rescale = tmp + M;
  dot_rows(kt, l, M, d, a);
  for (int64_t m = 0; m < M; ++m) {
    a[m] *= n.scale;
    mu_out[m] = std::max(mu_in[m], a[m]);
  }
  exp_diff(mu_in, mu_out, rescale, M);
  exp_diff(a, mu_out, e_out, M);
#pragma omp simd
  for (int64_t m = 0; m < M; ++m) {
    Z_out[m] = Z_in[m] * rescale[m] + e_out[m];
    inv_z[m] = 1.0f / Z_out[m];
  }
  add_terms<kD>(M, d, rescale, e_out, krt, vt, SK_in, SV_in, SK_out, SV_out);
}

// kD > 0 fixes the head size at compile time (the common 32 and 64): the d-long loops unroll.
template <int64_t kD>
void forward_head(const Dims& n, const HeadRows& h) {
  const int64_t T = n.T, d = kD > 0 ? kD : n.d, M = n.M, W = n.W;
  // Without saving, mu and Z alternate between two rows of scratch; with it, position t's row
  // of the saved mu and Z is the state after t.
  std::vector<float> mu0(M, kNegInf), Z0(M, 0.0f), mu_scratch(2 * M), Z_scratch(2 * M);
  std::vector<float> SK(M * d, 0.0f), SV(M * d, 0.0f);
  std::vector<float> P_scratch(M + W), e(M), inv_z(M), wl(M), tmp(2 * M);
  const float *mu_in = mu0.data(), *Z_in = Z0.data();
  for (int64_t t = 0; t < T; ++t) {
    float* P = h.P ? h.P + t * (M + W) : P_scratch.data();
    const float *kt = h.k + t * d, *krt = h.kr + t * d, *vt = h.v + t * d, *qt = h.q + t * d;
    // Write: each latent takes in position t.
    float* mu_out = h.mu ? h.mu + t * M : mu_scratch.data() + (t % 2) * M;
    float* Z_out = h.mu ? h.Z + t * M : Z_scratch.data() + (t % 2) * M;
    write_step<kD>(n, h.l, kt, krt, vt, mu_in, Z_in, mu_out, Z_out, h.mu ? h.E + t * M : e.data(), inv_z.data(),
                   SK.data(), SV.data(), SK.data(), SV.data(), tmp.data());
    mu_in = mu_out;
    Z_in = Z_out;
    // Read: one softmax over [latents ; window positions t - W < s <= t]. q . Kl_m = (q . SK_m) / Z_m.
    dot_rows(qt, SK.data(), M, d, P);
#pragma omp simd
    for (int64_t m = 0; m < M; ++m) P[m] *= inv_z[m];
    if (h.S) std::copy_n(P, M, h.S + t * M);
    const int64_t j0 = std::max<int64_t>(0, W - 1 - t);  // window slots j < j0 are before position 0
    dot_rows(qt, h.kr + (t - W + 1 + j0) * d, W - j0, d, P + M + j0);
    std::fill_n(P + M, j0, kNegInf);
    const float scale = n.scale;
#pragma omp simd
    for (int64_t j = 0; j < M + W; ++j) P[j] *= scale;  // -inf stays -inf
    const float mx = max_of(P, M + W);
    const float z = exp_shift_sum(P, M + W, mx);
    const float inv = 1.0f / z;
#pragma omp simd
    for (int64_t j = 0; j < M + W; ++j) P[j] *= inv;
    // o_t = sum_m (P_m / Z_m) SV_m + sum_j P_j v_s (window slots j >= j0 only)
    float* ot = h.o + t * h.o_stride;
    float window[kD > 0 ? kD : 1];
#pragma omp simd
    for (int64_t m = 0; m < M; ++m) wl[m] = P[m] * inv_z[m];
    weighted_rows<kD>(wl.data(), SV.data(), d, M, d, ot);
    if (W - j0 > 0) {
      if constexpr (kD > 0) {
        weighted_rows<kD>(P + M + j0, h.v + (t - W + 1 + j0) * d, d, W - j0, d, window);
#pragma omp simd
        for (int64_t i = 0; i < kD; ++i) ot[i] += window[i];
      } else {
        for (int64_t j = j0; j < W; ++j) axpy(P[M + j], h.v + (t - W + 1 + j) * d, ot, d);
      }
    }
  }
}

// Gradients of one (batch, head); dkr, dv (T, d) and dl (M, d) are zeroed by the caller, and dq,
// dk (T, d) too unless kD > 0 (then each row is written once, at its own position).
//
// Two passes. The read's gradient at t needs the sums SK_t, SV_t; the write's gradient needs the
// carry R, which runs backwards in time. So pass 1 goes forwards from t = 0, replaying the
// forward's update of SK, SV in place (the saved running max gives the same rescale factors and
// the saved E the same new terms: the same operations on the same numbers, so the same values)
// and takes from each position what the read's gradient needs of them: dP, the softmax's dsigma
// (kept per position) and dq's latent part (written to dq). Pass 2 goes backwards and does the
// rest, which needs only per-position values. Nothing of size M d per position is ever stored.
template <int64_t kD>
void backward_head(const Dims& n, const HeadRows& h, const float* go, float* dq, float* dk, float* dkr,
                   float* dv, float* dl) {
  const int64_t T = n.T, d = kD > 0 ? kD : n.d, M = n.M, W = n.W;
  std::vector<float> SK(M * d, 0.0f), SV(M * d, 0.0f);
  std::vector<float> RX(M * d, 0.0f), RY(M * d, 0.0f), Rc(M, 0.0f);
  std::vector<float> mu0(M, kNegInf), decay(M), inv_zs(M);
  // Per position: dP_m = dO_t . Vl_{t,m} (T, M) and dsigma (T, M + W). Kept per thread:
  // allocating and freeing them per head costs more than filling them (the allocator returns the
  // pages, and every thread's TLB is flushed).
  thread_local std::vector<float> dP_rows, dsigma_rows;
  dP_rows.resize(std::max<size_t>(dP_rows.size(), T * M));
  dsigma_rows.resize(std::max<size_t>(dsigma_rows.size(), T * (M + W)));
  // Local accumulators of position t's dq, dkr, dv, dk: registers when d is fixed.
  constexpr int64_t kA = kD > 0 ? kD : 1;
  float aq[kA], akr[kA], av[kA], ak[kA];

  // Pass 1, t = 0, 1, ...: the read's softmax backward and dq's latent part.
  for (int64_t t = 0; t < T; ++t) {
    exp_diff(t > 0 ? h.mu + (t - 1) * M : mu0.data(), h.mu + t * M, decay.data(), M);
    add_terms<kD>(M, d, decay.data(), h.E + t * M, h.kr + t * d, h.v + t * d, SK.data(), SV.data(), SK.data(),
                  SV.data());
#pragma omp simd
    for (int64_t m = 0; m < M; ++m) inv_zs[m] = 1.0f / h.Z[t * M + m];
    const float* P = h.P + t * (M + W);
    const float* got = go + t * h.o_stride;
    float *dP = dP_rows.data() + t * M, *dsigma = dsigma_rows.data() + t * (M + W);
    float* dqt = kD > 0 ? aq : dq + t * d;
    if (kD > 0) std::fill_n(aq, d, 0.0f);
    // dsigma = P (dP - P . dP), with dP_m = dO_t . SV_m / Z_m and dP_s = dO_t . v_s
    float p_dp = 0.0f;
    dot_rows(got, SV.data(), M, d, dP);
    for (int64_t m = 0; m < M; ++m) p_dp += P[m] * (dsigma[m] = dP[m] *= inv_zs[m]);
    const int64_t j0 = std::max<int64_t>(0, W - 1 - t);  // window slots j < j0 are before position 0
    std::fill_n(dsigma + M, j0, 0.0f);
    dot_rows(got, h.v + (t - W + 1 + j0) * d, W - j0, d, dsigma + M + j0);
    for (int64_t j = 0; j < W; ++j) p_dp += P[M + j] * dsigma[M + j];
    for (int64_t j = 0; j < M + W; ++j) dsigma[j] = P[j] * (dsigma[j] - p_dp);
    for (int64_t m = 0; m < M; ++m) axpy(dsigma[m] * n.scale * inv_zs[m], SK.data() + m * d, dqt, d);
    if (kD > 0) std::copy_n(aq, d, dq + t * d);
  }

  // Pass 2, t = T-1, ..., 0: dq's window part, the window's dkr and dv, then the carry.
  for (int64_t t = T - 1; t >= 0; --t) {
#pragma omp simd
    for (int64_t m = 0; m < M; ++m) inv_zs[m] = 1.0f / h.Z[t * M + m];
    const float* P = h.P + t * (M + W);
    const float *dP = dP_rows.data() + t * M, *dsigma = dsigma_rows.data() + t * (M + W);
    const float *qt = h.q + t * d, *got = go + t * h.o_stride;
    float* dqt = kD > 0 ? aq : dq + t * d;
    float* dkrt = kD > 0 ? akr : dkr + t * d;
    float* dvt = kD > 0 ? av : dv + t * d;
    float* dkt = kD > 0 ? ak : dk + t * d;
    if (kD > 0) {
      std::copy_n(dq + t * d, d, aq);    // the latent part, from pass 1
      std::copy_n(dkr + t * d, d, akr);  // the window terms of later positions t' > t
      std::copy_n(dv + t * d, d, av);
      std::fill_n(ak, d, 0.0f);
    }
    for (int64_t j = 0; j < W; ++j) {
      const int64_t s = t - W + 1 + j;
      if (s < 0) continue;
      axpy(dsigma[M + j] * n.scale, h.kr + s * d, dqt, d);
      if (s == t) {
        axpy(dsigma[M + j] * n.scale, qt, dkrt, d);
        axpy(P[M + j], got, dvt, d);
      } else {
        axpy(dsigma[M + j] * n.scale, qt, dkr + s * d, d);
        axpy(P[M + j], got, dv + s * d, d);
      }
    }
    // Carry X, Y, c backwards to position t, then the write of position t.
    const float *kt = h.k + t * d, *krt = h.kr + t * d, *vt = h.v + t * d;
    if (t + 1 < T) {
      exp_diff(h.mu + t * M, h.mu + (t + 1) * M, decay.data(), M);
    } else {
      std::fill_n(decay.data(), M, 0.0f);
    }
    for (int64_t m = 0; m < M; ++m) {
      const float dc = decay[m], inv_z = inv_zs[m];
      const float x_scale = dsigma[m] * n.scale * inv_z,
                  y_scale = P[m] * inv_z;  // X / Z = x_scale q_t, Y / Z
      // c_t / Z = (X . Kl + Y . Vl) / Z, with Y . Vl = P_m (dO_t . Vl_m) = P_m dP_m
      const float cz = x_scale * h.S[t * M + m] + y_scale * dP[m];
      float *rx = RX.data() + m * d, *ry = RY.data() + m * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) {
        rx[i] = dc * rx[i] + x_scale * qt[i];
        ry[i] = dc * ry[i] + y_scale * got[i];
      }
      Rc[m] = dc * Rc[m] + cz;
      const float* lm = h.l + m * d;
      const float em = h.E[t * M + m];
      axpy(em, rx, dkrt, d);
      axpy(em, ry, dvt, d);
      float g = 0.0f;  // kr_t . RX + v_t . RY
#pragma omp simd reduction(+ : g)
      for (int64_t i = 0; i < d; ++i) g += krt[i] * rx[i] + vt[i] * ry[i];
      const float da = em * (g - Rc[m]);
      axpy(da * n.scale, lm, dkt, d);
      axpy(da * n.scale, kt, dl + m * d, d);
    }
    if (kD > 0) {
      std::copy_n(aq, d, dq + t * d);  // only position t adds to dq_t and dk_t
      std::copy_n(ak, d, dk + t * d);
      std::copy_n(akr, d, dkr + t * d);
      std::copy_n(av, d, dv + t * d);
    }
  }
}

Tensor contiguous_data(const Tensor& t) { return t.is_contiguous() ? t : contiguous_copy(t); }


// The op over q, k, kr, v (B, H, T, d) and latents l (H, M, d). With packed defined, the four are
// its views (4, B, H, T, d) and the gradient goes to packed as one buffer; otherwise to each.
Tensor fused_op(const LatentInputs& in, int64_t window, const Tensor& packed) {
  if (window < 0) throw Error(fmt::format("latent_attention_fused: window must be >= 0, got {}", window));
  const Tensor* all[] = {&in.queries, &in.keys, &in.rotated_keys, &in.values};
  for (const Tensor* t : all)
    if (t->dim() != 4 || t->shape() != in.queries.shape())
      throw Error(
          fmt::format("latent_attention_fused: inputs must share one (B, H, T, d) shape, got {} and {}",
                      shape_str(in.queries.shape()), shape_str(t->shape())));
  if (in.latents.dim() != 3 || in.latents.size(0) != in.queries.size(1) ||
      in.latents.size(2) != in.queries.size(3))
    throw Error(fmt::format("latent_attention_fused: latents must be (H, M, d) for inputs {}, got {}",
                            shape_str(in.queries.shape()), shape_str(in.latents.shape())));
  const int64_t B = in.queries.size(0), H = in.queries.size(1), T = in.queries.size(2);
  const int64_t d = in.queries.size(3), M = in.latents.size(1), W = window;
  const Dims dims{T, d, M, W, 1.0f / std::sqrt(static_cast<float>(d))};
  // The forward and the backward run the same kernels: the backward replays the forward's sums.
  // A portable build runs its AVX-512 kernels only where the CPU has them (core/cpu.h).
  const bool fast =
      avx512_enabled.load() && (!kPortableBuild || run_avx512_kernels()) && latent_scan::avx512_fits(dims);
  Tensor q = contiguous_data(in.queries), k = contiguous_data(in.keys);
  Tensor kr = contiguous_data(in.rotated_keys), v = contiguous_data(in.values);
  Tensor l = contiguous_data(in.latents);
  // Packed inputs give merged heads, (B, T, H d): row t of head (b, h) at (b T + t) H d + h d.
  const bool merged = packed.defined();
  Tensor out = merged ? Tensor::empty({B, T, H * d}) : Tensor::empty({B, H, T, d});
  const int64_t o_stride = merged ? H * d : d;
  auto o_offset = [=](int64_t bh) { return merged ? (bh / H) * T * H * d + (bh % H) * d : bh * T * d; };

  bool any_grad = false;
  for (const Tensor* t : {&in.queries, &in.keys, &in.rotated_keys, &in.values, &in.latents, &packed})
    any_grad = any_grad || (t->defined() && t->requires_grad());
  const bool save = grad_enabled() && any_grad;
  // (B, H, T, M) x 3, (B, H, T, M + W), (B, H, T, M)
  Tensor mu, Z, E, P, S;
  if (save) {
    mu = Tensor::empty({B, H, T, M});
    Z = Tensor::empty({B, H, T, M});
    E = Tensor::empty({B, H, T, M});
    P = Tensor::empty({B, H, T, M + W});
    S = Tensor::empty({B, H, T, M});
  }
  // Rows of head (b, h) = bh: inputs at bh T d, latents at h M d, saved rows at bh T (...). The
  // backward closure keeps this lambda, so it must not hold `out` (a cycle through out's node).
  auto rows = [=](int64_t bh) {
    const int64_t h = bh % H;
    HeadRows r{q.data() + bh * T * d,
               k.data() + bh * T * d,
               kr.data() + bh * T * d,
               v.data() + bh * T * d,
               l.data() + h * M * d,
               nullptr,
               o_stride,
               nullptr,
               nullptr,
               nullptr,
               nullptr,
               nullptr};
    if (save) {
      r.mu = mu.data() + bh * T * M;
      r.Z = Z.data() + bh * T * M;
      r.E = E.data() + bh * T * M;
      r.P = P.data() + bh * T * (M + W);
      r.S = S.data() + bh * T * M;
    }
    return r;
  };
  // The AVX-512 forward runs two heads in lockstep where there are heads enough for every thread.
  const int64_t per_task = fast && B * H >= 2 * omp_get_max_threads() ? 2 : 1;
#pragma omp parallel for schedule(static) if (B * H > 1 && T * M * d > 4096)
  for (int64_t task = 0; task < (B * H + per_task - 1) / per_task; ++task) {
    const int64_t bh = task * per_task;
    HeadRows r = rows(bh);
    r.o = out.data() + o_offset(bh);
    if (fast && per_task == 2 && bh + 1 < B * H) {
      HeadRows r1 = rows(bh + 1);
      r1.o = out.data() + o_offset(bh + 1);
      latent_scan::forward_head_pair_avx512(dims, r, r1);
    } else if (fast) {
      latent_scan::forward_head_avx512(dims, r);
    } else {
      (d == 32 ? forward_head<32> : d == 64 ? forward_head<64> : forward_head<0>)(dims, r);
    }
  }
  if (!save) return out;

  std::vector<Tensor> inputs = packed.defined() ? std::vector<Tensor>{packed, in.latents}
                                                : std::vector<Tensor>{in.queries, in.keys, in.rotated_keys,
                                                                      in.values, in.latents};
  return attach_node(out, "latent_attention_fused", std::move(inputs), [in, packed, rows, dims, fast, o_offset, B, H](const Tensor& g) {
    const int64_t T = dims.T, d = dims.d, M = dims.M, n = B * H * T * d;
    Tensor go = contiguous_data(g);
    // dq, dk, dkr, dv (B, H, T, d): side by side in one buffer that becomes packed's gradient as
    // it is, or four buffers.
    Tensor grads[4];
    if (packed.defined()) {
      grads[0] = Tensor::empty(packed.shape());
    } else {
      for (Tensor& t : grads) t = Tensor::empty({B, H, T, d});
    }
    float* dq = grads[0].data();
    float* dk = packed.defined() ? dq + n : grads[1].data();
    float* dkr = packed.defined() ? dq + 2 * n : grads[2].data();
    float* dv = packed.defined() ? dq + 3 * n : grads[3].data();
    Tensor dl_rows = Tensor::empty({B, H, M, d});  // per (b, h), summed over b below
    const bool unrolled = d == 32 || d == 64;     // backward_head<kD > 0> writes dq, dk whole
#pragma omp parallel for schedule(static) if (B * H > 1 && T * M * d > 4096)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t at = bh * T * d;
      // What the kernel adds into is zeroed here, head by head, while it is in cache.
      std::fill_n(dkr + at, T * d, 0.0f);
      std::fill_n(dv + at, T * d, 0.0f);
      std::fill_n(dl_rows.data() + bh * M * d, M * d, 0.0f);
      if (!unrolled) {
        std::fill_n(dq + at, T * d, 0.0f);
        std::fill_n(dk + at, T * d, 0.0f);
      }
      if (fast) {
        thread_local std::vector<float> scratch;
        scratch.resize(std::max<size_t>(scratch.size(), T * latent_scan::kAvx512BackwardScratch));
        latent_scan::backward_head_avx512(dims, rows(bh), go.data() + o_offset(bh), dq + at, dk + at,
                                          dkr + at, dv + at, dl_rows.data() + bh * M * d, scratch.data());
      } else {
        (d == 32   ? backward_head<32>
         : d == 64 ? backward_head<64>
                   : backward_head<0>)(dims, rows(bh), go.data() + o_offset(bh), dq + at, dk + at, dkr + at, dv + at,
                                       dl_rows.data() + bh * M * d);
      }
    }
    // moved: a first gradient takes the buffer instead of a copy
    if (packed.defined()) {
      accumulate_grad(packed, std::move(grads[0]));
    } else {
      const Tensor* targets[] = {&in.queries, &in.keys, &in.rotated_keys, &in.values};
      for (int64_t i = 0; i < 4; ++i) accumulate_grad(*targets[i], std::move(grads[i]));
    }
    if (in.latents.requires_grad()) accumulate_grad(in.latents, sum(dl_rows, 0));
  });
}

}  // namespace

Tensor latent_attention_fused(const LatentInputs& in, int64_t window) { return fused_op(in, window, Tensor()); }

bool latent_attention_fused_avx512(bool enabled) { return avx512_enabled.exchange(enabled); }

Tensor latent_attention_fused(const Tensor& packed, const Tensor& latents, int64_t window) {
  if (packed.dim() != 5 || packed.size(0) != 4)
    throw Error(fmt::format("latent_attention_fused: packed inputs must be (4, B, H, T, d), got {}",
                            shape_str(packed.shape())));
  Tensor pc = packed.is_contiguous() ? packed : contiguous_copy(packed);
  LatentInputs in;
  {
    NoGradGuard views_only;  // the op's own views: the gradient goes to packed in one piece
    in.queries = select(pc, 0, 0);
    in.keys = select(pc, 0, 1);
    in.rotated_keys = select(pc, 0, 2);
    in.values = select(pc, 0, 3);
  }
  in.latents = latents;
  return fused_op(in, window, packed);
}

}  // namespace lg::nn
