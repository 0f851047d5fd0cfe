// tests/test_tensor.cpp: tensors, views, forward values against hand-computed ones, errors, autograd engine.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <latentgrad/latentgrad.h>  // the umbrella compiles in every build, not only in scripts/consumer.sh

#include <cmath>
#include <limits>
#include <string>

#include "core/fastmath.h"
#include "core/ops.h"
#include "core/version.h"
#include "tests/gradcheck.h"

using namespace lg;

static void check_values(const Tensor& t, const std::vector<float>& expected, float tol = 1e-5f) {
  std::vector<float> got = t.to_vector();
  REQUIRE(got.size() == expected.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(expected[i]).epsilon(tol));
}

TEST_CASE("the version: library, headers and CMake's project() agree") {
  CHECK(std::string(lg::version()) == LATENTGRAD_VERSION);
  CHECK(std::string(LATENTGRAD_VERSION) == fmt::format("{}.{}.{}", LATENTGRAD_VERSION_MAJOR,
                                                       LATENTGRAD_VERSION_MINOR, LATENTGRAD_VERSION_PATCH));
  CHECK(std::string(LATENTGRAD_VERSION) == LG_PROJECT_VERSION);  // what find_package(latentgrad) reports
}

TEST_CASE("creation and element access") {
  check_values(Tensor::zeros({2, 2}), {0, 0, 0, 0});
  check_values(Tensor::ones({3}), {1, 1, 1});
  check_values(Tensor::full({2}, 7.5f), {7.5f, 7.5f});
  check_values(Tensor::arange(4), {0, 1, 2, 3});
  Tensor t = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(t.at({1, 2}) == 6.0f);
  CHECK(t.dim() == 2);
  CHECK(t.size(-1) == 3);
  Rng r1(5), r2(5);
  CHECK(randn({8}, r1).to_vector() == randn({8}, r2).to_vector());
  Rng r3(5);
  Tensor u = uniform({1000}, r3, -1.0f, 1.0f);
  for (float v : u.to_vector()) CHECK((v >= -1.0f && v < 1.0f));
}

TEST_CASE("views share storage; contiguous copies") {
  Tensor t = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor tt = transpose(t, 0, 1);
  CHECK(tt.same_storage(t));
  CHECK_FALSE(tt.is_contiguous());
  check_values(tt, {1, 4, 2, 5, 3, 6});
  Tensor s = slice(t, 1, 1, 3);
  CHECK(s.same_storage(t));
  check_values(s, {2, 3, 5, 6});
  t.data()[1] = 20.0f;  // visible through the view
  CHECK(s.at({0, 0}) == 20.0f);
  Tensor c = contiguous(tt);
  CHECK(c.is_contiguous());
  CHECK_FALSE(c.same_storage(t));
  check_values(reshape(t, {3, 2}), {1, 20, 3, 4, 5, 6});
  CHECK(reshape(t, {3, 2}).same_storage(t));
  check_values(permute(Tensor::arange(6), {0}), {0, 1, 2, 3, 4, 5});
  Tensor p = permute(reshape(Tensor::arange(24), {2, 3, 4}), {2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.at({3, 1, 2}) == 1 * 12 + 2 * 4 + 3);
  auto parts = split(Tensor::arange(5), {2, 3}, 0);
  check_values(parts[1], {2, 3, 4});
  check_values(concat({parts[1], parts[0]}, 0), {2, 3, 4, 0, 1});
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2}), b = Tensor::from_vector({5, 6}, {2, 1});
  check_values(concat({a, b}, 1), {1, 2, 5, 3, 4, 6});
}

