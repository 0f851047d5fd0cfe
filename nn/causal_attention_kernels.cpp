// nn/causal_attention_kernels.cpp: the per-head loops of MHA's fused core (nn/causal_attention_fused.cpp).
//
// Compiled once per instruction set (nn/causal_attention_kernels.h); with AVX-512, blocks of
// rows at d = 32 and 64 take the intrinsics paths below, the same values as the plain loops.
// Scores are computed 4 rows x 16 keys at a time against a transposed copy of the head's keys,
// accumulating over d in registers (a small sgemm micro-kernel, no horizontal sums). The copy
// holds K^T in blocks of 16 keys, each block's d x 16 floats contiguous (see transpose_head).
// Under bf16 mixed precision (Arith) every product of the core runs as pair steps of vdpbf16ps:
// the same blocks on operands turned into pair words (the section "bf16" below).
#include "nn/causal_attention_kernels.h"

#include <algorithm>
#include <cmath>

#include <cstring>

#if defined(__AVX512F__)
#include "core/bf16_avx512.h"
#include "core/intrinsics.h"
#endif

#include "core/fastmath.h"
#include "core/gemm_bf16.h"
#include "nn/row_kernels.h"

namespace lg::nn::causal_kernels {

namespace {

// Head sizes with AVX-512 blocks: in fp32, P V and the backward updates run the 32-column blocks
// once per 32 columns; in bf16, every product runs the AVX512-BF16 blocks.
template <int64_t kD>
constexpr bool kBlocksOf32 = kD == 32 || kD == 64;

// out[r][s] = scale a_r . x_s for rows r < R (R <= kRows, a_r = rows.row(first + r)) and keys s < n,
// from xt = X^T in blocks of kLanes keys (transpose_head). Each 4 x 16 block sums over d in
// registers: one load of xt per 4 FMAs.
template <int64_t kD>
void block_scores(const HeadView& rows, int64_t first, int64_t R, const float* xt, int64_t Tp,
                  int64_t d_runtime, int64_t n, float scale, float* out) {
  const int64_t d = kD > 0 ? kD : d_runtime;
  const float* a[kRows];
  for (int64_t r = 0; r < kRows; ++r) a[r] = rows.row(first + std::min(r, R - 1));
  int64_t s0 = 0;
#if defined(__AVX512F__)
  // 48 keys at a time while three blocks remain: 4 rows x 3 registers, twelve independent sums,
  // enough to keep both FMA units busy (one block's four would wait on each FMA's latency), and
  // 3 loads of keys per 12 FMAs. Each score is the same FMA chain over i as below: the same
  // values. (At d = 64, 4 x 48 blocks run at 1.7x the rate of 4 x 16 ones, 163 against 95
  // GFLOP/s on one core of an AMD EPYC (Zen 5), T = 256, all blocks of a head; 4 x 32: 148.)
  if constexpr (kD == 32 || kD == 64) {
    constexpr int kBlocks = 3;
    for (; s0 + (kBlocks - 1) * kLanes < n; s0 += kBlocks * kLanes) {
      __m512 acc[kRows][kBlocks];
      for (int64_t r = 0; r < kRows; ++r)
        for (int b = 0; b < kBlocks; ++b) acc[r][b] = _mm512_setzero_ps();
      const float* x = xt + s0 * kD;
#pragma GCC unroll 4
      for (int64_t i = 0; i < kD; ++i) {
        __m512 xb[kBlocks];
        for (int b = 0; b < kBlocks; ++b) xb[b] = _mm512_loadu_ps(x + (b * kD + i) * kLanes);
        for (int64_t r = 0; r < kRows; ++r) {
          const __m512 ar = _mm512_set1_ps(a[r][i]);
          for (int b = 0; b < kBlocks; ++b) acc[r][b] = _mm512_fmadd_ps(ar, xb[b], acc[r][b]);
        }
      }
      const __m512 sc = _mm512_set1_ps(scale);
      for (int64_t r = 0; r < R; ++r)
        for (int b = 0; b < kBlocks; ++b) _mm512_storeu_ps(out + r * Tp + s0 + b * kLanes, _mm512_mul_ps(acc[r][b], sc));
    }
  }
#endif
  for (; s0 < n; s0 += kLanes) {
    float acc[kRows][kLanes] = {};
    const float* xb = xt + s0 * d;
    for (int64_t i = 0; i < d; ++i) {
      const float* x = xb + i * kLanes;
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

// X^T of one head's rows in blocks of kLanes keys: element (i, s) at xt[(s / kLanes) * d * kLanes +
// i * kLanes + s % kLanes], padded(T) keys in all (the padding is never read as a score: rows use
// keys s <= t < T only). A block of scores then reads its keys' d x 16 floats in one contiguous
// stretch; with X^T as plain rows (d, Tp), each step of i read another row, 4 * Tp bytes on, and
// the blocks of scores ran at 0.6x the rate (one core of an AMD EPYC (Zen 5), d = 64, T = 256).
void transpose_head(const HeadView& x, int64_t T, int64_t d, float* xt) {
  int64_t s0 = 0;
#if defined(__AVX512F__)
  static_assert(kLanes == 16);
  if (d % 16 == 0)
    for (; s0 + 16 <= T; s0 += 16)
      for (int64_t i0 = 0; i0 < d; i0 += 16) transpose16(x.row(s0) + i0, x.row_stride, xt + s0 * d + i0 * 16, 16);
#endif
  for (int64_t s = s0; s < T; ++s) {
    const float* r = x.row(s);
    float* block = xt + (s / kLanes) * d * kLanes + s % kLanes;
    for (int64_t i = 0; i < d; ++i) block[i * kLanes] = r[i];
  }
}

// ---- bf16 (Arith::bf16) -------------------------------------------------------------------------
// Each product sums over an index in pairs, in order, each pair one step of what vdpbf16ps does
// in a lane (bf16_dot_pair) with both operands rounded to bf16. A score: over the pairs of d, a
// row's words (q_t[2p], q_t[2p+1]) against a key's. P V and dS K: over pairs of keys, a row's
// words (P_t,2j, P_t,2j+1) against the key pairs (v_2j[c], v_2j+1[c]). dS^T Q and P^T dO: over
// the block's rows in pairs (0, 1) and (2, 3), added to dk and dv. Operands are turned into pair
// words first (the even index in the low half, as the instruction reads them); the AVX512-BF16
// blocks and the portable loops then do the same operations in the same order.

constexpr int64_t pairs(int64_t d) { return (d + 1) / 2; }

uint32_t pair_word(float even, float odd) {
  return static_cast<uint32_t>(float_to_bf16(even)) | static_cast<uint32_t>(float_to_bf16(odd)) << 16;
}

// X^T from transpose_head, turned in place into pair words: in each block of kLanes keys, row p
// (kLanes words where the floats of row p were) holds the words (x_s[2p], x_s[2p + 1]) of the
// block's keys; the block keeps its place and stride (d x kLanes), its first pairs(d) rows used.
// Row p is written after rows 2p and 2p + 1 are read, and was itself read at pair p / 2: rows
// in order, in place. (The words live in a float buffer; memcpy and vector moves carry them.)
void pair_words_in_place(float* xt, int64_t Tp, int64_t d) {
  for (int64_t b = 0; b < Tp; b += kLanes) {
    float* block = xt + b * d;
    int64_t i = 0;  // the pair's even row: p = i / 2
#if defined(__AVX512F__)
    static_assert(kLanes == 16);
    for (; i + 1 < d; i += 2)
      _mm512_storeu_si512(block + i / 2 * kLanes,
                          pair_words(_mm512_loadu_ps(block + i * kLanes), _mm512_loadu_ps(block + (i + 1) * kLanes)));
#endif
    for (; i < d; i += 2)
      for (int64_t l = 0; l < kLanes; ++l) {
        const float even = block[i * kLanes + l], odd = i + 1 < d ? block[(i + 1) * kLanes + l] : 0.0f;
        const uint32_t w = pair_word(even, odd);
        std::memcpy(block + i / 2 * kLanes + l, &w, 4);
      }
  }
}

// The pair words of a row of d floats: w[p] = (x[2p], x[2p + 1]), 0 past d.
void row_pair_words(const float* x, int64_t d, uint32_t* w) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= d; i += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + i / 2), pairs_of(_mm512_loadu_ps(x + i)));
#endif
  for (; i < d; i += 2) w[i / 2] = pair_word(x[i], i + 1 < d ? x[i + 1] : 0.0f);
}

// The portable blocks: out[r][s] for rows r < R, keys s < n, from the rows' words a (kRows x
// pairs(d)) and the keys' words xw.
void bf16_scores_portable(const uint32_t* a, int64_t R, const float* xw, int64_t d, int64_t n, float scale,
                          float* out, int64_t Tp) {
  const int64_t P = pairs(d);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t s = 0; s < n; ++s) {
      const float* key = xw + (s / kLanes) * d * kLanes + s % kLanes;
      float acc = 0.0f;
      for (int64_t p = 0; p < P; ++p) {
        uint32_t w;
        std::memcpy(&w, key + p * kLanes, 4);
        acc = bf16_dot_pair(acc, a[r * P + p], w);
      }
      out[r * Tp + s] = acc * scale;
    }
}

#if defined(__AVX512F__)
// The AVX512-BF16 blocks at d = 32 and 64, shaped like block_scores': 4 rows x 48 keys while
// three blocks remain, then 4 x 16; each score one chain of vdpbf16ps over the pairs, as the
// portable loop. Half the instructions of the fp32 blocks, on half the bytes. Compiled for
// AVX512-BF16 whatever the file's flags; called only where gemm_bf16_available() says it runs.
template <int64_t kD>
__attribute__((target("avx512bf16"))) void bf16_scores_avx512(const uint32_t* a, int64_t R, const float* xw,
                                                               int64_t n, float scale, float* out, int64_t Tp) {
  constexpr int64_t P = kD / 2;
  const __m512 sc = _mm512_set1_ps(scale);
  int64_t s0 = 0;
  constexpr int kBlocks = 3;
  for (; s0 + (kBlocks - 1) * kLanes < n; s0 += kBlocks * kLanes) {
    __m512 acc[kRows][kBlocks];
    for (int64_t r = 0; r < kRows; ++r)
      for (int b = 0; b < kBlocks; ++b) acc[r][b] = _mm512_setzero_ps();
    const float* x = xw + s0 * kD;
#pragma GCC unroll 4
    for (int64_t p = 0; p < P; ++p) {
      __m512bh xb[kBlocks];
      for (int b = 0; b < kBlocks; ++b) xb[b] = (__m512bh)_mm512_loadu_si512(x + (b * kD + p) * kLanes);
      for (int64_t r = 0; r < kRows; ++r) {
        const __m512bh ar = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * P + p]));
        for (int b = 0; b < kBlocks; ++b) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], ar, xb[b]);
      }
    }
    for (int64_t r = 0; r < R; ++r)
      for (int b = 0; b < kBlocks; ++b) _mm512_storeu_ps(out + r * Tp + s0 + b * kLanes, _mm512_mul_ps(acc[r][b], sc));
  }
  for (; s0 < n; s0 += kLanes) {
    __m512 acc[kRows];
    for (int64_t r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
    const float* x = xw + s0 * kD;
    for (int64_t p = 0; p < P; ++p) {
      const __m512bh xb = (__m512bh)_mm512_loadu_si512(x + p * kLanes);
      for (int64_t r = 0; r < kRows; ++r)
        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * P + p])), xb);
    }
    for (int64_t r = 0; r < R; ++r) _mm512_storeu_ps(out + r * Tp + s0, _mm512_mul_ps(acc[r], sc));
  }
}
#endif

