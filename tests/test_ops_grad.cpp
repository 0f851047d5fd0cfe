// tests/test_ops_grad.cpp: a finite-difference gradient check of every op in core/ops.h.
//
// Adding an op: list it in kDifferentiableOps (core/ops.h) and add a TEST_CASE here that
// builds a graph using it and calls check_gradients. The last test fails otherwise.
#include <doctest/doctest.h>
#include <omp.h>

#include "core/blas.h"
#include "core/ops.h"
#include "core/recompute.h"
#include "tests/gradcheck.h"

using namespace lg;
using lg::testing::check_gradients;
using lg::testing::random_leaf;

// Values kept away from kinks and poles (relu at 0, log/sqrt near 0, max ties).
static Tensor positive_leaf(const Shape& shape, uint64_t seed) {
  Rng rng(seed);
  Tensor t = uniform(shape, rng, 0.5f, 2.0f);
  t.set_requires_grad(true);
  return t;
}

TEST_CASE("grad: add, sub, mul, div with equal shapes") {
  Tensor a = random_leaf({3, 4}, 1), b = positive_leaf({3, 4}, 2);
  check_gradients([&] { return add(a, b); }, {a, b});
  check_gradients([&] { return sub(a, b); }, {a, b});
  check_gradients([&] { return mul(a, b); }, {a, b});
  check_gradients([&] { return div(a, b); }, {a, b});
}

TEST_CASE("grad: broadcasting (row bias, column, leading axes, scalar-like)") {
  Tensor a = random_leaf({2, 3, 4}, 3);
  Tensor row = random_leaf({4}, 4), col = positive_leaf({3, 1}, 5), one = positive_leaf({1}, 6);
  check_gradients([&] { return add(a, row); }, {a, row});
  check_gradients([&] { return mul(a, col); }, {a, col});
  check_gradients([&] { return div(a, col); }, {a, col});
  check_gradients([&] { return sub(row, a); }, {a, row});
  check_gradients([&] { return mul(one, a); }, {a, one});
}

TEST_CASE("grad: ops on transposed and sliced inputs") {
  Tensor a = random_leaf({4, 3}, 7), b = random_leaf({3, 4}, 8);
  check_gradients([&] { return mul(transpose(a, 0, 1), b); }, {a, b});
  check_gradients([&] { return exp(slice(b, 1, 1, 3)); }, {b});
  check_gradients([&] { return add(slice(a, 0, 1, 4), transpose(slice(b, 1, 0, 3), 0, 1)); }, {a, b});
}

TEST_CASE("grad: unary elementwise") {
  Tensor x = random_leaf({3, 5}, 9);
  Tensor p = positive_leaf({3, 5}, 10);
  check_gradients([&] { return neg(x); }, {x});
  check_gradients([&] { return add_scalar(x, 2.5f); }, {x});
  check_gradients([&] { return mul_scalar(x, -1.5f); }, {x});
  check_gradients([&] { return pow_scalar(p, 2.5f); }, {p});
  check_gradients([&] { return pow_scalar(p, -1.0f); }, {p});
  check_gradients([&] { return exp(x); }, {x});
  check_gradients([&] { return log(p); }, {p});
  check_gradients([&] { return sqrt(p); }, {p});
  check_gradients([&] { return rsqrt(p); }, {p});
  check_gradients([&] { return tanh(x); }, {x});
  check_gradients([&] { return sigmoid(x); }, {x});
  check_gradients([&] { return gelu(x); }, {x});
  // relu away from its kink at 0
  Tensor y = Tensor::from_vector({-1.5f, -0.7f, 0.3f, 0.9f, 2.0f, -0.2f}, {2, 3});
  y.set_requires_grad(true);
  check_gradients([&] { return relu(y); }, {y});
}

TEST_CASE("grad: where and masked_fill") {
  Tensor a = random_leaf({2, 3}, 11), b = random_leaf({2, 3}, 12);
  Tensor cond = Tensor::from_vector({1, 0, 1}, {3});
  check_gradients([&] { return where(cond, a, b); }, {a, b});
  Tensor mask = Tensor::from_vector({0, 1, 0, 1, 0, 0}, {2, 3});
  check_gradients([&] { return masked_fill(a, mask, -3.0f); }, {a});
}

