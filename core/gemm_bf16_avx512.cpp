// core/gemm_bf16_avx512.cpp: the AVX512-BF16 GEMM: packing that rounds to bf16, the 14 x 32 micro-kernel, cache blocks, threads.
//
// The loops are BLIS's (Van Zee and van de Geijn, "BLIS: A Framework for Rapidly Instantiating
// BLAS Functionality", 2015), around one instruction: vdpbf16ps acc, a, b treats each 32-bit
// lane of a and b as a pair of bf16 values and adds a.lo * b.lo + a.hi * b.hi to the fp32 lane
// of acc. So both packed operands hold two consecutive k values in every 32-bit word:
//
//   packed B, a panel of kNR = 32 columns: for each pair p of k, 32 words (B[2p][j], B[2p+1][j]);
//   packed A, a panel of kMR = 14 rows:    for each pair p of k, 14 words (A[i][2p], A[i][2p+1]).
//
// The micro-kernel loads B's 32 words for pair p as two zmm registers, broadcasts A's word for
// row i to all 16 lanes, and issues two vdpbf16ps per row: 28 accumulators hold the 14 x 32
// tile of C. docs/performance.md ("A bf16 GEMM") explains the choices and measures each step.
//
// This file is compiled with AVX512-BF16 flags in every build and runs only where
// gemm_bf16_available() said yes. It includes no project header with inline code and uses no
// standard-library template, so it defines no weak symbol that baseline code could end up
// calling (core/isa.h; the CTest avx512_symbols checks it).
#include <omp.h>

#include <cstdlib>
#include <cstring>

#include "core/gemm_bf16_kernel.h"
#include "core/intrinsics.h"

namespace lg::gemm_bf16_kernel {

namespace {

constexpr int64_t MR = kMR, NR = kNR;

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 16 floats rounded to bf16, round to nearest even: each lane's bf16 in its upper 16 bits.
// The same integer recipe as float_to_bf16 (gemm_bf16.cpp), so both paths round alike:
// adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the dropped
// half is above one half, or equal to it with the kept value odd. A NaN would carry into the
// exponent, so it keeps its own upper half with the quiet bit set.
__m512i round_to_bf16_hi(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
}

// Two rows of k (k = 2p and 2p + 1), 16 columns each, as 16 pair words: k even in the low half.
__m512i pair_words(__m512 even, __m512 odd) {
  const __m512i lo = _mm512_srli_epi32(round_to_bf16_hi(even), 16);
  const __m512i hi = _mm512_and_si512(round_to_bf16_hi(odd), _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
  return _mm512_or_si512(lo, hi);
}

__mmask16 first_lanes(int64_t n) { return n >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << n) - 1); }

// A source row along which k runs contiguously (A untransposed, B transposed): its kc values
// as ceil(kc / 2) pair words, written stride words apart. 16 floats become 8 words: rounded,
// shifted to the low half of their lane, and narrowed to 16 bits each by vpmovdw, which lays
// k = 2p and 2p + 1 side by side.
void pack_k_contiguous(const float* src, int64_t kc, uint32_t* dst, int64_t stride) {
  alignas(32) uint32_t words[8];
  for (int64_t k = 0; k < kc; k += 16) {
    const int64_t n = min64(16, kc - k);
    const __m512 x = _mm512_maskz_loadu_ps(first_lanes(n), src + k);  // beyond kc: zero
    _mm256_store_si256(reinterpret_cast<__m256i*>(words),
                       _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_to_bf16_hi(x), 16)));
    for (int64_t q = 0; q < (n + 1) / 2; ++q) dst[(k / 2 + q) * stride] = words[q];
  }
}

