// core/recompute.h: activation recomputation: keep a function's input, not its intermediates, and run it
// again in backward.
//
// Backward needs the activations that forward computed: for a transformer block at a long
// context they are most of a step's memory. recomputed(f, x) computes f(x) without keeping
// any of them: its output's node holds x alone. When backward reaches that node, it runs f
// on x again, this time building the graph, and backpropagates the incoming gradient through
// it, into x and into every parameter f reads. Memory: one f's activations at a time instead
// of all of them; time: one more forward of f.
//
// f must compute the same values both times. Anything random inside it must draw from a
// generator it restores itself (CharLM passes a copy of the dropout generator's state).
// Parameters read inside f get their gradients from the inner backward, which also calls
// their grad-ready hooks (nothing outside f may read them). With grad mode off, or x not
// requiring grad, it is plain f(x).
#pragma once

#include <functional>

#include "core/tensor.h"

namespace lg {

Tensor recomputed(const std::function<Tensor(const Tensor&)>& f, const Tensor& x);

}  // namespace lg
