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
// The per-head loops are in nn/causal_attention_kernels.cpp.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "core/cpu.h"
#include "core/precision.h"
#include "nn/causal_attention_kernels.h"
#include "nn/mha.h"

namespace lg::nn {

namespace {

using causal_kernels::Arith;
using causal_kernels::HeadView;
using causal_kernels::kRows;
using causal_kernels::padded;

// A portable build's AVX-512 kernels where they run (core/cpu.h), else those compiled with this
// file: the portable ones, or a native build's.
const causal_kernels::Kernels& kernels() {
  if constexpr (kPortableBuild)
    if (run_avx512_kernels()) return causal_kernels::isa_avx512::kernels;
  return causal_kernels::LG_ISA::kernels;
}

// The kernels' arithmetic for the precision in force (core/precision.h).
Arith arithmetic() { return matmul_precision() == Precision::bf16 ? Arith::bf16 : Arith::fp32; }

// The bf16 kernels' scratch of one thread (empty in fp32).
std::vector<uint32_t> bf16_scratch(Arith arith, int64_t T, int64_t d) {
  return std::vector<uint32_t>(arith == Arith::fp32 ? 0 : causal_kernels::bf16_words(T, d));
}

HeadView head_view(const Tensor& x, int64_t bh, int64_t H) {
  const int64_t b = bh / H, h = bh % H;
  return {x.data() + b * x.strides()[0] + h * x.strides()[1], x.strides()[2]};
}

// x with unit stride along its last axis (a copy only when it has not).
Tensor unit_last_stride(const Tensor& x) { return x.strides()[3] == 1 ? x : contiguous_copy(x); }

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
void run_forward(const Tensor& qc, const Tensor& kc, const Tensor& vc, float scale, Arith arith, const Tensor& out,
                 Tensor& lse, const Tensor& kept) {
  const int64_t B = qc.size(0), H = qc.size(1), T = qc.size(2), d = qc.size(3), Tp = padded(T);
  const bool parallel = B * H > 1 && T * T * d > 8192, keep = kept.defined();
  lse = keep ? Tensor() : Tensor::empty({B, H, T});  // needed only to recompute the probabilities
  const causal_kernels::Kernels& kern = kernels();
#pragma omp parallel if (parallel)
  {
    std::vector<float> kt(d * Tp), p(keep ? 0 : kRows * Tp);  // K^T (blocks of kLanes keys), scores (4, Tp)
    std::vector<uint32_t> words = bf16_scratch(arith, T, d);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      float* o = out.data() + (bh / H) * out.strides()[0] + (bh % H) * out.strides()[1];
      kern.forward_head(head_view(qc, bh, H), head_view(kc, bh, H), head_view(vc, bh, H), T, d, scale, arith, o,
                        out.strides()[2], keep ? nullptr : lse.data() + bh * T, kt.data(), words.data(),
                        keep ? kept.data() + bh * Tp * Tp : p.data(), keep);
    }
  }
}

// Gradients into dq, dk, dv: (B, H, T, d) contiguous each, every element written.
void run_backward(const Tensor& qc, const Tensor& kc, const Tensor& vc, const Tensor& g, const Tensor& out,
                  const Tensor& lse, const Tensor& kept, float scale, Arith arith, float* dq, float* dk, float* dv) {
  const int64_t B = qc.size(0), H = qc.size(1), T = qc.size(2), d = qc.size(3), Tp = padded(T);
  Tensor go = unit_last_stride(g);
  const bool parallel = B * H > 1 && T * T * d > 8192;
  const causal_kernels::Kernels& kern = kernels();
#pragma omp parallel if (parallel)
  {
    std::vector<float> kt(d * padded(T)), vt(d * padded(T)), p(kRows * padded(T)), dp(kRows * padded(T));
    std::vector<uint32_t> words = bf16_scratch(arith, T, d);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t at = bh * T * d;
      std::fill_n(dk + at, T * d, 0.0f);  // dk, dv add up over rows: zeroed here, in cache, head by head
      std::fill_n(dv + at, T * d, 0.0f);
      kern.backward_head(head_view(qc, bh, H), head_view(kc, bh, H), head_view(vc, bh, H),
                         head_view(go, bh, H), head_view(out, bh, H),
                         kept.defined() ? nullptr : lse.data() + bh * T,
                         kept.defined() ? kept.data() + bh * Tp * Tp : nullptr, T, d, scale, arith, dq + at, dk + at,
                         dv + at, kt.data(), vt.data(), words.data(), p.data(), dp.data());
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
  // Under bf16 mixed precision the core's products round their inputs to bf16 (core/precision.h);
  // the backward uses the precision the forward ran at.
  const Arith arith = arithmetic();
  run_forward(qc, kc, vc, scale, arith, out, lse, kept);
  Tensor out_saved = out.detach();
  return attach_node(out, "causal_attention_fused", {q, k, v},
                     [q, k, v, qc, kc, vc, out_saved, lse, kept, scale, arith](const Tensor& g) {
    Tensor dq = Tensor::empty(qc.shape()), dk = Tensor::empty(qc.shape()), dv = Tensor::empty(qc.shape());
    run_backward(qc, kc, vc, g, out_saved, lse, kept, scale, arith, dq.data(), dk.data(), dv.data());
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
  const Arith arith = arithmetic();  // as above
  run_forward(q, k, v, scale, arith, out, lse, kept);
  Tensor out_saved = out.detach();
  return attach_node(merged, "causal_attention_fused", {qkv},
                     [qkv, q, k, v, out_saved, lse, kept, scale, arith, H](const Tensor& g) {
    // dq, dk, dv side by side, every element written: one buffer, taken as qkv's gradient.
    Tensor grads = Tensor::empty(qkv.shape());
    const int64_t n = q.numel();
    run_backward(q, k, v, heads_view(g, H), out_saved, lse, kept, scale, arith, grads.data(), grads.data() + n,
                 grads.data() + 2 * n);
    accumulate_grad(qkv, std::move(grads));
  });
}

}  // namespace lg::nn
