// nn/rope.h: rotary position embedding (RoFormer, Su et al. 2021) on adjacent pairs, as in llama2.c.
//
// Pair i of a vector at position p is rotated by the angle p * base^(-2i/d). Then
// (R_t q) . (R_s k) depends on q, k and t - s only: relative position from absolute rotations.
#pragma once

#include "core/ops.h"

namespace lg::nn {

// x (..., T, d), d even; row t of the second-to-last axis sits at position first_position + t.
// Differentiable (op "rope"; its backward rotates the gradient by the opposite angle).
Tensor rope(const Tensor& x, int64_t first_position, float base = 10000.0f);

}  // namespace lg::nn