TEST_CASE("grad: dropout with a fixed seed") {
  Tensor x = random_leaf({4, 6}, 13);
  check_gradients([&] {
    Rng rng(99);
    return dropout(x, 0.3f, rng);
  }, {x});
}

// 24 distinct values at least 0.1 apart in shuffled order: no max ties within the step.
static Tensor separated_leaf() {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[i] = 0.1f * static_cast<float>((i * 7) % 24) - 1.2f;
  Tensor t = Tensor::from_vector(v, {2, 3, 4});
  t.set_requires_grad(true);
  return t;
}

TEST_CASE("grad: reductions and cumsum") {
  Tensor x = random_leaf({2, 3, 4}, 14);
  Tensor s = separated_leaf();
  check_gradients([&] { return sum(x); }, {x});
  check_gradients([&] { return mean(x); }, {x});
  check_gradients([&] { return max(s); }, {s});
  for (int64_t axis : {0, 1, 2, -1}) {
    check_gradients([&] { return sum(x, axis); }, {x});
    check_gradients([&] { return sum(x, axis, true); }, {x});
    check_gradients([&] { return mean(x, axis); }, {x});
    check_gradients([&] { return max(s, axis); }, {s});
    check_gradients([&] { return cumsum(x, axis); }, {x});
  }
  check_gradients([&] { return cumsum(transpose(x, 0, 2), 1); }, {x});
}

TEST_CASE("grad: matmul, plain, batched, shared and transposed operands") {
  Tensor a = random_leaf({3, 4}, 15), b = random_leaf({4, 5}, 16);
  check_gradients([&] { return matmul(a, b); }, {a, b});
  Tensor ba = random_leaf({2, 3, 4}, 17), bb = random_leaf({2, 4, 5}, 18);
  check_gradients([&] { return matmul(ba, bb); }, {ba, bb});   // batched
  check_gradients([&] { return matmul(ba, b); }, {ba, b});     // B shared by the batch
  check_gradients([&] { return matmul(a, bb); }, {a, bb});     // A shared by the batch
  Tensor at = random_leaf({4, 3}, 19), bt = random_leaf({5, 4}, 20);
  check_gradients([&] { return matmul(transpose(at, 0, 1), transpose(bt, 0, 1)); }, {at, bt});
  Tensor bat = random_leaf({2, 4, 3}, 21);
  check_gradients([&] { return matmul(transpose(bat, 1, 2), bb); }, {bat, bb});
  Tensor bbt = random_leaf({2, 5, 4}, 31);
  check_gradients([&] { return matmul(ba, transpose(bbt, 1, 2)); }, {ba, bbt});
  check_gradients([&] { return matmul(slice(ba, 2, 1, 4), slice(bb, 1, 0, 3)); }, {ba, bb});
  Tensor four = random_leaf({2, 2, 3, 4}, 22);
  check_gradients([&] { return matmul(four, b); }, {four, b});
}

TEST_CASE("grad: linear with and without bias, batched and strided inputs") {
  Tensor x = random_leaf({2, 3, 4}, 40), w = random_leaf({5, 4}, 41), b = random_leaf({5}, 42);
  check_gradients([&] { return linear(x, w, b); }, {x, w, b});
  check_gradients([&] { return linear(x, w, Tensor()); }, {x, w});
  Tensor xt = random_leaf({4, 3}, 43);
  check_gradients([&] { return linear(transpose(xt, 0, 1), w, b); }, {xt, w, b});
  // The reference: matmul with a transposed view plus a broadcast add.
  NoGradGuard no_grad;
  std::vector<float> fused = linear(x, w, b).to_vector(), composed = add(matmul(x, transpose(w, 0, 1)), b).to_vector();
  for (size_t i = 0; i < fused.size(); ++i) CHECK(fused[i] == doctest::Approx(composed[i]).epsilon(1e-5));
}

TEST_CASE("grad: embedding with repeated ids") {
  Tensor w = random_leaf({5, 3}, 23);
  std::vector<int32_t> ids = {0, 2, 2, 4, 1, 2};
  check_gradients([&] { return embedding(w, ids, {2, 3}); }, {w});
}

