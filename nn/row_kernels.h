// nn/row_kernels.h: the d-long vector loops the fused attention kernels are made of.
//
// A head's rows are short (d = 32 or 64 floats, 4 or 8 AVX2 registers), so what limits these
// loops is less the arithmetic than the chain of dependent additions into one accumulator;
// weighted_rows keeps two.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/isa.h"

namespace lg::nn {
// Each instruction set's copies apart (core/isa.h).
inline namespace LG_ISA {

inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

inline void axpy(float alpha, const float* x, float* y, int64_t n) {  // y += alpha x
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// out = sum_{j < n} w[j] row(j), row(j) = rows + j * stride, d floats each. kD > 0 fixes d at
// compile time; then even and odd j go to two accumulators in registers, so each addition
// waits on the one two rows back instead of the previous one.
template <int64_t kD>
inline void weighted_rows(const float* w, const float* rows, int64_t stride, int64_t n, int64_t d_runtime,
                          float* out) {
  if constexpr (kD > 0) {
    float a0[kD] = {}, a1[kD] = {};
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
      const float w0 = w[j], w1 = w[j + 1];
      const float *r0 = rows + j * stride, *r1 = r0 + stride;
#pragma omp simd
      for (int64_t i = 0; i < kD; ++i) {
        a0[i] += w0 * r0[i];
        a1[i] += w1 * r1[i];
      }
    }
    if (j < n) axpy(w[j], rows + j * stride, a0, kD);
#pragma omp simd
    for (int64_t i = 0; i < kD; ++i) out[i] = a0[i] + a1[i];
  } else {
    std::fill_n(out, d_runtime, 0.0f);
    for (int64_t j = 0; j < n; ++j) axpy(w[j], rows + j * stride, out, d_runtime);
  }
}

}  // namespace LG_ISA
}  // namespace lg::nn