// Rows x (T of them, d floats) as key pairs: out[j * d + c] = (x_2j[c], x_2j+1[c]), x_T = 0: the
// operand of a product summed over keys, pairs of keys in one word.
void key_pair_words(const HeadView& x, int64_t T, int64_t d, uint32_t* out) {
  for (int64_t j = 0; 2 * j < T; ++j) {
    const float* a = x.row(2 * j);
    const float* b = 2 * j + 1 < T ? x.row(2 * j + 1) : nullptr;
    int64_t c = 0;
#if defined(__AVX512F__)
    for (; c + 16 <= d; c += 16)
      _mm512_storeu_si512(out + j * d + c, pair_words(_mm512_loadu_ps(a + c), b ? _mm512_loadu_ps(b + c) : _mm512_setzero_ps()));
#endif
    for (; c < d; ++c) out[j * d + c] = pair_word(a[c], b ? b[c] : 0.0f);
  }
}

// Two rows side by side: out[i] = (a[i], b[i]) for i < n; a null row reads as zeros.
void across_pairs(const float* a, const float* b, int64_t n, uint32_t* out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_si512(out + i, pair_words(a ? _mm512_loadu_ps(a + i) : _mm512_setzero_ps(),
                                            b ? _mm512_loadu_ps(b + i) : _mm512_setzero_ps()));
#endif
  for (; i < n; ++i) out[i] = pair_word(a ? a[i] : 0.0f, b ? b[i] : 0.0f);
}