TEST_CASE("elementwise forward values and broadcasting") {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor row = Tensor::from_vector({10, 20, 30}, {3});
  Tensor col = Tensor::from_vector({2, 4}, {2, 1});
  check_values(add(a, row), {11, 22, 33, 14, 25, 36});
  check_values(sub(a, col), {-1, 0, 1, 0, 1, 2});
  check_values(mul(a, col), {2, 4, 6, 16, 20, 24});
  check_values(div(a, col), {0.5f, 1, 1.5f, 1, 1.25f, 1.5f});
  check_values(a * 2.0f + 1.0f, {3, 5, 7, 9, 11, 13});
  check_values(neg(a), {-1, -2, -3, -4, -5, -6});
  check_values(pow_scalar(a, 2.0f), {1, 4, 9, 16, 25, 36});
  check_values(exp(Tensor::from_vector({0, 1}, {2})), {1, std::exp(1.0f)});
  check_values(log(Tensor::from_vector({1, std::exp(2.0f)}, {2})), {0, 2});
  check_values(sqrt(Tensor::from_vector({4, 9}, {2})), {2, 3});
  check_values(rsqrt(Tensor::from_vector({4, 16}, {2})), {0.5f, 0.25f});
  check_values(tanh(Tensor::from_vector({0, 1}, {2})), {0, std::tanh(1.0f)});
  check_values(sigmoid(Tensor::from_vector({0}, {1})), {0.5f});
  check_values(relu(Tensor::from_vector({-1, 2}, {2})), {0, 2});
  // gelu(1) with the tanh form: 0.5 (1 + tanh(sqrt(2/pi) 1.044715)) = 0.841192
  check_values(gelu(Tensor::from_vector({0, 1}, {2})), {0, 0.841192f}, 1e-4f);
  check_values(masked_fill(a, Tensor::from_vector({0, 1, 0}, {3}), -1),
               {1, -1, 3, 4, -1, 6});
  check_values(where(Tensor::from_vector({1, 0}, {2, 1}), a, neg(a)), {1, 2, 3, -4, -5, -6});
  check_values(causal_mask(3), {0, 1, 1, 0, 0, 1, 0, 0, 0});
}

TEST_CASE("reductions and cumsum forward values") {
  Tensor a = Tensor::from_vector({1, 5, 3, 4, 2, 6}, {2, 3});
  CHECK(sum(a).item() == 21.0f);
  CHECK(mean(a).item() == 3.5f);
  CHECK(max(a).item() == 6.0f);
  check_values(sum(a, 0), {5, 7, 9});
  check_values(sum(a, 1), {9, 12});
  CHECK(sum(a, 1, true).shape() == Shape{2, 1});
  check_values(mean(a, -1), {3, 4});
  check_values(max(a, 1), {5, 6});
  check_values(max(a, 0), {4, 5, 6});
  check_values(cumsum(a, 1), {1, 6, 9, 4, 6, 12});
  check_values(cumsum(a, 0), {1, 5, 3, 5, 7, 9});
}

TEST_CASE("matmul forward values, transposed and batched") {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector({1, 0, 0, 1, 1, 1}, {3, 2});
  check_values(matmul(a, b), {4, 5, 10, 11});
  check_values(matmul(transpose(b, 0, 1), transpose(a, 0, 1)), {4, 10, 5, 11});
  Tensor batch = reshape(Tensor::arange(12), {2, 2, 3});
  check_values(matmul(batch, b), {2, 3, 8, 9, 14, 15, 20, 21});
  Tensor eye = Tensor::from_vector({1, 0, 0, 1}, {2, 2});
  check_values(matmul(eye, batch), batch.to_vector());
}

TEST_CASE("network primitives forward values") {
  Tensor w = Tensor::from_vector({0, 1, 10, 11, 20, 21}, {3, 2});
  Tensor e = embedding(w, {2, 0, 2}, {3});
  CHECK(e.shape() == Shape{3, 2});
  check_values(e, {20, 21, 0, 1, 20, 21});
  Tensor x = Tensor::from_vector({0, std::log(3.0f), 1, 1}, {2, 2});
  check_values(softmax(x), {0.25f, 0.75f, 0.5f, 0.5f});
  check_values(log_softmax(x), {std::log(0.25f), std::log(0.75f), std::log(0.5f), std::log(0.5f)});
  // mean of -log 0.75 and -log 0.5
  CHECK(cross_entropy(x, {1, 0}).item() == doctest::Approx((-std::log(0.75) - std::log(0.5)) / 2));
  Tensor ln = layer_norm(Tensor::from_vector({1, 3}, {1, 2}), Tensor::ones({2}), Tensor::zeros({2}), 0.0f);
  check_values(ln, {-1, 1});
  Rng rng(3);
  Tensor d = dropout(Tensor::ones({1000}), 0.25f, rng);
  int zeros = 0;
  for (float v : d.to_vector()) {
    CHECK((v == 0.0f || v == doctest::Approx(1.0f / 0.75f)));
    zeros += v == 0.0f;
  }
  CHECK(zeros > 200);
  CHECK(zeros < 300);
}

