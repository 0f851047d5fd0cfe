// core/gemm_bf16_avx512.cpp: the AVX512-BF16 GEMM: packing that rounds to bf16, the 14 x 32 micro-kernel, cache blocks, threads.
//
// The loops are BLIS's (Van Zee and van de Geijn, "BLIS: A Framework for Rapidly Instantiating
// BLAS Functionality", 2015), around one instruction: vdpbf16ps acc, a, b treats each 32-bit
// lane of a and b as a pair of bf16 values and adds a.lo * b.lo + a.hi * b.hi to the fp32 lane
// of acc. So both packed operands hold two consecutive k values in every 32-bit word:
//
//   packed B, a panel of kNR = 32 columns: for each pair p of k, 32 words (B[2p][j], B[2p+1][j]);
//   packed A, a panel of kMR = 14 rows: the words (A[i][2p], A[i][2p+1]), in chunks of 8 pairs or pair by
//   pair, whichever its source gives cheaply (pack_a_block).
//
// The micro-kernel loads B's 32 words for pair p as two zmm registers, broadcasts A's word for
// row i to all 16 lanes, and issues two vdpbf16ps per row: 28 accumulators hold the 14 x 32
// tile of C. docs/performance.md ("A bf16 GEMM") explains the choices and measures each step.
//
// This file is compiled with AVX512-BF16 flags in every build and runs only where
// gemm_bf16_available() said yes. It uses no standard-library template, and its one project
// header with inline code (core/bf16_avx512.h) names its functions for their instruction set,
// so it defines no weak symbol that baseline code could end up calling (core/isa.h; the CTest
// bf16_symbols checks it).
#include <omp.h>

#include <cstring>

#include "core/bf16_avx512.h"
#include "core/gemm_bf16_kernel.h"
#include "core/intrinsics.h"

namespace lg::gemm_bf16_kernel {

namespace {

constexpr int64_t MR = kMR, NR = kNR;

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__mmask16 first_lanes(int64_t n) { return n >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << n) - 1); }

// 16 floats from src, of which the first n are wanted; the others read as zeros, or (full:
// the caller knows all 16 exist) as whatever they hold. A masked load costs more than a plain
// one even with every lane set: on an AMD EPYC (Zen 5), plain loads wherever all 16 exist made
// the packing 20-30% cheaper and the products 1.08x faster (median of 13 shapes, one thread).
__m512 load_lanes(const float* src, int64_t n, bool full = false) {
  return n >= 16 || full ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(first_lanes(n), src);
}

// The pair words of 16 consecutive k values of a row (fewer at its end: n, the rest read as
// zeros): 8 words (pairs_of, core/bf16_avx512.h).
__m256i pairs_of_row(const float* src, int64_t n) { return pairs_of(load_lanes(src, n)); }

// Reading ahead. The packing reads its source from memory a stretch of a row at a time: kc
// floats of a row of A, or 16 or 32 floats of each of two rows. Each stretch starts on another
// page, where the hardware's prefetchers learn the stream too late, and the packing's
// instructions fill the out-of-order window while few of its loads are in flight: on an AMD
// EPYC (Zen 5), packing A (4096 x 1536, from memory) read it at 8-10 GB/s, where a plain
// sum of the same stretches reads 21. So each packing loop also asks, line by line, for the
// same stretch of a row further on, about 100 cache lines ahead of its loads: then the packing
// reads at 20-25 GB/s. (The source rows past the matrix are never asked for.)
//   kRowsAhead: for stretches of kc floats (24 lines at kc = 384);
//   pack_pairs, whose stretches are as wide as a block, reads ahead by as many rows as make
//   about 100 lines.
constexpr int64_t kRowsAhead = 4;

void prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }

// Every cache line of the n floats from p (n > 0).
void prefetch_floats(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) prefetch(p + i);
  prefetch(p + n - 1);
}

// The row `ahead` rows after row `row` of a source of `rows` rows ld apart, or null past its end.
const float* row_ahead(const float* src, int64_t ld, int64_t row, int64_t ahead, int64_t rows) {
  return row + ahead < rows ? src + ahead * ld : nullptr;
}