// out rows r < R (d floats, out_stride apart) = the sum over pairs j < J, in order and from 0, of
// the pair step of row r's word w[r * ws + j] with the words kp[j * d + c]: P V and dS K, with
// P or dS as pairs along the keys and V or K as key pairs.
void pair_product_portable(const uint32_t* w, int64_t ws, int64_t J, const uint32_t* kp, int64_t d, int64_t R,
                           float* out, int64_t out_stride) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < d; ++c) {
      float acc = 0.0f;
      for (int64_t j = 0; j < J; ++j) acc = bf16_dot_pair(acc, w[r * ws + j], kp[j * d + c]);
      out[r * out_stride + c] = acc;
    }
}

// dst rows i < n (d floats each, d apart) += the pair step of a01[i] with x01[c], then of a23[i]
// with x23[c]: dS^T Q into dk and P^T dO into dv for a block of 4 rows, the rows in pairs (0, 1)
// and (2, 3).
void pair_updates_portable(const uint32_t* a01, const uint32_t* a23, const uint32_t* x01, const uint32_t* x23,
                           int64_t n, int64_t d, float* dst) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < d; ++c)
      dst[i * d + c] = bf16_dot_pair(bf16_dot_pair(dst[i * d + c], a01[i], x01[c]), a23[i], x23[c]);
}

