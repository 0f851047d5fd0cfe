// core/gemm_bf16.cpp: bf16 rounding, the portable bf16 GEMM, and the choice of path (see gemm_bf16.h).
#include "core/gemm_bf16.h"

#include <cpuid.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/cpu.h"
#include "core/gemm_bf16_kernel.h"
#include "core/tensor.h"

namespace lg {

uint16_t float_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  // A NaN keeps its sign and upper mantissa bits, with the quiet bit set so that it cannot
  // become an infinity when the low bits are dropped.
  if (std::isnan(x)) return static_cast<uint16_t>((u >> 16) | 0x0040);
  // Round to nearest even: add just under one half of the dropped part (0x7fff), plus one when
  // the lowest kept bit is odd, and truncate. A carry out of the mantissa moves to the next
  // binade (or to infinity past the largest bf16), which is the correctly rounded value.
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

bool gemm_bf16_available() {
  static const bool cpu_has_it = [] {
    // __builtin_cpu_supports also asks the OS (XGETBV) whether it saves the zmm registers.
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl"))
      return false;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
    return (eax & (1u << 5)) != 0;  // AVX512_BF16
  }();
  // A portable build also follows its choice of kernels (core/cpu.h): LATENTGRAD_ISA=generic
  // or force_generic_kernels(true) run the portable path here too.
  if constexpr (kPortableBuild) return cpu_has_it && run_avx512_kernels();
  return cpu_has_it;
}

// ---- the portable path -------------------------------------------------------------------------

namespace {

// vdpbf16ps ignores MXCSR and always treats denormal inputs and results as zero (DAZ, FTZ).
float flush_denormal(float x) { return std::fabs(x) < std::numeric_limits<float>::min() ? 0.0f * x : x; }

// op(X) (rows x cols) rounded to bf16, and its denormals as zeros, in a contiguous copy: row r
// of the result is row r of op(X). The copy lives for one call.
std::vector<float> rounded_rows(bool trans, const float* X, int64_t ld, int64_t rows, int64_t cols) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      out[r * cols + c] = flush_denormal(round_to_bf16(trans ? X[c * ld + r] : X[r * ld + c]));
  return out;
}

}  // namespace

float bf16_dot_pair(float acc, uint32_t a, uint32_t b) {
  const auto half = [](uint32_t word, int h) { return flush_denormal(bf16_to_float(static_cast<uint16_t>(word >> (16 * h)))); };
  acc = flush_denormal(acc + flush_denormal(half(a, 1) * half(b, 1)));
  return flush_denormal(acc + flush_denormal(half(a, 0) * half(b, 0)));
}

void gemm_bf16_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate,
                         const float* bias) {
  const std::vector<float> a = rounded_rows(trans_a, A, lda, M, K);   // op(A), M x K
  const std::vector<float> bt = rounded_rows(!trans_b, B, ldb, N, K);  // op(B)^T, N x K
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      const float* ai = a.data() + i * K;
      const float* bj = bt.data() + j * K;
      // What vdpbf16ps does per lane and pair of k: the odd k's product first, then the even's,
      // each added with one rounding (a product of two bf16 values is exact in fp32).
      float acc = accumulate ? C[i * ldc + j] : bias ? bias[j] : 0.0f;
      for (int64_t k = 0; k < K; k += 2) {
        if (k + 1 < K) acc = flush_denormal(acc + flush_denormal(ai[k + 1] * bj[k + 1]));
        acc = flush_denormal(acc + flush_denormal(ai[k] * bj[k]));
      }
      C[i * ldc + j] = acc;
    }
}

// ---- the fast path -----------------------------------------------------------------------------

// KC: one panel of B, kc x 32 bf16 (64 kc bytes), stays in L1 (48 KB on Zen 5, 32-48 KB on
// recent Intel) beside the A panel the micro-kernel streams: 24 KB at kc = 384. MC: the block
// of A, mc x kc bf16, stays in L2 (1 MB per core here): 240 KB at mc = 322. NC: a thread's
// block of B, kc x nc, is read panel by panel from L2 and L3: 1.5 MB at nc = 2048.
GemmBf16Blocking gemm_bf16_default_blocking() { return {322, 384, 2048, 0}; }

