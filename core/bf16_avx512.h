// core/bf16_avx512.h: fp32 -> bf16 rounding for AVX-512 kernels, 16 lanes at a time.
//
// The same integer recipe as float_to_bf16 (core/gemm_bf16.h), so vector and scalar code round
// alike: adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the
// dropped half is above one half, or equal to it with the kept value odd. A NaN would carry into
// the exponent, so it keeps its own upper half with the quiet bit set. Only AVX-512F integer
// instructions: no AVX512-BF16 needed to round. Used by the bf16 GEMM's packing and by MHA's
// bf16 score blocks (nn/causal_attention_kernels.cpp).
#pragma once

#if defined(__AVX512F__)
#include "core/intrinsics.h"
#include "core/isa.h"

namespace lg {
// Each instruction set's copies apart (core/isa.h).
inline namespace LG_ISA {

// 16 floats rounded to bf16, round to nearest even: each lane's bf16 in its upper 16 bits.
inline __m512i round_to_bf16_hi(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
}

// Pair words from two vectors: lane j gets even[j] in its low half and odd[j] in its high half,
// the layout vdpbf16ps reads (k = 2p and 2p + 1 in one 32-bit word).
inline __m512i pair_words(__m512 even, __m512 odd) {
  const __m512i lo = _mm512_srli_epi32(round_to_bf16_hi(even), 16);
  const __m512i hi = _mm512_and_si512(round_to_bf16_hi(odd), _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
  return _mm512_or_si512(lo, hi);
}

// Pair words from 16 consecutive values of one row: rounded, shifted to the low half of their
// lane, and narrowed to 16 bits each by vpmovdw, which lays x[2p] and x[2p + 1] side by side:
// 8 words.
inline __m256i pairs_of(__m512 x) { return _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_to_bf16_hi(x), 16)); }

}  // namespace LG_ISA
}  // namespace lg
#endif