#if defined(__AVX512F__)
// The AVX512-BF16 twins of the two above at d = 32 and 64: the same steps in the same order.
template <int64_t kD>
__attribute__((target("avx512bf16"))) void pair_product_avx512(const uint32_t* w, int64_t ws, int64_t J,
                                                                const uint32_t* kp, int64_t R, float* out,
                                                                int64_t out_stride) {
  constexpr int kC = kD / 16;
  __m512 acc[kRows][kC];
  for (int64_t r = 0; r < kRows; ++r)
    for (int c = 0; c < kC; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < J; ++j) {
    __m512bh x[kC];
    for (int c = 0; c < kC; ++c) x[c] = (__m512bh)_mm512_loadu_si512(kp + j * kD + 16 * c);
    for (int64_t r = 0; r < kRows; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[r * ws + j]));
      for (int c = 0; c < kC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, x[c]);
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int c = 0; c < kC; ++c) _mm512_storeu_ps(out + r * out_stride + 16 * c, acc[r][c]);
}

template <int64_t kD>
__attribute__((target("avx512bf16"))) void pair_updates_avx512(const uint32_t* a01, const uint32_t* a23,
                                                                const uint32_t* x01, const uint32_t* x23, int64_t n,
                                                                float* dst) {
  constexpr int kC = kD / 16;
  __m512bh b01[kC], b23[kC];
  for (int c = 0; c < kC; ++c) {
    b01[c] = (__m512bh)_mm512_loadu_si512(x01 + 16 * c);
    b23[c] = (__m512bh)_mm512_loadu_si512(x23 + 16 * c);
  }
  for (int64_t i = 0; i < n; ++i) {
    const __m512bh w01 = (__m512bh)_mm512_set1_epi32(static_cast<int>(a01[i]));
    const __m512bh w23 = (__m512bh)_mm512_set1_epi32(static_cast<int>(a23[i]));
    float* row = dst + i * kD;
    for (int c = 0; c < kC; ++c)
      _mm512_storeu_ps(row + 16 * c, _mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_loadu_ps(row + 16 * c), w01, b01[c]), w23, b23[c]));
  }
}
#endif

