// core/fastmath.h: branch-free exp and tanh that the compiler can vectorise (std::expf/tanhf cannot be).
//
// Both are accurate to a few float ulps over their whole range; tests/test_tensor.cpp
// compares them with std::exp and std::tanh, which remain the reference.
#pragma once

#include <cstdint>
#include <cstring>

namespace lg {

// e^x: x = n ln2 + r with |r| <= ln2/2, e^r by the minimax polynomial of Cephes' expf
// (S. Moshier), then 2^n put straight into the exponent bits. Below -87.3 the result is 0,
// so a masked score of -inf contributes exactly nothing to a softmax.
inline float fast_exp(float x) {
  const float hi = 88.3762626647949f, lo = -87.3365447504f;
  float xc = x > hi ? hi : (x < lo ? lo : x);
  float n = __builtin_floorf(xc * 1.44269504088896341f + 0.5f);
  // r = xc - n ln2, with ln2 split in two so the subtraction is exact
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < lo ? 0.0f : p * scale;
}

// tanh(x) as a ratio of odd/even polynomials in x (the rational approximation used by
// Eigen's ptanh for float), exact to float rounding for |x| < 7.9 where tanh saturates.
inline float fast_tanh(float x) {
  const float bound = 7.90531110763549805f;
  float xc = x > bound ? bound : (x < -bound ? -bound : x);
  float x2 = xc * xc;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * xc;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p / q;
}

}  // namespace lg
