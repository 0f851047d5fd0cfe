// tests/test_gemm_bf16.cpp: bf16 rounding, the bf16 GEMM against its reference and against fp32 products, and
// linear under bf16 mixed precision.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "core/cpu.h"
#include "core/gemm_bf16.h"
#include "core/ops.h"
#include "core/precision.h"
#include "core/random.h"
#include "core/tensor.h"

using namespace lg;

static uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
static float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

TEST_CASE("float_to_bf16 rounds to nearest, ties to even, and keeps infinities and NaNs") {
  // bf16 keeps 7 mantissa bits: next to 1 are 1 - 2^-8 and 1 + 2^-7.
  CHECK(float_to_bf16(1.0f) == 0x3f80);
  CHECK(round_to_bf16(1.0f + 0x1p-9f) == 1.0f);                     // below the half: down
  CHECK(round_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f);  // above the half: up
  CHECK(round_to_bf16(1.0f + 0x1p-8f) == 1.0f);                     // a tie, 1 is even: down
  CHECK(round_to_bf16(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);       // a tie, 1 + 2^-7 is odd: up
  CHECK(round_to_bf16(-(1.0f + 3 * 0x1p-8f)) == -(1.0f + 0x1p-6f));  // the same on the negative side
  CHECK(round_to_bf16(1.9999f) == 2.0f);                            // a carry into the exponent
  CHECK(round_to_bf16(0.1f) == 0.10009765625f);
  CHECK(bits(round_to_bf16(-0.0f)) == bits(-0.0f));
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(round_to_bf16(inf) == inf);
  CHECK(round_to_bf16(-inf) == -inf);
  CHECK(round_to_bf16(std::numeric_limits<float>::max()) == inf);  // past the largest bf16
  CHECK(float_to_bf16(from_bits(0x7f7f7fffu)) == 0x7f7f);          // the largest bf16 itself stays
  // NaNs stay NaNs, quiet, with their sign, even the ones whose payload sits in the low bits
  // only (rounding them naively would give infinity).
  CHECK(std::isnan(round_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  CHECK(float_to_bf16(from_bits(0x7f800001u)) == 0x7fc0);
  CHECK(float_to_bf16(from_bits(0xff800001u)) == 0xffc0);
  // Denormals round like other numbers, at the same absolute step 2^-133.
  const float tiny = std::numeric_limits<float>::denorm_min();  // 2^-149
  CHECK(round_to_bf16(tiny) == 0.0f);
  CHECK(round_to_bf16(from_bits(0x00008000u)) == 0.0f);          // a tie below the smallest bf16 denormal: to even, 0
  CHECK(float_to_bf16(from_bits(0x00018000u)) == 0x0002);        // a tie at 1.5 steps: to even, 2 steps
  CHECK(float_to_bf16(from_bits(0x00010001u)) == 0x0001);        // just above one step
  CHECK(float_to_bf16(from_bits(0x007fffffu)) == 0x0080);        // the largest denormal rounds up to FLT_MIN
  // Every bf16 value converts back and forth unchanged.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float x = bf16_to_float(static_cast<uint16_t>(h));
    if (!std::isnan(x)) CHECK_MESSAGE(float_to_bf16(x) == h, h);
  }
}

// ---- the GEMM ----------------------------------------------------------------------------------

namespace {

struct Case {
  bool ta, tb;
  int64_t M, N, K;
  int64_t pad = 0;  // leading dimensions this much wider than the rows
  bool accumulate = false;
  bool bias = false;  // C starts from a bias row (not with accumulate)
};

std::string name(const Case& c) {
  return fmt::format("{}x{}x{} ta={} tb={} pad={} accumulate={} bias={}", c.M, c.N, c.K, c.ta, c.tb, c.pad,
                     c.accumulate, c.bias);
}

struct Operands {
  std::vector<float> A, B, C0, bias;
  int64_t lda, ldb, ldc;
};

Operands make(const Case& c, uint64_t seed) {
  Operands o;
  const int64_t a_rows = c.ta ? c.K : c.M, a_cols = c.ta ? c.M : c.K;
  const int64_t b_rows = c.tb ? c.N : c.K, b_cols = c.tb ? c.K : c.N;
  o.lda = a_cols + c.pad;
  o.ldb = b_cols + c.pad;
  o.ldc = c.N + c.pad;
  Rng rng(seed);
  auto fill = [&](std::vector<float>& v, int64_t n) {
    v.resize(static_cast<size_t>(n));
    for (float& x : v) x = rng.normal();
  };
  fill(o.A, a_rows * o.lda);
  fill(o.B, b_rows * o.ldb);
  fill(o.C0, c.M * o.ldc);
  if (c.bias) fill(o.bias, c.N);
  return o;
}

// Element (i, k) of op(A) and (k, j) of op(B).
float a_at(const Case& c, const Operands& o, int64_t i, int64_t k) { return c.ta ? o.A[k * o.lda + i] : o.A[i * o.lda + k]; }
float b_at(const Case& c, const Operands& o, int64_t k, int64_t j) { return c.tb ? o.B[j * o.ldb + k] : o.B[k * o.ldb + j]; }

// Checks gemm_bf16 on one case against three references:
//  1. gemm_bf16_reference: the same arithmetic in scalar code, so the same bits.
//  2. The exact product of the bf16-rounded inputs (double sums): the kernel differs from it by
//     its fp32 sums alone. K sums, each rounded with relative error <= u32 = 2^-24, give
//     |error| <= gamma_K sum_k |a_bf16 b_bf16| with gamma_K = K u32 / (1 - K u32) (Higham,
//     "Accuracy and Stability of Numerical Algorithms", 3.1); checked with 1.01 (K + 1) u32, the
//     + 1 for the old C when accumulating (or the bias).
//  3. The fp32 inputs' own product (double sums): bf16 rounding changes each input by at most
//     u = 2^-8 relative (half of bf16's 2^-7 step), so a product by at most (1 + u)^2 - 1 < 2.01 u,
//     and each element by at most 2.01 u sum_k |a b| plus the fp32 sums of 2.
// Padding columns of C (ldc > N) must stay untouched.
void check_case(const Case& c, uint64_t seed) {
  INFO(name(c));
  const Operands o = make(c, seed);
  std::vector<float> got = o.C0, ref = o.C0;
  const float* bias = c.bias ? o.bias.data() : nullptr;
  gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, o.A.data(), o.lda, o.B.data(), o.ldb, got.data(), o.ldc, c.accumulate,
            bias);
  gemm_bf16_reference(c.ta, c.tb, c.M, c.N, c.K, o.A.data(), o.lda, o.B.data(), o.ldb, ref.data(), o.ldc,
                      c.accumulate, bias);
  const double u32 = std::ldexp(1.0, -24), u = std::ldexp(1.0, -8);
  const double gamma = 1.01 * static_cast<double>(c.K + 1) * u32;  // + 1: the old C or the bias
  int64_t bad_bits = 0, bad_rounded = 0, bad_fp32 = 0;
  for (int64_t i = 0; i < c.M; ++i) {
    for (int64_t j = 0; j < c.N; ++j) {
      double exact_bf16 = c.accumulate ? o.C0[i * o.ldc + j] : c.bias ? o.bias[j] : 0.0, exact = exact_bf16;
      double abs_bf16 = std::fabs(exact_bf16), abs = abs_bf16;
      for (int64_t k = 0; k < c.K; ++k) {
        const double a = a_at(c, o, i, k), b = b_at(c, o, k, j);
        const double ar = round_to_bf16(static_cast<float>(a)), br = round_to_bf16(static_cast<float>(b));
        exact_bf16 += ar * br;
        abs_bf16 += std::fabs(ar * br);
        exact += a * b;
        abs += std::fabs(a * b);
      }
      const double g = got[i * o.ldc + j];
      bad_bits += bits(got[i * o.ldc + j]) != bits(ref[i * o.ldc + j]);
      bad_rounded += std::fabs(g - exact_bf16) > gamma * abs_bf16;
      bad_fp32 += std::fabs(g - exact) > 2.01 * u * abs + gamma * abs_bf16;
    }
    for (int64_t j = c.N; j < o.ldc; ++j) bad_bits += bits(got[i * o.ldc + j]) != bits(o.C0[i * o.ldc + j]);
  }
  CHECK(bad_bits == 0);
  CHECK(bad_rounded == 0);
  CHECK(bad_fp32 == 0);
}

}  // namespace

TEST_CASE("gemm_bf16: tiny, odd and edge shapes, all transposes, accumulate or bias, wide leading dimensions") {
  const int64_t sizes[][3] = {{1, 1, 1},  {1, 1, 2},   {2, 3, 1},   {3, 5, 7},   {14, 32, 2}, {13, 31, 3},
                              {15, 33, 5}, {28, 64, 16}, {29, 65, 17}, {1, 100, 9}, {100, 1, 9}, {37, 70, 129}};
  uint64_t seed = 1;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& s : sizes)
        for (int start = 0; start < 3; ++start)  // from zeros, the old C, the bias
          for (int64_t pad : {0, 3}) check_case({ta, tb, s[0], s[1], s[2], pad, start == 1, start == 2}, seed++);
}