TEST_CASE("errors name the op and the shapes") {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 5});
  CHECK_THROWS_WITH_AS(add(a, b), "add: shapes (2, 3) and (4, 5) do not broadcast", Error);
  CHECK_THROWS_WITH_AS(matmul(a, b), "matmul: inner dimensions differ ((2, 3) @ (4, 5))", Error);
  CHECK_THROWS_WITH_AS(reshape(a, {4}), "reshape: cannot reshape (2, 3) (6 elements) into (4,)", Error);
  CHECK_THROWS_WITH_AS(slice(a, 1, 2, 5), "slice: range [2, 5) out of bounds for axis 1 of shape (2, 3)", Error);
  CHECK_THROWS_WITH_AS(a.at({2, 0}), "at: index 2 out of range for dimension 0 of shape (2, 3)", Error);
  CHECK_THROWS_WITH_AS(embedding(a, {0, 7}, {2}), "embedding: index 7 out of range for weight (2, 3)", Error);
  CHECK_THROWS_WITH_AS(cross_entropy(a, {0, 3}), "cross_entropy: target 3 out of range for logits (2, 3)", Error);
  CHECK_THROWS_WITH_AS(sum(a, 2), "sum: axis 2 out of range for shape (2, 3)", Error);
  CHECK_THROWS_AS(concat({a, b}, 0), Error);
  CHECK_THROWS_AS(layer_norm(a, Tensor::ones({2}), Tensor::zeros({3})), Error);
  CHECK_THROWS_AS(Tensor().numel(), Error);

  Tensor x = Tensor::ones({2, 2});
  x.set_requires_grad(true);
  Tensor y = mul(x, x);
  CHECK_THROWS_WITH_AS(y.backward(), "backward: output of shape (2, 2) is not a scalar; pass a gradient", Error);
  CHECK_THROWS_AS(y.backward(Tensor::ones({3})), Error);
  Tensor loss = sum(y);
  loss.backward();
  CHECK_THROWS_WITH_AS(loss.backward(),
                       "backward: the graph through 'sum' was already released by an earlier backward", Error);
  CHECK_THROWS_AS(Tensor::ones({1}).backward(), Error);  // nothing requires grad
}

TEST_CASE("gradients accumulate; zero_grad; explicit output gradient; detach; no-grad") {
  Tensor x = Tensor::from_vector({1, 2, 3}, {3});
  x.set_requires_grad(true);
  sum(mul(x, x)).backward();
  sum(mul(x, x)).backward();
  CHECK(x.grad().to_vector() == std::vector<float>{4, 8, 12});  // 2 * 2x
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  mul_scalar(x, 3.0f).backward(Tensor::from_vector({1, 0, 2}, {3}));
  CHECK(x.grad().to_vector() == std::vector<float>{3, 0, 6});
  x.zero_grad();
  // A tensor used twice gets both contributions.
  Tensor y = exp(x);
  sum(add(y, y)).backward();
  CHECK(x.grad().at({0}) == doctest::Approx(2 * std::exp(1.0f)));
  Tensor d = mul_scalar(x, 2.0f).detach();
  CHECK_FALSE(d.requires_grad());
  {
    NoGradGuard guard;
    CHECK_FALSE(grad_enabled());
    CHECK_FALSE(mul(x, x).requires_grad());
  }
  CHECK(grad_enabled());
  CHECK(mul(x, x).requires_grad());
}

TEST_CASE("an output gradient handed on: reused in place, never shared by two gradients") {
  // add gives its output gradient's buffer to one input and a copy to the other; unary ops write
  // dx over it; reshape passes it on as a view. None of it may leave two gradients on one buffer
  // or write into a tensor the caller still holds.
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {4}), b = Tensor::from_vector({-1, 0, 1, 2}, {4});
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  Tensor go = Tensor::from_vector({1, 2, 3, 4}, {4});
  add(a, b).backward(go);
  CHECK(go.to_vector() == std::vector<float>{1, 2, 3, 4});
  CHECK(a.grad().data() != b.grad().data());
  CHECK(a.grad().data() != go.data());
  add(a, b).backward(go);  // adds into a's gradient: b's must not move with it
  CHECK(a.grad().to_vector() == std::vector<float>{2, 4, 6, 8});
  CHECK(b.grad().to_vector() == std::vector<float>{2, 4, 6, 8});
  a.zero_grad();
  b.zero_grad();

  // x + gelu(tanh(x)), reshaped: the residual's gradient and the unary chain's in-place writes meet at x.
  Tensor x = Tensor::from_vector({-1.5f, -0.2f, 0.3f, 2.0f}, {2, 2});
  x.set_requires_grad(true);
  Tensor gy = Tensor::from_vector({0.5f, -1, 2, 1}, {4});
  reshape(add(x, gelu(tanh(x))), {4}).backward(gy);
  CHECK(gy.to_vector() == std::vector<float>{0.5f, -1, 2, 1});
  std::vector<float> xv = x.to_vector(), gv = gy.to_vector(), dx = x.grad().to_vector();
  for (size_t i = 0; i < xv.size(); ++i) {
    auto gelu_of = [](double v) { return 0.5 * v * (1 + std::tanh(0.7978845608 * (v + 0.044715 * v * v * v))); };
    const double u = std::tanh(xv[i]), h = 1e-3;
    const double dgelu = (gelu_of(u + h) - gelu_of(u - h)) / (2 * h);
    CHECK(dx[i] == doctest::Approx(gv[i] * (1 + dgelu * (1 - u * u))).epsilon(1e-3));
  }
}

