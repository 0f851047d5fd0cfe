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
// Time and memory O(T (M + W) d) per head; forward saves mu, Z, e, Kl, Vl and P per position.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/fastmath.h"
#include "nn/latent_attention.h"

namespace lg::nn {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

inline void axpy(float alpha, const float* x, float* y, int64_t n) {  // y += alpha x
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

struct Dims {
  int64_t T, d, M, W;
  float scale;  // 1 / sqrt(d)
};

// One (batch, head): rows of T positions. The saved pointers are null when no graph is built.
struct HeadRows {
  const float *q, *k, *kr, *v;  // (T, d) each: R_t q_t, k_t, R_t k_t, v_t
  const float* l;               // (M, d)
  float* o;                     // (T, d)
  float *mu, *Z;                // (T, M)        saved: running max, normaliser (>= 1)
  float* E;                     // (T, M)        saved: e_t = exp(a_t - mu_t) <= 1
  float *Kl, *Vl;               // (T, M, d)     saved: latent keys and values
  float* P;                     // (T, M + W)    saved: probabilities, window slot j <-> s = t - W + 1 + j
};

// kD > 0 fixes the head size at compile time (the common 32 and 64): the d-long loops unroll.
template <int64_t kD>
void forward_head(const Dims& n, const HeadRows& h) {
  const int64_t T = n.T, d = kD > 0 ? kD : n.d, M = n.M, W = n.W;
  std::vector<float> mu(M, kNegInf), Z(M, 0.0f), SK(M * d, 0.0f), SV(M * d, 0.0f);
  std::vector<float> Kl_scratch(M * d), Vl_scratch(M * d), P_scratch(M + W);
  for (int64_t t = 0; t < T; ++t) {
    float* Kl = h.Kl ? h.Kl + t * M * d : Kl_scratch.data();
    float* Vl = h.Vl ? h.Vl + t * M * d : Vl_scratch.data();
    float* P = h.P ? h.P + t * (M + W) : P_scratch.data();
    const float *kt = h.k + t * d, *krt = h.kr + t * d, *vt = h.v + t * d, *qt = h.q + t * d;
    // Write: each latent takes in position t.
    for (int64_t m = 0; m < M; ++m) {
      const float a = dot(h.l + m * d, kt, d) * n.scale;
      const float new_mu = std::max(mu[m], a);
      const float rescale = fast_exp(mu[m] - new_mu), e = fast_exp(a - new_mu);
      mu[m] = new_mu;
      Z[m] = Z[m] * rescale + e;
      const float inv_z = 1.0f / Z[m];
      float *sk = SK.data() + m * d, *sv = SV.data() + m * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) {
        sk[i] = sk[i] * rescale + e * krt[i];
        sv[i] = sv[i] * rescale + e * vt[i];
        Kl[m * d + i] = sk[i] * inv_z;
        Vl[m * d + i] = sv[i] * inv_z;
      }
      if (h.mu) {
        h.mu[t * M + m] = mu[m];
        h.Z[t * M + m] = Z[m];
        h.E[t * M + m] = e;
      }
    }
    // Read: one softmax over [latents ; window positions t - W < s <= t].
    float mx = kNegInf;
    for (int64_t m = 0; m < M; ++m) mx = std::max(mx, P[m] = dot(qt, Kl + m * d, d) * n.scale);
    for (int64_t j = 0; j < W; ++j) {
      const int64_t s = t - W + 1 + j;
      P[M + j] = s >= 0 ? dot(qt, h.kr + s * d, d) * n.scale : kNegInf;
      mx = std::max(mx, P[M + j]);
    }
    float z = 0.0f;
    for (int64_t j = 0; j < M + W; ++j) z += (P[j] = fast_exp(P[j] - mx));
    const float inv = 1.0f / z;
    float* ot = h.o + t * d;
    std::fill_n(ot, d, 0.0f);
    for (int64_t m = 0; m < M; ++m) axpy(P[m] *= inv, Vl + m * d, ot, d);
    for (int64_t j = 0; j < W; ++j) {
      const int64_t s = t - W + 1 + j;
      P[M + j] *= inv;
      if (s >= 0) axpy(P[M + j], h.v + s * d, ot, d);
    }
  }
}

// Gradients of one (batch, head); dq, dk, dkr, dv (T, d) and dl (M, d) are zeroed by the caller.
template <int64_t kD>
void backward_head(const Dims& n, const HeadRows& h, const float* go, float* dq, float* dk, float* dkr,
                   float* dv, float* dl) {
  const int64_t T = n.T, d = kD > 0 ? kD : n.d, M = n.M, W = n.W;
  std::vector<float> RX(M * d, 0.0f), RY(M * d, 0.0f), Rc(M, 0.0f), dP(M), dsigma(M + W);
  for (int64_t t = T - 1; t >= 0; --t) {
    const float *Kl = h.Kl + t * M * d, *Vl = h.Vl + t * M * d, *P = h.P + t * (M + W);
    const float *qt = h.q + t * d, *got = go + t * d;
    // Read at t: softmax backward, then the query's and the window's gradients.
    float p_dp = 0.0f;
    for (int64_t m = 0; m < M; ++m) p_dp += P[m] * (dsigma[m] = dP[m] = dot(got, Vl + m * d, d));
    for (int64_t j = 0; j < W; ++j) {
      const int64_t s = t - W + 1 + j;
      dsigma[M + j] = s >= 0 ? dot(got, h.v + s * d, d) : 0.0f;
      p_dp += P[M + j] * dsigma[M + j];
    }
    float* dqt = dq + t * d;
    for (int64_t j = 0; j < M + W; ++j) dsigma[j] = P[j] * (dsigma[j] - p_dp);
    for (int64_t m = 0; m < M; ++m) axpy(dsigma[m] * n.scale, Kl + m * d, dqt, d);
    for (int64_t j = 0; j < W; ++j) {
      const int64_t s = t - W + 1 + j;
      if (s < 0) continue;
      axpy(dsigma[M + j] * n.scale, h.kr + s * d, dqt, d);
      axpy(dsigma[M + j] * n.scale, qt, dkr + s * d, d);
      axpy(P[M + j], got, dv + s * d, d);
    }
    // Carry X, Y, c backwards to position t, then the write of position t.
    const float *kt = h.k + t * d, *krt = h.kr + t * d, *vt = h.v + t * d;
    for (int64_t m = 0; m < M; ++m) {
      const float mu = h.mu[t * M + m];
      const float decay = t + 1 < T ? fast_exp(mu - h.mu[(t + 1) * M + m]) : 0.0f;
      const float inv_z = 1.0f / h.Z[t * M + m];
      const float x_scale = dsigma[m] * n.scale * inv_z,
                  y_scale = P[m] * inv_z;  // X / Z = x_scale q_t, Y / Z
      // c_t / Z = (X . Kl + Y . Vl) / Z, with Y . Vl = P_m (dO_t . Vl_m) = P_m dP_m
      const float c = x_scale * dot(qt, Kl + m * d, d) + y_scale * dP[m];
      float *rx = RX.data() + m * d, *ry = RY.data() + m * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) {
        rx[i] = decay * rx[i] + x_scale * qt[i];
        ry[i] = decay * ry[i] + y_scale * got[i];
      }
      Rc[m] = decay * Rc[m] + c;
      const float* lm = h.l + m * d;
      const float e = h.E[t * M + m];
      axpy(e, rx, dkr + t * d, d);
      axpy(e, ry, dv + t * d, d);
      const float da = e * (dot(krt, rx, d) + dot(vt, ry, d) - Rc[m]);
      axpy(da * n.scale, lm, dk + t * d, d);
      axpy(da * n.scale, kt, dl + m * d, d);
    }
  }
}

