// tests/gradcheck.cpp: central-difference gradient checking against autograd.
#include "tests/gradcheck.h"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace lg::testing {

static std::set<std::string>& ops_seen() {
  static std::set<std::string> seen;
  return seen;
}
const std::set<std::string>& checked_ops() { return ops_seen(); }

static void record_ops(const Tensor& out) {
  std::vector<Tensor> stack{out};
  std::unordered_set<TensorImpl*> visited;
  while (!stack.empty()) {
    Tensor t = stack.back();
    stack.pop_back();
    if (!t.defined() || !visited.insert(t.impl_ptr().get()).second || !t.impl().node) continue;
    ops_seen().insert(t.impl().node->op);
    for (const Tensor& in : t.impl().node->inputs) stack.push_back(in);
  }
}

static double weighted_sum(const Tensor& out, const std::vector<float>& weights) {
  std::vector<float> v = out.to_vector();
  double acc = 0;
  for (size_t i = 0; i < v.size(); ++i) acc += static_cast<double>(v[i]) * weights[i];
  return acc;
}

Tensor random_leaf(const Shape& shape, uint64_t seed, float scale) {
  Rng rng(seed);
  Tensor t = randn(shape, rng, scale);
  t.set_requires_grad(true);
  return t;
}

void check_gradients(const std::function<Tensor()>& f, const std::vector<Tensor>& wrt,
                     GradCheckOptions options) {
  for (const Tensor& t : wrt) {
    REQUIRE_MESSAGE(t.is_contiguous(), "gradcheck: inputs must be contiguous leaves");
    Tensor(t).zero_grad();
  }
  Tensor out = f();
  Rng rng(1234);
  Tensor weights = randn(out.shape(), rng);
  std::vector<float> w = weights.to_vector();
  record_ops(out);
  sum(mul(out, weights)).backward();

  NoGradGuard no_grad;
  for (size_t k = 0; k < wrt.size(); ++k) {
    const Tensor& t = wrt[k];
    Tensor analytic = t.grad();
    REQUIRE_MESSAGE(analytic.defined(), fmt::format("gradcheck: input {} received no gradient", k));
    float* x = t.data();
    int failures = 0;
    for (int64_t i = 0; i < t.numel() && failures < 5; ++i) {
      float saved = x[i];
      x[i] = saved + options.step;
      double up = weighted_sum(f(), w);
      x[i] = saved - options.step;
      double down = weighted_sum(f(), w);
      x[i] = saved;
      double numeric = (up - down) / (2.0 * options.step);
      double a = analytic.data()[i];
      bool ok = std::abs(numeric - a) <= options.atol + options.rtol * std::abs(numeric);
      if (!ok) ++failures;
      CHECK_MESSAGE(ok, fmt::format("input {} {} element {}: autograd {:.6f}, finite difference {:.6f}",
                                    k, shape_str(t.shape()), i, a, numeric));
    }
  }
}

void randomize_parameters(const nn::Module& module, uint64_t seed, float std,
                          const std::map<std::string, float>& std_of) {
  Rng rng(seed);
  for (auto& [name, p] : module.named_parameters()) {
    auto it = std_of.find(name);
    Tensor fresh = randn(p.shape(), rng, it == std_of.end() ? std : it->second);
    std::copy_n(fresh.data(), p.numel(), p.data());
  }
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  std::vector<float> va = a.to_vector(), vb = b.to_vector();
  float worst = 0.0f;
  for (size_t i = 0; i < va.size(); ++i) worst = std::max(worst, std::abs(va[i] - vb[i]));
  return worst;
}

}  // namespace lg::testing