// 8 x 8 transposes of 32-bit words, two side by side: r[j] holds row j of the first in its lower
// 256 bits and row j of the second in its upper; out[q] gets column q of each, in the same halves.
// Unpacking words, then pairs of words, transposes the 4 x 4 blocks inside each 128-bit lane;
// a permutation of 64-bit pairs across two registers then puts the blocks in place.
void transpose_8x8_twice(const __m512i (&r)[8], __m512i (&out)[8]) {
  __m512i t[8], u[8];
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm512_unpacklo_epi32(r[j], r[j + 1]);  // per lane: r_j[0] r_j+1[0] r_j[1] r_j+1[1]
    t[j + 1] = _mm512_unpackhi_epi32(r[j], r[j + 1]);  // r_j[2] r_j+1[2] r_j[3] r_j+1[3]
  }
  for (int j = 0; j < 8; j += 4) {  // u[j + c]: column c of rows j..j+3 (lower 128 bits), c + 4 (upper)
    u[j] = _mm512_unpacklo_epi64(t[j], t[j + 2]);
    u[j + 1] = _mm512_unpackhi_epi64(t[j], t[j + 2]);
    u[j + 2] = _mm512_unpacklo_epi64(t[j + 1], t[j + 3]);
    u[j + 3] = _mm512_unpackhi_epi64(t[j + 1], t[j + 3]);
  }
  // column c: rows 0-3 from u[c], rows 4-7 from u[c + 4], in each half; c + 4 likewise from the
  // upper 128 bits of each half
  const __m512i low = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), high = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  for (int c = 0; c < 4; ++c) {
    out[c] = _mm512_permutex2var_epi64(u[c], low, u[c + 4]);
    out[c + 4] = _mm512_permutex2var_epi64(u[c], high, u[c + 4]);
  }
}