TEST_CASE("gemm_bf16: shapes crossing the cache blocks (mc, kc, nc) and the threads' split of M") {
  const GemmBf16Blocking blocks = gemm_bf16_default_blocking();
  const int64_t M = blocks.mc * 2 + 9, N = 80, K = blocks.kc * 2 + 3;  // 3 blocks of k, the last odd
  uint64_t seed = 100;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) check_case({ta, tb, M, N, K, 5, ta != tb, ta && tb}, seed++);
  check_case({false, true, 33, blocks.nc + 40, 70, 0, true}, seed++);  // two blocks of N
}

TEST_CASE("gemm_bf16: K = 0 zeroes C, leaves it or writes the bias rows; sizes 0 do nothing; bad arguments are errors") {
  std::vector<float> C = {1, 2, 3, 4};
  gemm_bf16(false, false, 2, 2, 0, nullptr, 1, nullptr, 2, C.data(), 2, true);
  CHECK(C == std::vector<float>{1, 2, 3, 4});
  gemm_bf16(false, false, 2, 2, 0, nullptr, 1, nullptr, 2, C.data(), 2, false);
  CHECK(C == std::vector<float>{0, 0, 0, 0});
  const std::vector<float> bias = {5, 6};
  gemm_bf16(false, false, 2, 2, 0, nullptr, 1, nullptr, 2, C.data(), 2, false, bias.data());
  CHECK(C == std::vector<float>{5, 6, 5, 6});
  gemm_bf16(false, false, 0, 2, 3, nullptr, 3, nullptr, 2, C.data(), 2, false);
  std::vector<float> A(6), B(6);
  CHECK_THROWS_AS(gemm_bf16(false, false, 2, 2, 3, A.data(), 2, B.data(), 2, C.data(), 2, false), Error);
  CHECK_THROWS_AS(gemm_bf16(false, false, 2, 2, 3, A.data(), 3, B.data(), 2, C.data(), 2, true, bias.data()), Error);
  CHECK_THROWS_AS(gemm_bf16(false, false, -1, 2, 3, A.data(), 3, B.data(), 2, C.data(), 2, false), Error);
}

