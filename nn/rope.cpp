// nn/rope.cpp: the rotary embedding as one fused op with its backward.
#include "nn/rope.h"

#include <fmt/format.h>

#include <cmath>

namespace lg::nn {

// y = R(sign * angle) x for every pair; sign -1 is the inverse rotation (the gradient).
static Tensor rotate(const Tensor& x, int64_t first_position, float base, float sign) {
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  int64_t T = x.size(-2), d = x.size(-1);
  int64_t rows = x.numel() / d;
  Tensor y = Tensor::empty(x.shape());
  // angle table (T, d/2): position * base^(-2i/d), computed in double then rounded once
  std::vector<float> cos_t(T * d / 2), sin_t(T * d / 2);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < d / 2; ++i) {
      double angle = static_cast<double>(first_position + t) * std::pow(static_cast<double>(base), -2.0 * i / d);
      cos_t[t * d / 2 + i] = static_cast<float>(std::cos(angle));
      sin_t[t * d / 2 + i] = sign * static_cast<float>(std::sin(angle));
    }
  const float* px = xc.data();
  float* py = y.data();
#pragma omp parallel for schedule(static) if (rows > 256)
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = cos_t.data() + (r % T) * d / 2;
    const float* s = sin_t.data() + (r % T) * d / 2;
    const float* in = px + r * d;
    float* out = py + r * d;
    for (int64_t i = 0; i < d / 2; ++i) {
      float a = in[2 * i], b = in[2 * i + 1];
      out[2 * i] = a * c[i] - b * s[i];
      out[2 * i + 1] = a * s[i] + b * c[i];
    }
  }
  return y;
}

Tensor rope(const Tensor& x, int64_t first_position, float base) {
  if (x.dim() < 2 || x.size(-1) % 2 != 0)
    throw Error(fmt::format("rope: input must be (..., T, d) with d even, got {}", shape_str(x.shape())));
  Tensor y = rotate(x, first_position, base, 1.0f);
  return attach_node(y, "rope", {x}, [x, first_position, base](const Tensor& g) {
    accumulate_grad(x, rotate(g, first_position, base, -1.0f));
  });
}

}  // namespace lg::nn