// 16 source rows along which k runs contiguously (columns of a transposed B; rows past `rows`
// read as zeros), their kc values as the pair words of 16 columns of a panel: word (p, j) at
// dst[p * NR + j]. Each row gives 8 pair words per 16 floats (pairs_of_row), and a 16 x 8
// transpose turns them into 8 panel rows of 16 words: whole stores instead of 8 scattered words
// per row (the packing's share of a 4096 x 384 x 384 nt product fell from 15% to 8%).
void pack_16_k_contiguous(const float* src, int64_t ld, int64_t rows, int64_t kc, uint32_t* dst) {
  for (int64_t k = 0; k < kc; k += 16) {
    const int64_t n = min64(16, kc - k);
    __m512i r[8], out[8];
    for (int j = 0; j < 8; ++j) {
      const __m256i lo = j < rows ? pairs_of_row(src + j * ld + k, n) : _mm256_setzero_si256();
      const __m256i hi = j + 8 < rows ? pairs_of_row(src + (j + 8) * ld + k, n) : _mm256_setzero_si256();
      r[j] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    transpose_8x8_twice(r, out);
    for (int64_t q = 0; q < (n + 1) / 2; ++q) _mm512_store_si512(dst + (k / 2 + q) * NR, out[q]);
  }
}

// Pairs per chunk of an untransposed A's panel (see pack_a_block): 16 floats of a row.
constexpr int64_t kChunk = 8;

// The same row's pair words into the chunks of a panel: 16 floats in, 8 words (32 bytes) out
// at dst, dst + MR * kChunk, ...: no scatter.
void pack_k_contiguous_chunks(const float* src, int64_t kc, uint32_t* dst, const float* next) {
  for (int64_t k = 0; k < kc; k += 2 * kChunk, dst += MR * kChunk) {
    const int64_t n = min64(2 * kChunk, kc - k);
    if (next) prefetch(next + k);
    const __mmask8 words = static_cast<__mmask8>((1u << ((n + 1) / 2)) - 1);
    _mm256_mask_storeu_epi32(dst, words, pairs_of_row(src + k, n));
  }
}

// Rows k0 .. k0 + kc of a source whose rows run along the panels' width (an untransposed B, a
// transposed A), columns [col0, col0 + cols), as the pair words of panels `width` columns wide
// (NR for B, MR for A), panel q at dst + q * panel_words: word (p, j) of a panel at p * width + j.
// Columns past `cols` and the odd k past kc are zeros: they add nothing to the sums.
// The loop runs pair by pair over the whole block, each pair reading its two rows from col0 on
// for all the panels: the source is read as it lies in memory. (Panel by panel, each panel
// reading a strip of 56 or 128 bytes of every row, a 384 x 384 x 4096 tn product spent 21% of
// its time packing.) rows: the source's rows in all. slack: each row has two readable floats
// past col0 + cols, so a panel of 14 whole columns may load 16 (see load_lanes).
template <int64_t kWidth>
void pack_pairs(const float* src, int64_t ld, int64_t rows, int64_t k0, int64_t kc, int64_t col0, int64_t cols,
                bool slack, int64_t panel_words, uint32_t* dst) {
  const int64_t kp = ceil_div(kc, 2), panels = ceil_div(cols, kWidth);
  const int64_t lines_per_pair = 2 * ceil_div(cols, 16);
  const int64_t ahead = 2 * (lines_per_pair >= 100 ? 1 : ceil_div(100, lines_per_pair));  // rows, ~100 lines
  for (int64_t p = 0; p < kp; ++p) {
    const float* even = src + (k0 + 2 * p) * ld + col0;
    const bool has_odd = 2 * p + 1 < kc;
    if (const float* next = row_ahead(even, ld, k0 + 2 * p, ahead, rows)) {
      prefetch_floats(next, cols);
      if (k0 + 2 * p + ahead + 1 < rows) prefetch_floats(next + ld, cols);
    }
    for (int64_t q = 0; q < panels; ++q) {
      uint32_t* out = dst + q * panel_words + p * kWidth;
      for (int64_t h = 0; h < kWidth; h += 16) {
        const int64_t c = q * kWidth + h, n = cols > c ? min64(cols - c, kWidth - h) : 0;
        const bool whole = slack && n == kWidth - h;
        const __m512 e = load_lanes(even + c, n, whole);
        const __m512 o = has_odd ? load_lanes(even + ld + c, n, whole) : _mm512_setzero_ps();
        if constexpr (kWidth % 16 == 0)
          _mm512_store_si512(out + h, pair_words(e, o));
        else
          _mm512_mask_storeu_epi32(out + h, first_lanes(kWidth - h), pair_words(e, o));
      }
    }
  }
}

// A block of kc rows of op(B) (from k0) and columns [j0, j0 + nc) as panels of NR columns, panel
// jp at dst + jp * NR * kp. op(B) has K rows in all (for reading ahead).
void pack_b_block(bool trans_b, const float* B, int64_t ldb, int64_t K, int64_t k0, int64_t kc,
                  int64_t j0, int64_t nc, uint32_t* dst) {
  const int64_t kp = ceil_div(kc, 2);
  if (!trans_b) {  // B[k][j]: a row of j is contiguous; rows 2p and 2p + 1 make a panel row
    pack_pairs<NR>(B, ldb, K, k0, kc, j0, nc, false, NR * kp, dst);
  } else {  // B stored as N x K: column j of op(B) is a contiguous row
    for (int64_t jp = 0; jp * NR < nc; ++jp)
      for (int64_t h = 0; h < NR; h += 16)
        pack_16_k_contiguous(B + (j0 + jp * NR + h) * ldb + k0, ldb, nc - jp * NR - h, kc, dst + jp * NR * kp + h);
  }
}

// Words of an A panel per pair of k, rounded up to whole chunks: the panels' spacing.
int64_t a_panel_pairs(int64_t kp) { return ceil_div(kp, kChunk) * kChunk; }

// Rows [i0, i0 + mc) of op(A), k from k0 to k0 + kc, as panels of MR rows (missing rows zero),
// panel ip at dst + ip * MR * a_panel_pairs(kp). The micro-kernel only broadcasts words one at
// a time, so the packing may keep the layout its source gives cheaply:
//   A untransposed (k contiguous): chunks of kChunk pairs, in each the MR rows one after the
//     other, each row's kChunk words side by side (the 8 words of 16 floats);
//   A transposed (i contiguous): pair by pair, the MR rows side by side.
// Turning one into the other would be a transpose in the packing, whose cost counts here:
// A is packed once for every N columns of work, where B is packed once for every M rows.
// (A plain row-by-row layout also avoids the transpose, but the micro-kernel then needs a
// pointer register per row, and GCC spills them: 77% of the peak loop's rate, against 82%
// pair by pair, in perf samples per instruction.)
// op(A) has M x K elements in all.
void pack_a_block(bool trans_a, const float* A, int64_t lda, int64_t M, int64_t K, int64_t i0, int64_t mc,
                  int64_t k0, int64_t kc, uint32_t* dst) {
  const int64_t kp = ceil_div(kc, 2), panel_words = MR * a_panel_pairs(kp);
  if (!trans_a) {
    for (int64_t ip = 0; ip * MR < mc; ++ip, dst += panel_words) {
      const int64_t mr = min64(MR, mc - ip * MR);
      for (int64_t i = 0; i < mr; ++i) {
        const int64_t r = i0 + ip * MR + i;
        const float* row = A + r * lda + k0;
        pack_k_contiguous_chunks(row, kc, dst + i * kChunk, row_ahead(row, lda, r, kRowsAhead, M));
      }
      for (int64_t g = 0; g < ceil_div(kp, kChunk); ++g)
        std::memset(dst + g * MR * kChunk + mr * kChunk, 0, (MR - mr) * kChunk * sizeof(uint32_t));
    }
  } else {
    pack_pairs<MR>(A, lda, K, k0, kc, i0, mc, i0 + mc + 2 <= M, panel_words, dst);
  }
}

// One pair of k for the whole tile: B's two registers, then per row A's word broadcast and two
// vdpbf16ps. Row i's word is at a[i * kRowStride]: a constant displacement in both layouts.
template <int64_t kRowStride>
inline void pair_step(__m512 (&acc)[MR][2], const uint32_t* a, const uint32_t* b) {
  const __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
  for (int64_t i = 0; i < MR; ++i) {
    const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * kRowStride]));
    acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
    acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
  }
}