TEST_CASE("gemm_bf16: a portable build's generic kernels run the portable path, which gives the same bits") {
  const Case c{true, false, 40, 50, 33, 2, true};
  const Operands o = make(c, 11);
  std::vector<float> fast = o.C0, portable = o.C0;
  gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, o.A.data(), o.lda, o.B.data(), o.ldb, fast.data(), o.ldc, true);
  const bool before = force_generic_kernels(true);
  if (kPortableBuild) CHECK_FALSE(gemm_bf16_available());
  gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, o.A.data(), o.lda, o.B.data(), o.ldb, portable.data(), o.ldc, true);
  force_generic_kernels(before);
  CHECK(std::memcmp(fast.data(), portable.data(), fast.size() * 4) == 0);
}

TEST_CASE("gemm_bf16: the fast path's blockings and thread counts give the same bits") {
  if (!gemm_bf16_available()) {
    std::vector<float> A(4), B(4), C(4);
    CHECK_THROWS_AS(gemm_bf16_blocked({}, false, false, 2, 2, 2, A.data(), 2, B.data(), 2, C.data(), 2, false),
                    Error);
    return;
  }
  // Threads split C by rows in the first case, by columns in the second (N > M); then the same
  // two starting from a bias row. Each also equals the reference.
  for (const Case& c : {Case{false, true, 150, 100, 301, 0, true}, Case{true, false, 60, 300, 301, 0, true},
                        Case{false, true, 150, 100, 301, 0, false, true}, Case{true, false, 60, 300, 301, 0, false, true}}) {
    const Operands o = make(c, 7);
    std::vector<float> first;
    for (GemmBf16Blocking b : {GemmBf16Blocking{}, GemmBf16Blocking{28, 64, 64, 1}, GemmBf16Blocking{14, 2, 32, 2},
                               GemmBf16Blocking{0, 100, 0, 3}, gemm_bf16_default_blocking()}) {
      std::vector<float> C = o.C0;
      gemm_bf16_blocked(b, c.ta, c.tb, c.M, c.N, c.K, o.A.data(), o.lda, o.B.data(), o.ldb, C.data(), o.ldc,
                        c.accumulate, c.bias ? o.bias.data() : nullptr);
      if (first.empty()) first = C;
      CHECK(std::memcmp(C.data(), first.data(), C.size() * 4) == 0);
    }
    std::vector<float> ref = o.C0;
    gemm_bf16_reference(c.ta, c.tb, c.M, c.N, c.K, o.A.data(), o.lda, o.B.data(), o.ldb, ref.data(), o.ldc,
                        c.accumulate, c.bias ? o.bias.data() : nullptr);
    CHECK(std::memcmp(ref.data(), first.data(), ref.size() * 4) == 0);
  }
}

