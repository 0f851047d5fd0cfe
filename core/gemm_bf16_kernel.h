// core/gemm_bf16_kernel.h: the entry point of the AVX512-BF16 GEMM (core/gemm_bf16_avx512.cpp), for core/gemm_bf16.cpp only.
//
// gemm_bf16_avx512.cpp is compiled with AVX512-BF16 flags in every build and called only after
// the CPU was checked (gemm_bf16_available), so this header declares plain functions and no
// inline code that both instruction sets could compile (core/isa.h).
#pragma once

#include <cstdint>

namespace lg::gemm_bf16_kernel {

// The register tile: MR rows of C by NR columns (two zmm registers of 16 floats).
constexpr int64_t kMR = 14;  // const at namespace scope: internal linkage, no shared symbol
constexpr int64_t kNR = 32;

// Block sizes as gemm_bf16_avx512.cpp uses them: all positive, kc even (a pair of k values never
// straddles two blocks), mc a multiple of kMR, nc of kNR.
struct Blocks {
  int64_t mc, kc, nc;
  int threads;
};

// The 32-bit words of packed blocks one thread of gemm needs for an M x N x K product: a
// multiple of 16 (64 bytes).
int64_t packing_words(const Blocks& blocks, int64_t M, int64_t N, int64_t K);

// The arguments of gemm_bf16, M, N, K > 0. packing: blocks.threads x packing_words(...) words,
// 64-byte aligned, which thread t of the team uses from t x packing_words(...) on.
void gemm(const Blocks& blocks, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
          int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* bias,
          uint32_t* packing);

}  // namespace lg::gemm_bf16_kernel