// Where a tile's sums start: zeros, C's old values, or the bias row (the NR floats at `bias`, the
// same for every row of the tile).
enum class Start { zeros, c, bias };

// The micro-kernel: C[0..MR)[0..NR) = start + A panel x B panel over kp > 0 pairs of k. 28
// accumulators, two registers of B and one broadcast word of A: 31 of the 32 zmm registers.
// kChunkedA: the A panel in chunks (an untransposed A, see pack_a_block), else pair by pair.
// GCC keeps the 28 sums in registers through the loop, but it also kept a copy of them on the
// stack wherever two paths met: before the loop (C loaded or zeros, and the path that skips a
// loop of no pairs), and between a main loop and a tail loop. Those 56 extra stores and loads
// per tile cost 5-20% of a product whose K is small (384x384x128: 1.19x faster without them,
// one thread): so one template per start, kp > 0 promised to the compiler, and one loop.
template <bool kChunkedA, Start kStart>
void micro_kernel(int64_t kp, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, const float* bias) {
  if (kp <= 0) __builtin_unreachable();
  __m512 acc[MR][2];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t h = 0; h < 2; ++h)
      acc[i][h] = kStart == Start::c      ? _mm512_loadu_ps(c + i * ldc + 16 * h)
                  : kStart == Start::bias ? _mm512_loadu_ps(bias + 16 * h)
                                          : _mm512_setzero_ps();
  if constexpr (kChunkedA) {
    // One loop over the pairs: A's word for pair p sits at chunk p / kChunk, word p % kChunk.
#pragma GCC unroll 8
    for (int64_t p = 0; p < kp; ++p, b += NR)
      pair_step<kChunk>(acc, a + (p / kChunk) * MR * kChunk + p % kChunk, b);
  } else {
    for (int64_t p = 0; p < kp; ++p, a += MR, b += NR) pair_step<1>(acc, a, b);
  }
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t h = 0; h < 2; ++h) _mm512_storeu_ps(c + i * ldc + 16 * h, acc[i][h]);
}