TEST_CASE("gemm_bf16: called from inside a parallel region (one product per thread), each is whole") {
  // Nested, the product's own parallel region runs on one thread: every row must still be done.
  const Case c{false, true, 200, 96, 70, 0, false};
  const Operands o = make(c, 21);
  std::vector<float> ref = o.C0;
  gemm_bf16_reference(c.ta, c.tb, c.M, c.N, c.K, o.A.data(), o.lda, o.B.data(), o.ldb, ref.data(), o.ldc, false);
  std::vector<std::vector<float>> got(2, o.C0);
#pragma omp parallel for num_threads(2)
  for (int t = 0; t < 2; ++t)
    gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, o.A.data(), o.lda, o.B.data(), o.ldb, got[t].data(), o.ldc, false);
  for (int t = 0; t < 2; ++t) CHECK(std::memcmp(got[t].data(), ref.data(), ref.size() * 4) == 0);
}

TEST_CASE("gemm_bf16: infinities and NaNs go through; denormal inputs count as zero (as vdpbf16ps does)") {
  const float inf = std::numeric_limits<float>::infinity();
  const float denormal = std::numeric_limits<float>::min() / 4;
  // Row 0 of A: (inf, 1), row 1: (NaN, 0), row 2: (denormal, 1); B = (1, 2) down its one column.
  std::vector<float> A = {inf, 1, std::nanf(""), 0, denormal, 1}, B = {1, 2}, C(3), R(3);
  gemm_bf16(false, false, 3, 1, 2, A.data(), 2, B.data(), 1, C.data(), 1, false);
  gemm_bf16_reference(false, false, 3, 1, 2, A.data(), 2, B.data(), 1, R.data(), 1, false);
  CHECK(C[0] == inf);
  CHECK(std::isnan(C[1]));
  CHECK(C[2] == 2.0f);
  CHECK(R[0] == inf);
  CHECK(std::isnan(R[1]));
  CHECK(R[2] == 2.0f);
  // A product too small for fp32's normal range is flushed to zero as well: 2^-70 * 2^-70.
  std::vector<float> a = {0x1p-70f}, b = {0x1p-70f}, c(1), r(1);
  gemm_bf16(false, false, 1, 1, 1, a.data(), 1, b.data(), 1, c.data(), 1, false);
  gemm_bf16_reference(false, false, 1, 1, 1, a.data(), 1, b.data(), 1, r.data(), 1, false);
  CHECK(c[0] == 0.0f);
  CHECK(r[0] == 0.0f);
}

// ---- linear under bf16 mixed precision (core/precision.h) -------------------------------------