// How a head computes (Arith): fp32, or bf16 with `words` (bf16_words(T, d)) as scratch and,
// where it runs, the AVX512-BF16 blocks.
struct Mixed {
  bool bf16 = false, fast = false;
  int64_t d = 0, ws = 0;  // head size; stride of the rows' words along the keys
  uint32_t *rows = nullptr, *key_pairs = nullptr, *along = nullptr, *across = nullptr, *row_pairs = nullptr;

  Mixed(Arith arith, uint32_t* words, int64_t T, int64_t d_)
      : bf16(arith != Arith::fp32), fast(arith == Arith::bf16 && gemm_bf16_available()), d(d_), ws(padded(T) / 2) {
    if (!bf16) return;
    rows = words;                           // kRows x d: a block's rows for its scores
    key_pairs = rows + kRows * d;           // (T + 1) / 2 x d: V (forward) or K (backward) as key pairs
    along = key_pairs + (T + 1) / 2 * d;    // kRows x ws: P or dS as pairs along the keys
    across = along + kRows * ws;            // 2 x padded(T): dS or P, rows (0, 1) and (2, 3) side by side
    row_pairs = across + 2 * padded(T);     // 2 x d: q or dO, rows (0, 1) and (2, 3) side by side
  }

  // K^T (or V^T) from transpose_head, made ready for these scores.
  void prepare_keys(float* xt, int64_t Tp) const {
    if (bf16) pair_words_in_place(xt, Tp, d);
  }

  // block_scores' job (same arguments), in this arithmetic.
  template <int64_t kD>
  void scores(const HeadView& rows_of, int64_t first, int64_t R, const float* xt, int64_t Tp, int64_t n, float scale,
              float* out) const {
    if (!bf16) return block_scores<kD>(rows_of, first, R, xt, Tp, d, n, scale, out);
    for (int64_t r = 0; r < kRows; ++r) row_pair_words(rows_of.row(first + std::min(r, R - 1)), d, rows + r * pairs(d));
#if defined(__AVX512F__)
    if constexpr (kBlocksOf32<kD>)
      if (fast) return bf16_scores_avx512<kD>(rows, R, xt, n, scale, out, Tp);
#endif
    bf16_scores_portable(rows, R, xt, d, n, scale, out, Tp);
  }

  // out rows r < R = (rows r of w, n values Tp apart, zero past n) times the key pairs.
  template <int64_t kD>
  void product(const float* w, int64_t Tp, int64_t R, int64_t n, float* out, int64_t out_stride) const {
    for (int64_t r = 0; r < R; ++r) row_pair_words(w + r * Tp, n, along + r * ws);
    const int64_t J = (n + 1) / 2;
#if defined(__AVX512F__)
    if constexpr (kBlocksOf32<kD>)
      if (fast) return pair_product_avx512<kD>(along, ws, J, key_pairs, R, out, out_stride);
#endif
    pair_product_portable(along, ws, J, key_pairs, d, R, out, out_stride);
  }