TEST_CASE("grad: softmax, log_softmax, cross_entropy") {
  Tensor x = random_leaf({3, 5}, 24);
  check_gradients([&] { return softmax(x); }, {x});
  check_gradients([&] { return log_softmax(x); }, {x});
  check_gradients([&] { return cross_entropy(x, {1, 4, 0}); }, {x});
  Tensor y = random_leaf({2, 2, 4}, 25);
  check_gradients([&] { return cross_entropy(y, {3, 0, 1, 1}); }, {y});
  check_gradients([&] { return softmax(transpose(y, 1, 2)); }, {y});
}

TEST_CASE("grad: layer_norm over input, gain and bias") {
  Tensor x = random_leaf({2, 3, 6}, 26);
  Tensor gamma = random_leaf({6}, 27), beta = random_leaf({6}, 28);
  check_gradients([&] { return layer_norm(x, gamma, beta); }, {x, gamma, beta});
}

TEST_CASE("layer_norm backward: one thread and two give the same gradients, to the bit") {
  // 300 rows: over the grain, so two threads split the rows; the parameter gradients still add
  // the rows in order.
  Tensor x = random_leaf({300, 16}, 90), gamma = random_leaf({16}, 91), beta = random_leaf({16}, 92);
  Tensor w = random_leaf({300, 16}, 93);
  std::vector<std::vector<float>> grads[2];
  const int before = omp_get_max_threads();
  for (int i = 0; i < 2; ++i) {
    omp_set_num_threads(i == 0 ? 1 : 2);
    for (Tensor* t : {&x, &gamma, &beta}) t->zero_grad();
    sum(layer_norm(x, gamma, beta) * w).backward();
    for (Tensor* t : {&x, &gamma, &beta}) grads[i].push_back(t->grad().to_vector());
  }
  omp_set_num_threads(before);
  for (size_t k = 0; k < 3; ++k) CHECK(grads[0][k] == grads[1][k]);
  check_gradients([&] { return layer_norm(x, gamma, beta); }, {x, gamma, beta});  // the parallel path
}

TEST_CASE("grad: reshape, transpose, permute, slice, select, concat, split, contiguous") {
  Tensor x = random_leaf({2, 3, 4}, 29), y = random_leaf({2, 2, 4}, 30);
  check_gradients([&] { return mul(reshape(x, {6, 4}), reshape(x, {6, -1})); }, {x});
  check_gradients([&] { return reshape(transpose(x, 0, 2), {4, 6}); }, {x});
  check_gradients([&] { return contiguous(permute(x, {2, 0, 1})); }, {x});
  check_gradients([&] { return slice(x, 1, 1, 3); }, {x});
  check_gradients([&] {
    Tensor h = exp(x);  // not a leaf: three slices and a sum all add into its gradient in place
    return add(mul(slice(h, 0, 0, 1), slice(h, 0, 1, 2)), add(slice(h, 2, 1, 2) * 2.0f, sum(h)));
  }, {x});
  check_gradients([&] { return select(x, 1, 2); }, {x});
  check_gradients([&] {
    Tensor h = exp(transpose(x, 0, 2));  // (4, 3, 2), not contiguous below: select of a strided view
    return add(mul(select(h, 0, 1), select(h, 0, 3)), select(transpose(h, 0, 1), 1, 2));
  }, {x});
  CHECK_THROWS_WITH_AS(select(x, 1, 3), doctest::Contains("out of range"), Error);
  check_gradients([&] { return concat({x, y}, 1); }, {x, y});
  check_gradients([&] { return concat({transpose(x, 0, 2), transpose(x, 0, 2)}, 0); }, {x});
  check_gradients([&] {
    auto parts = split(x, {1, 3}, 2);
    return mul(parts[0], sum(parts[1], 2, true));
  }, {x});
}

TEST_CASE("grad: recomputed runs its function again in backward, into its input and the parameters it reads") {
  Tensor x = random_leaf({3, 4}, 70), w = random_leaf({4, 4}, 71);
  int calls = 0;
  auto f = [&](const Tensor& in) {
    ++calls;
    return tanh(matmul(in, w)) * in + in;  // reads in twice, and a parameter
  };
  check_gradients([&] { return recomputed(f, x); }, {x, w});
  // The same gradients as without recomputation, bit for bit, from one more call of f.
  Tensor r = random_leaf({3, 4}, 72);
  x.zero_grad();
  w.zero_grad();
  sum(f(x) * r).backward();
  std::vector<float> gx = x.grad().to_vector(), gw = w.grad().to_vector();
  x.zero_grad();
  w.zero_grad();
  calls = 0;
  sum(recomputed(f, x) * r).backward();
  CHECK(calls == 2);
  CHECK(x.grad().to_vector() == gx);
  CHECK(w.grad().to_vector() == gw);
  // Without grad mode, plain f: no second call.
  NoGradGuard no_grad;
  calls = 0;
  recomputed(f, x);
  CHECK(calls == 1);
}

