// core/gemm_bf16.h: C = op(A) op(B) with the inputs rounded to bfloat16 and the sums kept in fp32.
//
// bfloat16 is the upper half of an fp32: the same 8 exponent bits, 7 of the 23 mantissa bits.
// A product of two bf16 values is exact in fp32, so rounding the inputs is the only error
// besides the fp32 sums. CPUs with AVX512-BF16 (vdpbf16ps) run these products at twice the
// fp32 FMA rate; OpenBLAS 0.3.21 (Debian 12) has no bf16 GEMM, so this one is our own
// (docs/performance.md, "A bf16 GEMM", says how it works). fp32 in, fp32 out: the bf16
// copies exist only in the packed blocks of one call: cache-sized pieces of the operands, at
// most about 1.8 MB a thread.
#pragma once

#include <cstdint>

namespace lg {

// C (M x N, row-major, leading dimension ldc) = op(A) op(B), plus the old C when accumulate, or
// plus the row bias (N floats, the same for every row of C) when bias is given.
// op(A) is M x K: A is stored row-major with leading dimension lda, transposed when trans_a
// (then A is K x M). Likewise op(B) is K x N. Every input is rounded to bf16 (round to nearest
// even) on its way into the packed blocks; products are summed in fp32, k in order, starting
// from the old C when accumulate, from the bias when given (it may not be both: an lg::Error), and
// from zero otherwise. A linear layer's y = x W^T + b is one call, with no pass that writes the
// bias rows into C first.
// On a CPU with AVX512-BF16 this runs the blocked kernel on the OpenMP threads; elsewhere it
// runs gemm_bf16_reference, which gives the same bits on one thread, several hundred times slower.
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
               const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* bias = nullptr);

// True when gemm_bf16 runs its fast path: the CPU has AVX-512 (F, BW, VL) and AVX512-BF16
// (CPUID leaf 7, subleaf 1, EAX bit 5), and the OS saves the 512-bit registers; in a portable
// build, also its AVX-512 kernels are chosen (core/cpu.h: LATENTGRAD_ISA=generic says no).
bool gemm_bf16_available();

// The portable path: scalar loops with the hardware's arithmetic (see gemm_bf16.cpp), the
// result the tests hold the kernel to.
void gemm_bf16_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate,
                         const float* bias = nullptr);

// fp32 -> bf16, round to nearest, ties to even (the bits of the upper half). Infinities stay
// infinite, a NaN stays a NaN (made quiet), denormals are rounded like any other value.
uint16_t float_to_bf16(float x);
float bf16_to_float(uint16_t h);

// What vdpbf16ps does in one 32-bit lane: acc + a.hi b.hi + a.lo b.lo, where a and b are pair
// words (two bf16 values, k even in the low half): the high pair's product added first, then the
// low's, each add rounded, denormal inputs, products and sums read as zero. The scalar model of
// the instruction, for portable code that must give the fast path's bits.
float bf16_dot_pair(float acc, uint32_t a, uint32_t b);
inline float round_to_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }

// The fast path's block sizes, for benchmarks that take the kernel apart: 0 means "the whole
// dimension" (no cache blocking along it). threads 0: all of OpenMP's.
struct GemmBf16Blocking {
  int64_t mc = 0, kc = 0, nc = 0;
  int threads = 0;
};
GemmBf16Blocking gemm_bf16_default_blocking();
// gemm_bf16 with the given blocking; an lg::Error where the fast path is not available.
void gemm_bf16_blocked(const GemmBf16Blocking& blocking, bool trans_a, bool trans_b, int64_t M, int64_t N,
                       int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                       int64_t ldc, bool accumulate, const float* bias = nullptr);

}  // namespace lg
