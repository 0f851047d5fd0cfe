// nn/rope.h: rotary position embedding (RoFormer, Su et al. 2021) on adjacent pairs, as in llama2.c.
//
// Pair i of a vector at position p is rotated by the angle p * base^(-2i/d). Then
// (R_t q) . (R_s k) depends on q, k and t - s only: relative position from absolute rotations.
#pragma once

#include <vector>

#include "core/ops.h"

namespace lg::nn {

// x (..., T, d), d even; row t of the second-to-last axis sits at position first_position + t.
// Differentiable (op "rope"; its backward rotates the gradient by the opposite angle).
Tensor rope(const Tensor& x, int64_t first_position, float base = 10000.0f);

// One part of split_heads_rope's output: which group of the projection, and whether to rotate it.
struct HeadPart {
  int64_t group;
  bool rotate;
};

// The attention layers' fused projection x (B, T, G D), D = heads d, holds G groups side by side
// (queries, keys, values). Returns the parts stacked: (P, B, H, T, d), part p = group
// parts[p].group split into heads, rotated by RoPE at positions first_position.. when
// parts[p].rotate. A group may appear in several parts (latent attention uses the keys both
// as they are and rotated). Differentiable (op "split_heads_rope").
//
// Why one op: built from slice, reshape, permute, contiguous and rope, the same thing copies
// every part two or three times forward and, backward, writes a zero-filled gradient of the
// whole projection per slice. Here the forward is one pass over the parts and the backward
// one pass writing x's gradient. Take the parts apart with unstack().
Tensor split_heads_rope(const Tensor& x, int64_t heads, const std::vector<HeadPart>& parts,
                        int64_t first_position, float base = 10000.0f);

// packed (P, ...) -> P tensors (...): views of packed's storage (select), so no copy.
std::vector<Tensor> unstack(const Tensor& packed);

}  // namespace lg::nn
