// nn/causal_attention_kernels.h: what the fused causal attention op (nn/causal_attention_fused.cpp)
// hands its per-head kernels (nn/causal_attention_kernels.cpp). Internal to the op and its kernels.
//
// The kernels' file is compiled once per instruction set: for the building machine in a native
// build; for baseline x86-64 and again for AVX-512 in a portable one (core/cpu.h). Each copy
// defines its table of kernels in the namespace of its instruction set (core/isa.h).
#pragma once

#include <cstdint>

#include "core/isa.h"

namespace lg::nn::causal_kernels {

// Rows of one (batch, head) of a (B, H, T, d) tensor with unit stride along d.
struct HeadView {
  const float* data;
  int64_t row_stride;
  const float* row(int64_t t) const { return data + t * row_stride; }
};

// Scores are computed a block of kRows rows x kLanes keys at a time, so rows of scores and
// transposed keys are padded to whole blocks: padded(T) floats.
constexpr int64_t kRows = 4, kLanes = 16;
constexpr int64_t padded(int64_t T) { return (T + kLanes - 1) / kLanes * kLanes; }

// How the kernels compute. fp32: everything in fp32. bf16 (mixed precision): every product of
// the core, the scores q k^T and P V and, in the backward, dO v^T, dS K, dS^T Q and P^T dO, takes
// its inputs rounded to bf16 and sums in fp32 as vdpbf16ps does (bf16_dot_pair, core/gemm_bf16.h):
// pairs of the summed index in order, each pair one step. The softmax, the backward's dS and
// the sums into dk and dv stay fp32. With AVX512-BF16 (gemm_bf16_available) at d = 32 and 64
// the instruction runs; elsewhere portable loops give the same bits. bf16_portable: the same
// arithmetic, always by the portable loops (for tests).
enum class Arith { fp32, bf16, bf16_portable };

// The bf16 kernels' scratch (`words`), per head: 0 in fp32.
constexpr int64_t bf16_words(int64_t T, int64_t d) {
  return kRows * d + (T + 1) / 2 * d + 4 * padded(T) + 2 * d;
}

struct Kernels {
  // One (batch, head): o (rows o_row_stride apart) = softmax(scale q k^T + causal mask) v over
  // T rows of d floats. kt: scratch for K^T (d x padded(T) floats, in blocks of kLanes keys);
  // words: scratch of bf16_words(T, d) for the bf16 kernels (null in fp32).
  // p: the probabilities of one block of rows (kRows, padded(T)), or with keep, of all the
  // head's rows (padded(T) rows), kept for the backward. lse (T) gets each row's log-sum-exp, unless null.
  void (*forward_head)(const HeadView& q, const HeadView& k, const HeadView& v, int64_t T, int64_t d,
                       float scale, Arith arith, float* o, int64_t o_row_stride, float* lse, float* kt,
                       uint32_t* words, float* p, bool keep);
  // Its gradients, given dO (g) and the output (o): dk, dv (T, d) zeroed by the caller, dq rows
  // written whole. kept: the forward's probabilities of all the head's rows, or null: recompute
  // them from lse. kt, vt, words: scratch as above; p, ds: scratch (kRows, padded(T)).
  void (*backward_head)(const HeadView& q, const HeadView& k, const HeadView& v, const HeadView& g,
                        const HeadView& o, const float* lse, float* kept, int64_t T, int64_t d, float scale,
                        Arith arith, float* dq, float* dk, float* dv, float* kt, float* vt, uint32_t* words, float* p,
                        float* ds);
  // For tests: out (T, padded(T)) gets the scores scale q_t . k_s for s <= t as the kernels
  // compute them (past s = t, up to the block's last key, whatever the blocks wrote); kt, words:
  // scratch as above.
  void (*head_scores)(const HeadView& q, const HeadView& k, int64_t T, int64_t d, float scale, Arith arith,
                      float* kt, uint32_t* words, float* out);
};

namespace LG_ISA {
extern const Kernels kernels;  // compiled for the instruction set of the file that includes this
}
namespace isa_avx512 {
extern const Kernels kernels;  // a portable build's AVX-512 copy
}

}  // namespace lg::nn::causal_kernels
