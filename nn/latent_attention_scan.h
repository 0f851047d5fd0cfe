// nn/latent_attention_scan.h: what the fused latent attention op (nn/latent_attention_fused.cpp)
// hands its per-head kernels. Internal to the op and its kernels.
#pragma once

#include <cstdint>

namespace lg::nn::latent_scan {

struct Dims {
  int64_t T, d, M, W;
  float scale;  // 1 / sqrt(d)
};

// One (batch, head): rows of T positions. The saved pointers are null when no graph is built.
struct HeadRows {
  const float *q, *k, *kr, *v;  // (T, d) each: R_t q_t, k_t, R_t k_t, v_t
  const float* l;               // (M, d)
  float* o;                     // (T, d) rows o_stride apart; the op's gradient dO has the same layout
  int64_t o_stride;
  float *mu, *Z;                // (T, M)        saved: running max, normaliser (>= 1)
  float* E;                     // (T, M)        saved: e_t = exp(a_t - mu_t) <= 1
  float* P;                     // (T, M + W)    saved: probabilities, window slot j <-> s = t - W + 1 + j
  float* S;                     // (T, M)        saved: q_t . Kl_{t,m}, the latent scores before 1 / sqrt(d)
};

// The AVX-512 kernels (nn/latent_attention_avx512.cpp) for 16 latents of head size 32 or 64 and
// a window of at most 16: every per-latent quantity is one 16-float register. True when they were
// built (a native build for a CPU with AVX-512F, or a portable build) and fit these sizes; a
// portable build runs them only where run_avx512_kernels() (core/cpu.h) says so.
bool avx512_fits(const Dims& n);
void forward_head_avx512(const Dims& n, const HeadRows& h);
// The same for two heads at once, in lockstep (the same values as one at a time).
void forward_head_pair_avx512(const Dims& n, const HeadRows& h0, const HeadRows& h1);
// dkr, dv (T, d) and dl (M, d) zeroed by the caller; dq, dk written whole. scratch: T
// kAvx512BackwardScratch floats, given by the caller (that file allocates nothing: see core/isa.h).
constexpr int64_t kAvx512BackwardScratch = 80;
void backward_head_avx512(const Dims& n, const HeadRows& h, const float* go, float* dq, float* dk, float* dkr,
                          float* dv, float* dl, float* scratch);

}  // namespace lg::nn::latent_scan