// A block of kc rows of op(B) (from k0) and columns [j0, j0 + nr) as one panel of NR columns.
// Columns past nr and the odd k past kc are zeros: they add nothing to the sums.
void pack_b_panel(bool trans_b, const float* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t nr,
                  uint32_t* dst) {
  const int64_t kp = ceil_div(kc, 2);
  if (!trans_b) {  // B[k][j]: a row of j is contiguous; rows 2p and 2p + 1 make a panel row
    for (int64_t p = 0; p < kp; ++p) {
      const float* even = B + (k0 + 2 * p) * ldb + j0;
      const bool has_odd = 2 * p + 1 < kc;
      for (int64_t h = 0; h < NR; h += 16) {
        const __mmask16 m = nr > h ? first_lanes(nr - h) : __mmask16(0);
        const __m512 e = _mm512_maskz_loadu_ps(m, even + h);
        const __m512 o = has_odd ? _mm512_maskz_loadu_ps(m, even + ldb + h) : _mm512_setzero_ps();
        _mm512_store_si512(dst + p * NR + h, pair_words(e, o));
      }
    }
  } else {  // B stored as N x K: column j of op(B) is a contiguous row
    for (int64_t j = 0; j < nr; ++j) pack_k_contiguous(B + (j0 + j) * ldb + k0, kc, dst + j, NR);
    for (int64_t j = nr; j < NR; ++j)
      for (int64_t p = 0; p < kp; ++p) dst[p * NR + j] = 0;
  }
}

// Rows [i0, i0 + mr) of op(A), k from k0 to k0 + kc, as one panel of MR rows (missing rows zero).
void pack_a_panel(bool trans_a, const float* A, int64_t lda, int64_t i0, int64_t mr, int64_t k0, int64_t kc,
                  uint32_t* dst) {
  const int64_t kp = ceil_div(kc, 2);
  if (!trans_a) {  // A[i][k]: row i is contiguous in k
    for (int64_t i = 0; i < mr; ++i) pack_k_contiguous(A + (i0 + i) * lda + k0, kc, dst + i, MR);
    for (int64_t i = mr; i < MR; ++i)
      for (int64_t p = 0; p < kp; ++p) dst[p * MR + i] = 0;
  } else {  // A stored as K x M: the MR rows of one k are contiguous
    const __mmask16 m = first_lanes(mr), all = first_lanes(MR);
    for (int64_t p = 0; p < kp; ++p) {
      const float* even = A + (k0 + 2 * p) * lda + i0;
      const __m512 e = _mm512_maskz_loadu_ps(m, even);
      const __m512 o = 2 * p + 1 < kc ? _mm512_maskz_loadu_ps(m, even + lda) : _mm512_setzero_ps();
      _mm512_mask_storeu_epi32(dst + p * MR, all, pair_words(e, o));
    }
  }
}

// The micro-kernel: C[0..MR)[0..NR) (+)= A panel x B panel over kp pairs of k. 28 accumulators,
// two registers of B and one broadcast word of A: 31 of the 32 zmm registers.
void micro_kernel(int64_t kp, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, bool load_c) {
  __m512 acc[MR][2];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t h = 0; h < 2; ++h)
      acc[i][h] = load_c ? _mm512_loadu_ps(c + i * ldc + 16 * h) : _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
    for (int64_t i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
    a += MR;
    b += NR;
  }
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t h = 0; h < 2; ++h) _mm512_storeu_ps(c + i * ldc + 16 * h, acc[i][h]);
}

// A tile at the edge of C (mr < MR or nr < NR): the micro-kernel runs on a full tile in a
// local buffer, and only the part inside C is read and written.
void edge_tile(int64_t kp, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, bool load_c, int64_t mr,
               int64_t nr) {
  alignas(64) float tile[MR * NR];
  std::memset(tile, 0, sizeof(tile));
  if (load_c)
    for (int64_t i = 0; i < mr; ++i) std::memcpy(tile + i * NR, c + i * ldc, nr * sizeof(float));
  micro_kernel(kp, a, b, tile, NR, load_c);
  for (int64_t i = 0; i < mr; ++i) std::memcpy(c + i * ldc, tile + i * NR, nr * sizeof(float));
}

}  // namespace

