// tests/gradcheck.h: the one finite-difference gradient checker used for every op and layer.
//
// check_gradients(f, wrt) compares autograd's gradient of L = sum(f() * R), R a fixed
// random tensor, against central differences (L(x + h) - L(x - h)) / 2h for every
// element of every tensor in `wrt`. A weighted sum, not a plain sum: softmax and
// layer_norm rows sum to constants, so sum(f()) would have zero gradient and hide bugs.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/ops.h"
#include "nn/module.h"

namespace lg::testing {

struct GradCheckOptions {
  float step = 3e-3f;   // h: large enough to beat float32 rounding, small enough for curvature
  float atol = 3e-3f;
  float rtol = 3e-2f;
};

// Runs the check, reporting every mismatch through doctest CHECKs. `wrt` tensors must be
// contiguous leaves (their values are perturbed in place); f must be deterministic.
void check_gradients(const std::function<Tensor()>& f, const std::vector<Tensor>& wrt,
                     GradCheckOptions options = {});

// Names of the ops seen in graphs that check_gradients has checked (for the coverage test).
const std::set<std::string>& checked_ops();

// A leaf (requires grad) of the given shape, filled from N(0, 1) by a seeded generator.
Tensor random_leaf(const Shape& shape, uint64_t seed, float scale = 1.0f);

// Refills every parameter, in registration order, from N(0, std^2) with one seeded generator
// (std_of[name] where given). GPT-2's 0.02 init makes scores near zero and softmaxes near
// uniform, and puts most gradients inside the checker's tolerance: wrong formulas would pass.
void randomize_parameters(const nn::Module& module, uint64_t seed, float std,
                          const std::map<std::string, float>& std_of = {});

// The largest |a - b| over all elements (a and b must have one shape: REQUIREd).
float max_abs_diff(const Tensor& a, const Tensor& b);

}  // namespace lg::testing