// One tile of C, its sums starting as `start` says (bias: the tile's part of the bias row). At
// the edge of C (mr < MR or nr < NR) the micro-kernel runs on a full tile in a local buffer,
// which starts as the tile would, and only the part inside C is read and written.
template <bool kChunkedA>
void tile(int64_t kp, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, Start start, const float* bias,
          int64_t mr, int64_t nr) {
  if (mr == MR && nr == NR) {
    switch (start) {
      case Start::zeros: return micro_kernel<kChunkedA, Start::zeros>(kp, a, b, c, ldc, bias);
      case Start::c: return micro_kernel<kChunkedA, Start::c>(kp, a, b, c, ldc, bias);
      case Start::bias: return micro_kernel<kChunkedA, Start::bias>(kp, a, b, c, ldc, bias);
    }
  }
  alignas(64) float edge[MR * NR];
  std::memset(edge, 0, sizeof(edge));
  for (int64_t i = 0; i < mr; ++i) {
    if (start == Start::c) std::memcpy(edge + i * NR, c + i * ldc, nr * sizeof(float));
    if (start == Start::bias) std::memcpy(edge + i * NR, bias, nr * sizeof(float));
  }
  micro_kernel<kChunkedA, Start::c>(kp, a, b, edge, NR, bias);
  for (int64_t i = 0; i < mr; ++i) std::memcpy(c + i * ldc, edge + i * NR, nr * sizeof(float));
}

// Asks for the tile of C at c (MR rows of NR floats: two cache lines each) to be brought
// into L1 while the current tile computes. C is read at the start of a micro-kernel, before
// its first vdpbf16ps can issue; from L3 or memory (a 4096 x 384 C is 6 MB) that wait is
// as long as a good part of the tile's arithmetic.
void prefetch_tile(const float* c, int64_t ldc, int64_t mr) {
  for (int64_t i = 0; i < mr; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
}

// One operand of a product: where op(X)'s element (r, k) lives.
struct Source {
  const float* data;
  int64_t ld;
  bool trans;
};

// The product on one thread: BLIS's five loops around the micro-kernel. mc: a multiple of MR,
// kc: even, nc: a multiple of NR. b_pack holds nc x kc bf16, a_pack mc x kc.
void gemm_one_thread(int64_t mc, int64_t kc_max, int64_t nc_max, const Source& a_src, const Source& b_src,
                     int64_t M, int64_t N, int64_t K, float* C, int64_t ldc, bool accumulate, const float* bias,
                     uint32_t* b_pack,
                     uint32_t* a_pack) {
  for (int64_t j0 = 0; j0 < N; j0 += nc_max) {  // 5th loop: blocks of N (B's block in L3)
    const int64_t nc = min64(nc_max, N - j0);
    const int64_t n_panels = ceil_div(nc, NR);
    for (int64_t k0 = 0; k0 < K; k0 += kc_max) {  // 4th loop: blocks of K
      const int64_t kc = min64(kc_max, K - k0), kp = ceil_div(kc, 2);
      // C starts from its old value when accumulating, and from every earlier block of k.
      const bool load_c = accumulate || k0 > 0;
      const Start start = load_c ? Start::c : bias ? Start::bias : Start::zeros;
      pack_b_block(b_src.trans, b_src.data, b_src.ld, K, k0, kc, j0, nc, b_pack);
      for (int64_t i0 = 0; i0 < M; i0 += mc) {  // 3rd loop: blocks of M (A's block in L2)
        const int64_t mcur = min64(mc, M - i0);
        pack_a_block(a_src.trans, a_src.data, a_src.ld, M, K, i0, mcur, k0, kc, a_pack);
        for (int64_t jp = 0; jp < n_panels; ++jp) {  // 2nd loop: a panel of B (kc x NR, in L1)
          const int64_t nr = min64(NR, nc - jp * NR);
          const uint32_t* b = b_pack + jp * NR * kp;
          for (int64_t ip = 0; ip * MR < mcur; ++ip) {  // 1st loop: against every panel of A's block
            const int64_t mr = min64(MR, mcur - ip * MR);
            float* c = C + (i0 + ip * MR) * ldc + j0 + jp * NR;
            const uint32_t* a = a_pack + ip * MR * a_panel_pairs(kp);
            if (load_c && (ip + 1) * MR < mcur) prefetch_tile(c + MR * ldc, ldc, min64(MR, mcur - (ip + 1) * MR));
            if (a_src.trans)
              tile<false>(kp, a, b, c, ldc, start, bias ? bias + j0 + jp * NR : nullptr, mr, nr);
            else
              tile<true>(kp, a, b, c, ldc, start, bias ? bias + j0 + jp * NR : nullptr, mr, nr);
          }
        }
      }
    }
  }
}

// The words of one thread's packed B block (nc x kc) and A block (mc x kc), each rounded up to 64
// bytes. nc and mc are bounds: a thread's blocks are never wider than the product or blocks'.
int64_t b_pack_words(const Blocks& blocks, int64_t N, int64_t K) {
  return ceil_div(min64(blocks.nc, ceil_div(N, NR) * NR) * ceil_div(min64(blocks.kc, K), 2), 16) * 16;
}
int64_t a_pack_words(const Blocks& blocks, int64_t M, int64_t K) {
  return ceil_div(min64(blocks.mc, ceil_div(M, MR) * MR) * a_panel_pairs(ceil_div(min64(blocks.kc, K), 2)), 16) * 16;
}

}  // namespace