bool gemm(const Blocks& blocks, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
          int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  const int threads = blocks.threads;
  const int64_t kc_max = blocks.kc, nc_max = blocks.nc;
  // M is cut into blocks of at most mc rows, as many as a multiple of the thread count so
  // that every thread gets the same number, each a whole number of MR-row panels.
  int64_t m_blocks = ceil_div(M, blocks.mc);
  m_blocks = ceil_div(m_blocks, threads) * threads;
  const int64_t mc = ceil_div(ceil_div(M, m_blocks), MR) * MR;
  m_blocks = ceil_div(M, mc);

  // Packing buffers, 64-byte aligned: one B block shared by all threads, an A block per thread.
  const int64_t kp_max = ceil_div(min64(kc_max, K), 2);
  const int64_t b_words = ceil_div(min64(nc_max, N), NR) * NR * kp_max;
  const int64_t a_words = mc * kp_max;
  auto words_bytes = [](int64_t words) { return static_cast<size_t>(ceil_div(words * 4, 64) * 64); };
  uint32_t* b_pack = static_cast<uint32_t*>(std::aligned_alloc(64, words_bytes(b_words)));
  uint32_t* a_packs = static_cast<uint32_t*>(std::aligned_alloc(64, words_bytes(a_words) * threads));
  if (!b_pack || !a_packs) {
    std::free(b_pack);
    std::free(a_packs);
    return false;
  }

#pragma omp parallel num_threads(threads)
  {
    uint32_t* a_pack = a_packs + words_bytes(a_words) / 4 * omp_get_thread_num();
    for (int64_t j0 = 0; j0 < N; j0 += nc_max) {
      const int64_t nc = min64(nc_max, N - j0);
      const int64_t n_panels = ceil_div(nc, NR);
      for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
        const int64_t kc = min64(kc_max, K - k0), kp = ceil_div(kc, 2);
        // C starts from its old value when accumulating, and from every earlier block of k.
        const bool load_c = accumulate || k0 > 0;
#pragma omp for schedule(static)
        for (int64_t jp = 0; jp < n_panels; ++jp)
          pack_b_panel(trans_b, B, ldb, k0, kc, j0 + jp * NR, min64(NR, nc - jp * NR), b_pack + jp * NR * kp);
        // (the loop's barrier: every panel of B is packed before any thread reads it)
#pragma omp for schedule(static)
        for (int64_t mb = 0; mb < m_blocks; ++mb) {
          const int64_t i0 = mb * mc, mcur = min64(mc, M - i0);
          for (int64_t ip = 0; ip * MR < mcur; ++ip)
            pack_a_panel(trans_a, A, lda, i0 + ip * MR, min64(MR, mcur - ip * MR), k0, kc, a_pack + ip * MR * kp);
          // One panel of B (kc x NR, in L1) against every panel of the A block (mc x kc, in L2).
          for (int64_t jp = 0; jp < n_panels; ++jp) {
            const int64_t nr = min64(NR, nc - jp * NR);
            const uint32_t* b = b_pack + jp * NR * kp;
            for (int64_t ip = 0; ip * MR < mcur; ++ip) {
              const int64_t mr = min64(MR, mcur - ip * MR);
              float* c = C + (i0 + ip * MR) * ldc + j0 + jp * NR;
              const uint32_t* a = a_pack + ip * MR * kp;
              if (mr == MR && nr == NR)
                micro_kernel(kp, a, b, c, ldc, load_c);
              else
                edge_tile(kp, a, b, c, ldc, load_c, mr, nr);
            }
          }
        }
        // (and its barrier: nobody packs the next B block while another thread still reads this one)
      }
    }
  }
  std::free(b_pack);
  std::free(a_packs);
  return true;
}

}  // namespace lg::gemm_bf16_kernel