TEST_CASE("linear under Precision::bf16: forward and both gradients are bf16 products summed in fp32") {
  // x (N, in), W (out, in), b (out); the loss sum(y * r) gives dy = r. Each product's inputs are
  // rounded to bf16 and summed in fp32: against float64 sums of the rounded inputs, the only
  // error left is the fp32 summation, at most K 2^-24 sum |terms| (with K = in or N).
  const int64_t N = 37, in = 45, out = 19;
  Rng rng(7);
  Tensor x = randn({N, in}, rng).set_requires_grad(), w = randn({out, in}, rng).set_requires_grad();
  Tensor b = randn({out}, rng).set_requires_grad(), r = randn({N, out}, rng);
  Tensor y;
  {
    PrecisionGuard bf16(Precision::bf16);
    CHECK(matmul_precision() == Precision::bf16);
    y = linear(x, w, b);
  }
  CHECK(matmul_precision() == Precision::fp32);  // the guard put it back; backward keeps bf16
  sum(y * r).backward();
  const std::vector<float> xv = x.to_vector(), wv = w.to_vector(), bv = b.to_vector(), rv = r.to_vector();
  const std::vector<float> yv = y.to_vector(), gx = x.grad().to_vector(), gw = w.grad().to_vector();
  const std::vector<float> gb = b.grad().to_vector();
  auto check = [](const char* what, double got, double want, double bound) {
    if (std::abs(got - want) > bound) FAIL(what << ": " << got << " against " << want << " (bound " << bound << ")");
  };
  double worst_vs_fp32 = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double ref = bv[o], mag = std::abs(bv[o]), exact = bv[o];
      for (int64_t k = 0; k < in; ++k) {
        const double t = static_cast<double>(round_to_bf16(xv[n * in + k])) * round_to_bf16(wv[o * in + k]);
        ref += t;
        mag += std::abs(t);
        exact += static_cast<double>(xv[n * in + k]) * wv[o * in + k];
      }
      check("y", yv[n * out + o], ref, in * 0x1p-24 * mag + 1e-7);
      worst_vs_fp32 = std::max(worst_vs_fp32, std::abs(yv[n * out + o] - exact) / mag);
    }
  // The rounding did happen (bf16 keeps 8 significant bits), and stayed within its bound: each
  // term's relative error is at most about 2 x 2^-9.
  CHECK(worst_vs_fp32 > 1e-5);
  CHECK(worst_vs_fp32 < 0x1p-7);
  // sum_j round(a[j sa]) round(b[j sb]) over j < count in float64, and the sum of the terms' sizes
  auto rounded_dot = [](const float* a, int64_t sa, const float* b, int64_t sb, int64_t count) {
    double ref = 0, mag = 0;
    for (int64_t j = 0; j < count; ++j) {
      const double t = static_cast<double>(round_to_bf16(a[j * sa])) * round_to_bf16(b[j * sb]);
      ref += t;
      mag += std::abs(t);
    }
    return std::pair<double, double>{ref, mag};
  };
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < in; ++k) {
      const auto [ref, mag] = rounded_dot(&rv[n * out], 1, &wv[k], in, out);
      check("dx", gx[n * in + k], ref, out * 0x1p-24 * mag + 1e-7);
    }
  for (int64_t o = 0; o < out; ++o) {
    double db = 0;
    for (int64_t n = 0; n < N; ++n) db += rv[n * out + o];
    check("db (fp32)", gb[o], db, N * 0x1p-24 * 4 * N + 1e-6);
    for (int64_t k = 0; k < in; ++k) {
      const auto [ref, mag] = rounded_dot(&rv[o], out, &xv[k], in, N);
      check("dW", gw[o * in + k], ref, N * 0x1p-24 * mag + 1e-7);
    }
  }
}

TEST_CASE("linear under Precision::bf16: the same values on one thread and two, and in fp32 as before") {
  const int64_t N = 600, in = 64, out = 96;
  Rng rng(8);
  Tensor x = randn({N, in}, rng), w = randn({out, in}, rng), b = randn({out}, rng);
  const int before = get_num_threads();
  std::vector<float> runs[2];
  for (int t = 0; t < 2; ++t) {
    set_num_threads(t + 1);
    PrecisionGuard bf16(Precision::bf16);
    runs[t] = linear(x, w, b).to_vector();
  }
  set_num_threads(before);
  CHECK(runs[0] == runs[1]);
  CHECK(runs[0] != linear(x, w, b).to_vector());  // fp32 again outside the guard
  CHECK(parse_precision("bf16") == Precision::bf16);
  CHECK(std::string(precision_name(Precision::fp32)) == "fp32");
  CHECK_THROWS_WITH_AS(parse_precision("fp16"), "unknown precision 'fp16' (expected fp32 or bf16)", Error);
}