TEST_CASE("a 100,000-op chain: backward and teardown without stack overflow") {
  Tensor x = Tensor::from_vector({0.5f}, {1});
  x.set_requires_grad(true);
  Tensor y = x;
  for (int i = 0; i < 100000; ++i) y = mul_scalar(add_scalar(y, 1e-6f), 1.0f);
  y.backward(Tensor::ones({1}));
  CHECK(x.grad().item() == doctest::Approx(1.0f));
  // A deep graph dropped without backward must also be torn down iteratively.
  Tensor z = x;
  for (int i = 0; i < 100000; ++i) z = add_scalar(z, 1.0f);
  z = Tensor();
}

TEST_CASE("activations are released after backward") {
  int64_t before = live_tensors();
  {
    Tensor w = lg::testing::random_leaf({8, 8}, 1);
    int64_t with_w = live_tensors();
    Tensor loss = sum(tanh(matmul(exp(w), w)));
    CHECK(live_tensors() > with_w + 3);
    loss.backward();
    // The graph is gone: only w, its gradient, and loss itself remain.
    CHECK(live_tensors() <= with_w + 2);
  }
  CHECK(live_tensors() == before);
}

TEST_CASE("results are bitwise identical run to run at a fixed thread count") {
  auto run = [] {
    Rng rng(42);
    Tensor a = randn({64, 300}, rng), b = randn({300, 50}, rng);
    a.set_requires_grad(true);
    Tensor loss = mean(layer_norm(gelu(matmul(a, b)), Tensor::ones({50}), Tensor::zeros({50})) *
                       randn({64, 50}, rng));
    loss.backward();
    std::vector<float> v = a.grad().to_vector();
    v.push_back(loss.item());
    return v;
  };
  set_num_threads(2);
  auto first = run();
  CHECK(first == run());
  CHECK(first == run());
}

TEST_CASE("fast exp and tanh agree with the standard library") {
  double worst_exp = 0, worst_tanh = 0;
  for (float x = -87.0f; x < 88.0f; x += 0.00731f) {
    double e = std::exp(static_cast<double>(x));
    worst_exp = std::max(worst_exp, std::abs(fast_exp(x) - e) / e);
  }
  for (float x = -12.0f; x < 12.0f; x += 0.00117f)
    worst_tanh = std::max(worst_tanh, std::abs(fast_tanh(x) - std::tanh(static_cast<double>(x))));
  CHECK(worst_exp < 3e-7);
  CHECK(worst_tanh < 1e-6);
  CHECK(fast_exp(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(fast_exp(-200.0f) == 0.0f);
  CHECK(fast_tanh(50.0f) == doctest::Approx(1.0f));
}

TEST_CASE("softmax row helpers: max_of and exp_shift_sum against scalar loops, every tail length") {
  Rng rng(41);
  for (int64_t n = 0; n <= 41; ++n) {
    CAPTURE(n);
    std::vector<float> x(n);
    for (auto& v : x) v = 30.0f * (rng.uniform() - 0.5f);
    if (n > 3) x[n / 2] = -std::numeric_limits<float>::infinity();  // a masked entry
    float want_max = -std::numeric_limits<float>::infinity();
    for (float v : x) want_max = std::max(want_max, v);
    CHECK(max_of(x.data(), n) == want_max);
    const float shift = n ? want_max : 0.0f;
    std::vector<float> y = x;
    const float z = exp_shift_sum(y.data(), n, shift);
    double want_z = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double e = std::exp(static_cast<double>(x[i]) - shift);
      CHECK(y[i] == doctest::Approx(e).epsilon(1e-6));
      want_z += e;
    }
    CHECK(z == doctest::Approx(want_z).epsilon(1e-6));
  }
  std::vector<float> low = {-100.0f, -90.0f, 0.0f, -87.5f, -88.0f, 1.0f, -1000.0f, -95.0f, -89.0f};
  exp_shift_sum(low.data(), static_cast<int64_t>(low.size()), 0.0f);
  for (size_t i : {0u, 1u, 3u, 4u, 6u, 7u, 8u}) CHECK(low[i] == 0.0f);  // below -87.3: exactly 0, both paths
}