  // dst rows s < n += sum over the block's rows r < R of a_r[s] x_r (a: rows Tp apart, x: rows
  // of the head), the rows in pairs (0, 1) and (2, 3), missing rows as zeros.
  template <int64_t kD>
  void updates(const float* a, int64_t Tp, const HeadView& x, int64_t t0, int64_t R, int64_t n, float* dst) const {
    const auto a_row = [&](int64_t r) { return r < R ? a + r * Tp : nullptr; };
    const auto x_row = [&](int64_t r) { return r < R ? x.row(t0 + r) : nullptr; };
    uint32_t *a01 = across, *a23 = across + padded(n), *x01 = row_pairs, *x23 = row_pairs + d;
    across_pairs(a_row(0), a_row(1), n, a01);
    across_pairs(a_row(2), a_row(3), n, a23);
    across_pairs(x_row(0), x_row(1), d, x01);
    across_pairs(x_row(2), x_row(3), d, x23);
#if defined(__AVX512F__)
    if constexpr (kBlocksOf32<kD>)
      if (fast) return pair_updates_avx512<kD>(a01, a23, x01, x23, n, dst);
#endif
    pair_updates_portable(a01, a23, x01, x23, n, d, dst);
  }
};

#if defined(__AVX512F__)
// o_t = sum_{s <= t} P_ts v_s for the block's rows t = t0 + r, r < R, at d = 32, from the
// probabilities p (rows Tp apart): each v_s is loaded once for the block's rows instead of once
// per row. Like weighted_rows, even and odd s go to two sums added at the end, so each o_t gets
// the same operations in the same order as there: the same values. Keys past a row's causal
// edge, up to the block's last, are given weight 0, which adds exactly 0 (rows past R: all 0).
inline void block_pv_32(float* p, int64_t Tp, int64_t t0, int64_t R, int64_t cols, const HeadView& vh,
                        float* o, int64_t o_row_stride) {
  for (int64_t r = 0; r < kRows; ++r)
    std::fill(p + r * Tp + (r < R ? t0 + r + 1 : 0), p + r * Tp + cols, 0.0f);
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

// Kernels::forward_head. kD > 0 fixes the head size at compile time (32 and 64): the d-long loops unroll.
template <int64_t kD>
void forward_head(const HeadView& qh, const HeadView& kh, const HeadView& vh, int64_t T, int64_t d_runtime,
                  float scale, Arith arith, float* o, int64_t o_row_stride, float* lse, float* kt, uint32_t* words,
                  float* p_rows, bool keep) {
  const int64_t d = kD > 0 ? kD : d_runtime;
  const int64_t Tp = padded(T);
  const Mixed mixed(arith, words, T, d);
  transpose_head(kh, T, d, kt);
  mixed.prepare_keys(kt, Tp);
  if (mixed.bf16) key_pair_words(vh, T, d, mixed.key_pairs);
  for (int64_t t0 = 0; t0 < T; t0 += kRows) {
    const int64_t R = std::min(kRows, T - t0), cols = std::min(T, t0 + kRows);  // keys s < cols
    float* p = keep ? p_rows + t0 * Tp : p_rows;
    mixed.scores<kD>(qh, t0, R, kt, Tp, cols, scale, p);
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
    if (mixed.bf16) {
      for (int64_t r = 0; r < R; ++r) std::fill(p + r * Tp + t0 + r + 1, p + r * Tp + cols, 0.0f);
      mixed.product<kD>(p, Tp, R, cols, o + t0 * o_row_stride, o_row_stride);
      continue;
    }
#if defined(__AVX512F__)
    if constexpr (kBlocksOf32<kD>) {  // 64: two halves of 32 columns, each o_t element alike
      for (int64_t c = 0; c < kD; c += 32)
        block_pv_32(p, Tp, t0, R, cols, HeadView{vh.data + c, vh.row_stride}, o + c, o_row_stride);
      continue;
    }
#endif
    for (int64_t r = 0; r < R; ++r)
      weighted_rows<kD>(p + r * Tp, vh.row(0), vh.row_stride, t0 + r + 1, d, o + (t0 + r) * o_row_stride);
  }
}

#if defined(__AVX512F__)
// The updates of one block of 4 rows t0..t0+3 in 32 columns, c to c + 31, of rows of d floats
// (two 512-bit registers per row; d = 64 takes two calls), keys s < cols: dq_r = sum_s dS_rs k_s,
// dk_s += sum_r dS_rs q_r, dv_s += sum_r P_rs dO_r. The block's q, dO and dq rows stay in
// registers (24 of 32), so each key's dk_s and dv_s are loaded and stored once per block instead
// of once per row. dS and P are zero past each row's causal edge. Every dk_s and dv_s takes its
// terms in the same order as the row-by-row loop (rows ascending), one fused multiply-add each:
// the same values.
inline void block_updates_32(const HeadView& qh, const HeadView& kh, const HeadView& gh, int64_t t0,
                             int64_t cols, const float* p_block, const float* ds_block, int64_t Tp, int64_t d,
                             int64_t c, float* dq, float* dk, float* dv) {
  __m512 q[kRows][2], go[kRows][2], aq[kRows][2];
  for (int64_t r = 0; r < kRows; ++r)
    for (int h = 0; h < 2; ++h) {
      q[r][h] = _mm512_loadu_ps(qh.row(t0 + r) + c + 16 * h);
      go[r][h] = _mm512_loadu_ps(gh.row(t0 + r) + c + 16 * h);
      aq[r][h] = _mm512_setzero_ps();
    }
  for (int64_t s = 0; s < cols; ++s) {
    const float* ks = kh.row(s) + c;
    float *dks = dk + s * d + c, *dvs = dv + s * d + c;
    const __m512 k0 = _mm512_loadu_ps(ks), k1 = _mm512_loadu_ps(ks + 16);
    __m512 dk0 = _mm512_loadu_ps(dks), dk1 = _mm512_loadu_ps(dks + 16);
    __m512 dv0 = _mm512_loadu_ps(dvs), dv1 = _mm512_loadu_ps(dvs + 16);
    for (int64_t r = 0; r < kRows; ++r) {
      const __m512 ds = _mm512_set1_ps(ds_block[r * Tp + s]), ps = _mm512_set1_ps(p_block[r * Tp + s]);
      aq[r][0] = _mm512_fmadd_ps(ds, k0, aq[r][0]);
      aq[r][1] = _mm512_fmadd_ps(ds, k1, aq[r][1]);
      dk0 = _mm512_fmadd_ps(ds, q[r][0], dk0);
      dk1 = _mm512_fmadd_ps(ds, q[r][1], dk1);
      dv0 = _mm512_fmadd_ps(ps, go[r][0], dv0);
      dv1 = _mm512_fmadd_ps(ps, go[r][1], dv1);
    }
    _mm512_storeu_ps(dks, dk0);
    _mm512_storeu_ps(dks + 16, dk1);
    _mm512_storeu_ps(dvs, dv0);
    _mm512_storeu_ps(dvs + 16, dv1);
  }
  for (int64_t r = 0; r < kRows; ++r) {
    _mm512_storeu_ps(dq + (t0 + r) * d + c, aq[r][0]);
    _mm512_storeu_ps(dq + (t0 + r) * d + c + 16, aq[r][1]);
  }
}
#endif

// Kernels::backward_head, kD as above.
template <int64_t kD>
void backward_head(const HeadView& qh, const HeadView& kh, const HeadView& vh, const HeadView& gh,
                   const HeadView& oh, const float* lse, float* kept, int64_t T, int64_t d_runtime,
                   float scale, Arith arith, float* dq, float* dk, float* dv, float* kt, float* vt, uint32_t* words,
                   float* p_scratch, float* ds_block) {
  const int64_t d = kD > 0 ? kD : d_runtime;
  const int64_t Tp = padded(T);
  const Mixed mixed(arith, words, T, d);
  if (!kept) {
    transpose_head(kh, T, d, kt);
    mixed.prepare_keys(kt, Tp);
  }
  transpose_head(vh, T, d, vt);
  mixed.prepare_keys(vt, Tp);
  if (mixed.bf16) key_pair_words(kh, T, d, mixed.key_pairs);
  for (int64_t t0 = 0; t0 < T; t0 += kRows) {
    const int64_t R = std::min(kRows, T - t0), cols = std::min(T, t0 + kRows);  // keys s < cols
    float* p_block = kept ? kept + t0 * Tp : p_scratch;
    if (!kept) mixed.scores<kD>(qh, t0, R, kt, Tp, cols, scale, p_block);
    mixed.scores<kD>(gh, t0, R, vt, Tp, cols, 1.0f, ds_block);
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
    if (mixed.bf16) {  // dq = dS K, dk += dS^T Q, dv += P^T dO
      mixed.product<kD>(ds_block, Tp, R, cols, dq + t0 * d, d);
      mixed.updates<kD>(ds_block, Tp, qh, t0, R, cols, dk);
      mixed.updates<kD>(p_block, Tp, gh, t0, R, cols, dv);
      continue;
    }
#if defined(__AVX512F__)
    if (kBlocksOf32<kD> && R == kRows) {
      for (int64_t c = 0; c < kD; c += 32)  // 64: two halves of 32 columns
        block_updates_32(qh, kh, gh, t0, cols, p_block, ds_block, Tp, kD, c, dq, dk, dv);
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

// Kernels::head_scores, kD as above.
template <int64_t kD>
void head_scores(const HeadView& qh, const HeadView& kh, int64_t T, int64_t d, float scale, Arith arith, float* kt,
                 uint32_t* words, float* out) {
  const int64_t Tp = padded(T);
  const Mixed mixed(arith, words, T, d);
  transpose_head(kh, T, d, kt);
  mixed.prepare_keys(kt, Tp);
  for (int64_t t0 = 0; t0 < T; t0 += kRows)
    mixed.scores<kD>(qh, t0, std::min(kRows, T - t0), kt, Tp, std::min(T, t0 + kRows), scale, out + t0 * Tp);
}

// The head size fixed at compile time where it is one of the common two.
void forward_any(const HeadView& q, const HeadView& k, const HeadView& v, int64_t T, int64_t d, float scale,
                 Arith arith, float* o, int64_t o_row_stride, float* lse, float* kt, uint32_t* words, float* p,
                 bool keep) {
  (d == 32   ? forward_head<32>
   : d == 64 ? forward_head<64>
             : forward_head<0>)(q, k, v, T, d, scale, arith, o, o_row_stride, lse, kt, words, p, keep);
}

void backward_any(const HeadView& q, const HeadView& k, const HeadView& v, const HeadView& g,
                  const HeadView& o, const float* lse, float* kept, int64_t T, int64_t d, float scale, Arith arith,
                  float* dq, float* dk, float* dv, float* kt, float* vt, uint32_t* words, float* p, float* ds) {
  (d == 32   ? backward_head<32>
   : d == 64 ? backward_head<64>
             : backward_head<0>)(q, k, v, g, o, lse, kept, T, d, scale, arith, dq, dk, dv, kt, vt, words, p, ds);
}

void scores_any(const HeadView& q, const HeadView& k, int64_t T, int64_t d, float scale, Arith arith, float* kt,
                uint32_t* words, float* out) {
  (d == 32 ? head_scores<32> : d == 64 ? head_scores<64> : head_scores<0>)(q, k, T, d, scale, arith, kt, words, out);
}

}  // namespace

namespace LG_ISA {
const Kernels kernels{forward_any, backward_any, scores_any};
}

}  // namespace lg::nn::causal_kernels