int64_t packing_words(const Blocks& blocks, int64_t M, int64_t N, int64_t K) {
  return b_pack_words(blocks, N, K) + a_pack_words(blocks, M, K);
}

void gemm(const Blocks& blocks, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
          int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* bias,
          uint32_t* packing) {
  // Threads share out C and nothing else: each takes its own rows, or its own columns, and runs
  // the one-thread algorithm on them. A thread with its own rows packs its own copy of all of
  // op(B) (K x N); with its own columns, of all of op(A) (M x K). So C is cut along the longer
  // of its sides (rows when it has too few columns to share, and the other way round), and the
  // smaller operand is the one packed T times instead of once: at 384 x 1536 x 4096 on two
  // threads, columns instead of rows took the product from 61% to 72% of the dot peak. In
  // exchange no thread ever waits for another until the end, which matters on a machine
  // shared with other work, where a thread that waits at a barrier may wait for a whole time
  // slice of someone else's job. Either way each element of C is the same sum in the same
  // order: the same bits on any number of threads.
  const int64_t kc = min64(blocks.kc, K), b_words = b_pack_words(blocks, N, K);
  const int64_t per_thread = b_words + a_pack_words(blocks, M, K);
#pragma omp parallel num_threads(blocks.threads)
  {
    // The team may be smaller than asked: called from inside another parallel region (a
    // data-parallel shard, say), OpenMP runs this one on a single thread. So the parts are
    // cut for the team that runs, never for the team that was asked for.
    int threads = omp_get_num_threads();
    const bool rows_to_share = M >= threads * 4 * MR, columns_to_share = N >= threads * 4 * NR;
    const bool split_rows = rows_to_share && (M >= N || !columns_to_share);
    if (!split_rows && N < threads * NR) threads = 1;
    const int64_t parts_of = split_rows ? M : N, unit = split_rows ? MR : NR;
    const int64_t part = ceil_div(ceil_div(parts_of, threads), unit) * unit;
    const int64_t nc = min64(blocks.nc, ceil_div(split_rows ? N : part, NR) * NR);
    const int64_t first = omp_get_thread_num() * part;
    const int64_t count = omp_get_thread_num() < threads ? min64(part, parts_of - first) : 0;
    if (count > 0) {
      // This thread's share of C and the operands it reads: rows of op(A), or columns of op(B).
      Source a_src{A, lda, trans_a}, b_src{B, ldb, trans_b};
      int64_t m = M, n = N;
      float* c = C;
      if (split_rows) {
        a_src.data += trans_a ? first : first * lda;
        c += first * ldc;
        m = count;
      } else {
        b_src.data += trans_b ? first * ldb : first;
        c += first;
        n = count;
      }
      // Blocks of M of at most blocks.mc rows, all of about the same size.
      const int64_t mc = min64(ceil_div(ceil_div(m, ceil_div(m, blocks.mc)), MR) * MR, ceil_div(m, MR) * MR);
      uint32_t* b_pack = packing + omp_get_thread_num() * per_thread;
      uint32_t* a_pack = b_pack + b_words;
      // the bias row of this thread's columns (bias is shared by the team: not moved in place)
      const float* bias_part = bias && !split_rows ? bias + first : bias;
      gemm_one_thread(mc, kc, nc, a_src, b_src, m, n, K, c, ldc, accumulate, bias_part, b_pack, a_pack);
    }
  }
}

}  // namespace lg::gemm_bf16_kernel
