// core/blas.h: the fp32 BLAS product under matmul and linear, for code that holds raw pointers (benchmarks, other GEMMs).
#pragma once

#include <cstdint>

namespace lg {

// C (M x N, row-major, leading dimension ldc) = op(A) op(B) + beta C, by cblas_sgemm; op(A) is
// M x K (A stored K x M when trans_a), op(B) is K x N. K = 0 sets C to beta C's zero or keeps it.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The same product as one OpenBLAS call, threaded by OpenBLAS itself: what sgemm does for
// products too small for bands. For benchmarks (`charlm_bench gemm --variants openblas`).
void sgemm_whole(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The kernel family OpenBLAS picked for this CPU (openblas_get_corename), e.g. "Haswell";
// OPENBLAS_CORETYPE in the environment overrides its choice.
const char* blas_corename();

}  // namespace lg