// Runs last in this file (doctest orders by file, then line).
TEST_CASE("every differentiable op has a gradient check") {
  for (std::string_view op : kDifferentiableOps)
    CHECK_MESSAGE(lg::testing::checked_ops().count(std::string(op)) == 1,
                  "op '" << op << "' is listed in core/ops.h but no gradient check builds it");
}

TEST_CASE("tall products in bands of rows: the same values on one thread and two, every transpose") {
  // M = 2100 rows and M N K over 2^22: on two threads lg::sgemm cuts C into bands of rows, one
  // one-thread product each. Every row must come out as the one-thread product computes it.
  const int64_t M = 2100, N = 130, K = 70;
  Rng rng(104);
  const std::vector<float> a = randn({M, K}, rng).to_vector(), b = randn({K, N}, rng).to_vector();
  const int before = get_num_threads();
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      CAPTURE(ta);
      CAPTURE(tb);
      // op(A) (M, K) and op(B) (K, N), stored transposed where asked
      std::vector<float> A(a.size()), B(b.size());
      for (int64_t i = 0; i < M; ++i)
        for (int64_t k = 0; k < K; ++k) A[ta ? k * M + i : i * K + k] = a[i * K + k];
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < N; ++j) B[tb ? j * K + k : k * N + j] = b[k * N + j];
      std::vector<float> C[2];
      for (int t = 0; t < 2; ++t) {
        set_num_threads(t + 1);
        C[t].assign(M * N, 1.0f);
        sgemm(ta, tb, M, N, K, A.data(), ta ? M : K, B.data(), tb ? K : N, 0.5f, C[t].data(), N);
      }
      CHECK(C[0] == C[1]);
      float worst = 0;
      for (int64_t i = 0; i < M; i += 7)
        for (int64_t j = 0; j < N; ++j) {
          double ref = 0.5;
          for (int64_t k = 0; k < K; ++k) ref += static_cast<double>(a[i * K + k]) * b[k * N + j];
          worst = std::max(worst, static_cast<float>(std::abs(C[1][i * N + j] - ref)));
        }
      CHECK(worst < 1e-4f);
    }
  set_num_threads(before);
}

TEST_CASE("linear backward over many rows: the weight gradient in parts, the same on one thread and two") {
  // N = 2100 rows: over 8 x 256, so dW = g^T x is summed in eight parts of rows, each its own
  // product, added in order. The values must not depend on the thread count, and must be the
  // sum over all rows (checked against a double-precision loop and finite differences).
  const int64_t N = 2100, in = 5, out = 3;
  Tensor x = random_leaf({N, in}, 100), w = random_leaf({out, in}, 101), b = random_leaf({out}, 102);
  Tensor r = random_leaf({N, out}, 103);
  std::vector<float> grads[2];
  const int before = omp_get_max_threads();
  for (int i = 0; i < 2; ++i) {
    omp_set_num_threads(i == 0 ? 1 : 2);
    w.zero_grad();
    sum(linear(x, w, b) * r).backward();
    grads[i] = w.grad().to_vector();
  }
  omp_set_num_threads(before);
  CHECK(grads[0] == grads[1]);
  const std::vector<float> xv = x.to_vector(), rv = r.to_vector();
  float worst = 0;
  for (int64_t o = 0; o < out; ++o)
    for (int64_t j = 0; j < in; ++j) {
      double ref = 0;
      for (int64_t n = 0; n < N; ++n) ref += static_cast<double>(rv[n * out + o]) * xv[n * in + j];
      worst = std::max(worst, static_cast<float>(std::abs(grads[1][o * in + j] - ref)));
    }
  CHECK(worst < 1e-3f);  // sums of 2100 products of order 1
  check_gradients([&] { return linear(x, w, b); }, {w, b});
}