Tensor contiguous_data(const Tensor& t) { return t.is_contiguous() ? t : contiguous_copy(t); }

}  // namespace

Tensor latent_attention_fused(const LatentInputs& in, int64_t window) {
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
  Tensor q = contiguous_data(in.queries), k = contiguous_data(in.keys);
  Tensor kr = contiguous_data(in.rotated_keys), v = contiguous_data(in.values);
  Tensor l = contiguous_data(in.latents);
  Tensor out = Tensor::empty({B, H, T, d});

  bool any_grad = false;
  for (const Tensor* t : {&in.queries, &in.keys, &in.rotated_keys, &in.values, &in.latents})
    any_grad = any_grad || t->requires_grad();
  const bool save = grad_enabled() && any_grad;
  Tensor mu, Z, E, Kl, Vl, P;  // (B, H, T, M) x 3, (B, H, T, M, d) x 2, (B, H, T, M + W)
  if (save) {
    mu = Tensor::empty({B, H, T, M});
    Z = Tensor::empty({B, H, T, M});
    E = Tensor::empty({B, H, T, M});
    Kl = Tensor::empty({B, H, T, M, d});
    Vl = Tensor::empty({B, H, T, M, d});
    P = Tensor::empty({B, H, T, M + W});
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
               nullptr,
               nullptr,
               nullptr,
               nullptr,
               nullptr,
               nullptr};
    if (save) {
      r.mu = mu.data() + bh * T * M;
      r.Z = Z.data() + bh * T * M;
      r.E = E.data() + bh * T * M;
      r.Kl = Kl.data() + bh * T * M * d;
      r.Vl = Vl.data() + bh * T * M * d;
      r.P = P.data() + bh * T * (M + W);
    }
    return r;
  };
#pragma omp parallel for schedule(static) if (B * H > 1 && T * M * d > 4096)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    HeadRows r = rows(bh);
    r.o = out.data() + bh * T * d;
    (d == 32 ? forward_head<32> : d == 64 ? forward_head<64> : forward_head<0>)(dims, r);
  }
  if (!save) return out;

  return attach_node(out, "latent_attention", {in.queries, in.keys, in.rotated_keys, in.values, in.latents},
                     [in, rows, dims, B, H](const Tensor& g) {
                       const int64_t T = dims.T, d = dims.d, M = dims.M;
                       Tensor go = contiguous_data(g);
                       Tensor dq = Tensor::zeros({B, H, T, d}), dk = Tensor::zeros({B, H, T, d});
                       Tensor dkr = Tensor::zeros({B, H, T, d}), dv = Tensor::zeros({B, H, T, d});
                       Tensor dl_rows = Tensor::zeros({B, H, M, d});  // per (b, h), summed over b below
#pragma omp parallel for schedule(static) if (B * H > 1 && T * M * d > 4096)
                       for (int64_t bh = 0; bh < B * H; ++bh) {
                         const int64_t at = bh * T * d;
                         (d == 32   ? backward_head<32>
                          : d == 64 ? backward_head<64>
                                    : backward_head<0>)(dims, rows(bh), go.data() + at, dq.data() + at, dk.data() + at,
                                       dkr.data() + at, dv.data() + at, dl_rows.data() + bh * M * d);
                       }
                       accumulate_grad(in.queries, dq);
                       accumulate_grad(in.keys, dk);
                       accumulate_grad(in.rotated_keys, dkr);
                       accumulate_grad(in.values, dv);
                       if (in.latents.requires_grad()) accumulate_grad(in.latents, sum(dl_rows, 0));
                     });
}

}  // namespace lg::nn