static void check_args(int64_t M, int64_t N, int64_t K, bool trans_a, int64_t lda, bool trans_b, int64_t ldb,
                       int64_t ldc, bool accumulate, const float* bias) {
  if (M < 0 || N < 0 || K < 0) throw Error(fmt::format("gemm_bf16: negative size {}x{}x{}", M, N, K));
  if (accumulate && bias) throw Error("gemm_bf16: C starts from its old values or from the bias, not both");
  const int64_t a_cols = trans_a ? M : K, b_cols = trans_b ? K : N;
  if (lda < std::max<int64_t>(1, a_cols) || ldb < std::max<int64_t>(1, b_cols) || ldc < std::max<int64_t>(1, N))
    throw Error(fmt::format("gemm_bf16: leading dimensions {}, {}, {} below the row widths {}, {}, {}", lda, ldb,
                            ldc, a_cols, b_cols, N));
}

// Nothing to multiply: C is left alone, or becomes the bias rows or zeros (K = 0 without accumulate).
static bool trivial(int64_t M, int64_t N, int64_t K, float* C, int64_t ldc, bool accumulate, const float* bias) {
  if (M == 0 || N == 0) return true;
  if (K > 0) return false;
  if (!accumulate)
    for (int64_t i = 0; i < M; ++i) {
      if (bias)
        std::copy_n(bias, N, C + i * ldc);
      else
        std::fill_n(C + i * ldc, N, 0.0f);
    }
  return true;
}

void gemm_bf16_blocked(const GemmBf16Blocking& blocking, bool trans_a, bool trans_b, int64_t M, int64_t N,
                       int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                       int64_t ldc, bool accumulate, const float* bias) {
  check_args(M, N, K, trans_a, lda, trans_b, ldb, ldc, accumulate, bias);
  if (!gemm_bf16_available())
    throw Error("gemm_bf16_blocked: the fast path is off (no AVX512-BF16 on this CPU, or a portable build's "
                "LATENTGRAD_ISA=generic); gemm_bf16 runs the portable path instead");
  if (trivial(M, N, K, C, ldc, accumulate, bias)) return;
  namespace kernel = gemm_bf16_kernel;
  auto round_up = [](int64_t x, int64_t to) { return (x + to - 1) / to * to; };
  kernel::Blocks blocks;
  blocks.mc = round_up(blocking.mc > 0 ? std::min(blocking.mc, M) : M, kernel::kMR);
  blocks.kc = round_up(blocking.kc > 0 ? std::min(blocking.kc, K) : K, 2);
  blocks.nc = round_up(blocking.nc > 0 ? std::min(blocking.nc, N) : N, kernel::kNR);
  blocks.threads = blocking.threads > 0 ? blocking.threads : omp_get_max_threads();
  // The packed blocks (32-bit words, 4 bytes like a float) come from the tensors' buffer pool
  // (core/tensor.cpp), which keeps freed buffers for the next of the same size. Allocated and
  // freed by each call, they came back from the OS as new pages: 2% of a bf16 step of the
  // baseline model went to page faults (docs/performance.md, "The packed blocks' memory").
  Tensor packing = Tensor::empty({blocks.threads * kernel::packing_words(blocks, M, N, K)});
  kernel::gemm(blocks, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate, bias,
               reinterpret_cast<uint32_t*>(packing.data()));
}

void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
               const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* bias) {
  check_args(M, N, K, trans_a, lda, trans_b, ldb, ldc, accumulate, bias);
  if (trivial(M, N, K, C, ldc, accumulate, bias)) return;
  if (gemm_bf16_available())
    gemm_bf16_blocked(gemm_bf16_default_blocking(), trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc,
                      accumulate, bias);
  else
    gemm_bf16_reference(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate, bias);
}

}  // namespace lg
