// core/ops.h: every differentiable core op, one line each, with its shapes (nn/'s own: nn/fused_ops.h).
//
// Each op computes its output and, when grad mode is on and an input requires grad,
// attaches a Node whose closure adds into the inputs' gradients (see core/tensor.h).
// Shapes: "..." is any number of leading dimensions; "bcast" is numpy broadcasting.
// To add an op: implement it next to its kin in core/*.cpp, list it here and in
// kDifferentiableOps below, and give it a gradient check in tests/test_ops_grad.cpp
// (the suite fails while a listed op has none). An op that lives in nn/ goes into
// nn/fused_ops.h instead, with its gradient check in tests/test_nn.cpp.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/random.h"
#include "core/tensor.h"

namespace lg {

// ---- elementwise, binary (bcast(a, b) -> out) -----------------------------------------
Tensor add(const Tensor& a, const Tensor& b);               // a + b
Tensor sub(const Tensor& a, const Tensor& b);               // a - b
Tensor mul(const Tensor& a, const Tensor& b);               // a * b
Tensor div(const Tensor& a, const Tensor& b);               // a / b
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);  // cond != 0 ? a : b; cond bcast to a, a.shape == b.shape
Tensor masked_fill(const Tensor& x, const Tensor& mask, float value); // mask != 0 ? value : x; mask bcast to x

// ---- elementwise, unary (x -> same shape) ----------------------------------------------
Tensor neg(const Tensor& x);
Tensor add_scalar(const Tensor& x, float s);                // x + s
Tensor mul_scalar(const Tensor& x, float s);                // x * s
Tensor pow_scalar(const Tensor& x, float p);                // x ^ p
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);                              // 1 / sqrt(x)
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);                               // tanh approximation (GPT-2)
Tensor dropout(const Tensor& x, float p, Rng& rng);         // inverted: kept values scaled by 1/(1-p)

// ---- reductions -----------------------------------------------------------------------
Tensor sum(const Tensor& x);                                // (...) -> ()
Tensor sum(const Tensor& x, int64_t axis, bool keepdim = false);   // reduce one axis
Tensor mean(const Tensor& x);                               // (...) -> ()
Tensor mean(const Tensor& x, int64_t axis, bool keepdim = false);
Tensor max(const Tensor& x);                                // (...) -> (); gradient to the first maximum
Tensor max(const Tensor& x, int64_t axis, bool keepdim = false);
Tensor cumsum(const Tensor& x, int64_t axis);               // inclusive prefix sum, same shape

// ---- matrix products (cblas_sgemm; transposed views are passed as BLAS flags) -------------
Tensor matmul(const Tensor& a, const Tensor& b);            // (..., M, K) @ (K, N) or (..., K, N) -> (..., M, N)
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);  // (..., in), (out, in), (out,) or undefined -> (..., out): x W^T + b (products in bf16 under Precision::bf16, core/precision.h)

// ---- network primitives ---------------------------------------------------------------
Tensor embedding(const Tensor& weight, const std::vector<int32_t>& ids, const Shape& ids_shape);
                                                            // (V, D), ids of ids_shape -> (ids_shape..., D)
Tensor softmax(const Tensor& x);                            // over the last axis
Tensor log_softmax(const Tensor& x);                        // over the last axis
Tensor cross_entropy(const Tensor& logits, const std::vector<int32_t>& targets);
                                                            // (..., V), one target per row -> () mean over rows
Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps = 1e-5f);
                                                            // (..., D), (D), (D) -> (..., D)

// ---- shape (views share storage; concat and contiguous copy) ------------------------------
Tensor reshape(const Tensor& x, const Shape& shape);        // one dimension may be -1; copies if x is not contiguous
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);  // swap two axes (view)
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);  // reorder axes (view)
Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t end);  // [start, end) along axis (view)
Tensor select(const Tensor& x, int64_t axis, int64_t index);  // entry `index` along axis, axis dropped (view)
Tensor concat(const std::vector<Tensor>& xs, int64_t axis); // join along axis
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis);  // slices
Tensor contiguous(const Tensor& x);                         // x itself when already contiguous

// The op names recorded in graph nodes, one per differentiable op above; tests/test_ops_grad.cpp
// fails unless every name here has been seen in a graph it gradient-checked. Each name is its
// function's name (an operator records the function it calls: x + 1.0f is "add_scalar"), except
// the axis overloads sum(x, axis, keepdim), mean(x, axis, keepdim) and max(x, axis, keepdim):
// they record "sum_axis", "mean_axis" and "max_axis", so that the check must cover their
// backward apart from the whole-tensor sum(x), mean(x) and max(x). The ops of nn/ with their
// own backward (rope, causal_attention_fused, latent_attention_fused, ...) are not core ops:
// nn/fused_ops.h lists them, and tests/test_nn.cpp checks that list the same way.
inline constexpr std::string_view kDifferentiableOps[] = {
    "add",        "sub",        "mul",        "div",           "where",      "masked_fill",
    "neg",        "add_scalar", "mul_scalar", "pow_scalar",    "exp",        "log",
    "sqrt",       "rsqrt",      "tanh",       "sigmoid",       "relu",       "gelu",
    "dropout",    "sum",        "sum_axis",   "mean",          "mean_axis",  "max",
    "max_axis",   "cumsum",     "matmul",     "embedding",     "softmax",    "log_softmax",
    "cross_entropy", "layer_norm", "reshape", "transpose",     "permute",    "slice",
    "select",     "concat",     "contiguous", "linear",        "recomputed"};  // recomputed: core/recompute.h
// (split is made of slices, so checking slice checks it.)

// ---- non-differentiable helpers -------------------------------------------------------
Tensor causal_mask(int64_t T);                              // (T, T): 1 where column > row (the future)
Tensor contiguous_copy(const Tensor& x);                    // always a fresh contiguous buffer
void add_into(Tensor& dst, const Tensor& src);              // dst += src (same shape, dst contiguous)
Tensor sum_to(const Tensor& g, const Shape& shape);         // sums a broadcast gradient back to shape
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// ---- operators -----------------------------------------------------------------------
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& x) { return neg(x); }
inline Tensor operator+(const Tensor& x, float s) { return add_scalar(x, s); }
inline Tensor operator-(const Tensor& x, float s) { return add_scalar(x, -s); }
inline Tensor operator*(const Tensor& x, float s) { return mul_scalar(x, s); }
inline Tensor operator/(const Tensor& x, float s) { return mul_scalar(x, 1.0f / s); }
inline Tensor operator*(float s, const Tensor& x) { return mul_scalar(x, s); }

// ---- threads ---------------------------------------------------------------------------
// Sets both the OpenMP team size and OpenBLAS's threads (0 = leave as OMP_NUM_THREADS says).
void set_num_threads(int n);
int get_num_threads();

}  // namespace lg
