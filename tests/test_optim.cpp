// tests/test_optim.cpp: AdamW and SGD against hand-computed steps, clipping, schedule, saved state.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "core/ops.h"
#include "nn/linear.h"
#include "nn/mlp.h"
#include "nn/safetensors.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/schedule.h"
#include "optim/sgd.h"

using namespace lg;

static Tensor leaf(const std::vector<float>& values, const Shape& shape) {
  Tensor t = Tensor::from_vector(values, shape);
  t.set_requires_grad(true);
  return t;
}

TEST_CASE("AdamW: the first two steps equal the formula computed by hand; no decay on 1-D parameters") {
  // L = sum(W^2) + sum(b^3): dL/dW = 2W, dL/db = 3b^2, both changing between the steps.
  Tensor W = leaf({0.5f, -1.5f}, {1, 2});  // a matrix: decayed
  Tensor b = leaf({0.2f, -0.3f}, {2});     // a vector: not decayed
  optim::AdamWConfig cfg;
  cfg.lr = 0.1f;
  cfg.beta1 = 0.9f;
  cfg.beta2 = 0.99f;
  cfg.eps = 1e-8f;
  cfg.weight_decay = 0.5f;  // large, so decay on the wrong tensor would show
  optim::AdamW opt({{"W", W}, {"b", b}}, cfg);

  auto loss_step = [&] {
    opt.zero_grad();
    (sum(W * W) + sum(b * b * b)).backward();
    opt.step();
  };

  // Hand computation in double, element by element.
  const double lr = 0.1, beta1 = 0.9, beta2 = 0.99, eps = 1e-8, wd = 0.5;
  double w[2] = {0.5, -1.5}, bias[2] = {0.2, -0.3};
  double mw[2] = {0, 0}, vw[2] = {0, 0}, mb[2] = {0, 0}, vb[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    // step 1: 1 - beta1^1 = 0.1, 1 - beta2^1 = 0.01
    double gw = 2 * w[i], gb = 3 * bias[i] * bias[i];
    mw[i] = (1 - beta1) * gw;
    vw[i] = (1 - beta2) * gw * gw;
    w[i] = w[i] - lr * wd * w[i] - lr * (mw[i] / 0.1) / (std::sqrt(vw[i] / 0.01) + eps);
    mb[i] = (1 - beta1) * gb;
    vb[i] = (1 - beta2) * gb * gb;
    bias[i] = bias[i] - lr * (mb[i] / 0.1) / (std::sqrt(vb[i] / 0.01) + eps);
  }
  loss_step();
  std::vector<float> w1 = W.to_vector(), b1 = b.to_vector();
  for (int i = 0; i < 2; ++i) {
    CHECK(w1[i] == doctest::Approx(w[i]).epsilon(1e-6));
    CHECK(b1[i] == doctest::Approx(bias[i]).epsilon(1e-6));
  }
  // Numbers for the reader: W = 0.5 -> 0.5 - 0.025 - 0.1 = 0.375; b = 0.2 -> 0.1.
  CHECK(w1[0] == doctest::Approx(0.375));
  CHECK(b1[0] == doctest::Approx(0.1));

  for (int i = 0; i < 2; ++i) {
    // step 2: 1 - beta1^2 = 0.19, 1 - beta2^2 = 0.0199; gradients at the new values
    double gw = 2 * w[i], gb = 3 * bias[i] * bias[i];
    mw[i] = beta1 * mw[i] + (1 - beta1) * gw;
    vw[i] = beta2 * vw[i] + (1 - beta2) * gw * gw;
    w[i] = w[i] - lr * wd * w[i] - lr * (mw[i] / 0.19) / (std::sqrt(vw[i] / 0.0199) + eps);
    mb[i] = beta1 * mb[i] + (1 - beta1) * gb;
    vb[i] = beta2 * vb[i] + (1 - beta2) * gb * gb;
    bias[i] = bias[i] - lr * (mb[i] / 0.19) / (std::sqrt(vb[i] / 0.0199) + eps);
  }
  loss_step();
  std::vector<float> w2 = W.to_vector(), b2 = b.to_vector();
  for (int i = 0; i < 2; ++i) {
    CHECK(w2[i] == doctest::Approx(w[i]).epsilon(1e-6));
    CHECK(b2[i] == doctest::Approx(bias[i]).epsilon(1e-6));
  }
  CHECK(opt.step_count() == 2);
}

TEST_CASE("AdamW: a parameter without a gradient is left alone") {
  Tensor used = leaf({1.0f}, {1}), unused = leaf({2.0f, 3.0f}, {1, 2});
  optim::AdamW opt({{"used", used}, {"unused", unused}});
  sum(used * used).backward();
  opt.step();
  CHECK(used.item() != 1.0f);
  CHECK(unused.to_vector() == std::vector<float>{2.0f, 3.0f});
}

TEST_CASE("AdamW drives a small linear regression to near-zero loss") {
  Rng rng(1);
  Tensor X = randn({64, 3}, rng);                                    // (N, 3)
  Tensor true_w = Tensor::from_vector({1.5f, -2.0f, 0.5f}, {3, 1});  // (3, 1)
  Tensor y = matmul(X, true_w) + 0.3f;                               // (N, 1)
  nn::Linear model(3, 1, true, rng);
  optim::AdamWConfig cfg;
  cfg.lr = 0.05f;
  cfg.weight_decay = 0.0f;  // decay would pull the optimum off the true weights
  optim::AdamW opt(model.named_parameters(), cfg);
  auto loss = [&] { return mean(pow_scalar(model.forward(X) - y, 2.0f)); };
  float initial = loss().item();
  for (int step = 0; step < 500; ++step) {
    opt.zero_grad();
    loss().backward();
    opt.step();
  }
  float final_loss = loss().item();
  CHECK(initial > 1.0f);
  CHECK(final_loss < 1e-5f);
  CHECK(model.weight.at({0, 1}) == doctest::Approx(-2.0f).epsilon(1e-3));
  CHECK(model.bias.item() == doctest::Approx(0.3f).epsilon(1e-3));
}

TEST_CASE("SGD with momentum: hand-computed values") {
  // L = sum(p * c): the gradient is c at every step.
  Tensor p = leaf({1.0f, -2.0f}, {2});
  Tensor c = Tensor::from_vector({0.5f, 2.0f}, {2});
  optim::SGDConfig cfg;
  cfg.lr = 0.1f;
  cfg.momentum = 0.9f;
  optim::SGD opt({{"p", p}}, cfg);
  auto step = [&] {
    opt.zero_grad();
    sum(p * c).backward();
    opt.step();
  };
  // buffers: g, 0.9 g + g = 1.9 g, 0.9 * 1.9 g + g = 2.71 g; the steps are lr times those.
  step();
  CHECK(p.at({0}) == doctest::Approx(1.0 - 0.1 * 0.5));
  CHECK(p.at({1}) == doctest::Approx(-2.0 - 0.1 * 2.0));
  step();
  step();
  CHECK(p.at({0}) == doctest::Approx(1.0 - 0.1 * 0.5 * (1 + 1.9 + 2.71)));   // 0.7195
  CHECK(p.at({1}) == doctest::Approx(-2.0 - 0.1 * 2.0 * (1 + 1.9 + 2.71)));  // -3.122
  auto state = opt.state_tensors();
  REQUIRE(state.size() == 1);
  CHECK(state[0].first == "momentum.p");
  CHECK(state[0].second.at({1}) == doctest::Approx(2.71 * 2.0));

  // Coupled weight decay adds weight_decay * p to the gradient.
  Tensor q = leaf({2.0f}, {1});
  cfg.weight_decay = 0.1f;
  optim::SGD decayed({{"q", q}}, cfg);
  sum(q * 3.0f).backward();
  decayed.step();
  CHECK(q.item() == doctest::Approx(2.0 - 0.1 * (3.0 + 0.1 * 2.0)));
}

TEST_CASE("clip_grad_norm returns the global norm and rescales to max_norm") {
  Tensor a = leaf({0, 0}, {2}), b = leaf({0}, {1, 1}), no_grad = leaf({5}, {1});
  accumulate_grad(a, Tensor::from_vector({3, 4}, {2}));
  accumulate_grad(b, Tensor::from_vector({12}, {1, 1}));
  // sqrt(9 + 16 + 144) = 13; no_grad has no gradient and counts as zero.
  CHECK(optim::clip_grad_norm({a, b, no_grad}, 20.0f) == doctest::Approx(13.0f));
  CHECK(a.grad().to_vector() == std::vector<float>{3, 4});  // under the limit: untouched
  CHECK(optim::clip_grad_norm({a, b, no_grad}, 6.5f) == doctest::Approx(13.0f));
  CHECK(a.grad().at({0}) == doctest::Approx(1.5f));
  CHECK(a.grad().at({1}) == doctest::Approx(2.0f));
  CHECK(b.grad().item() == doctest::Approx(6.0f));
  CHECK(optim::clip_grad_norm({a, b}, 100.0f) == doctest::Approx(6.5f));
  CHECK_FALSE(no_grad.grad().defined());
}

TEST_CASE("schedule: warmup from 0, cosine to min_lr, min_lr after total") {
  optim::LrSchedule s;
  s.lr = 1.0f;
  s.min_lr = 0.1f;
  s.warmup = 10;
  s.total = 110;
  CHECK(optim::lr_at(s, 0) == 0.0f);
  CHECK(optim::lr_at(s, 5) == doctest::Approx(0.5f));
  CHECK(optim::lr_at(s, 10) == doctest::Approx(1.0f));  // warmup end: the peak
  CHECK(optim::lr_at(s, 35) ==
        doctest::Approx(0.1 + 0.45 * (1 + std::sqrt(0.5))));  // a quarter of the cosine
  CHECK(optim::lr_at(s, 60) == doctest::Approx(0.55f));       // half way: the mean of lr and min_lr
  CHECK(optim::lr_at(s, 109) > 0.1f);
  CHECK(optim::lr_at(s, 109) < 0.101f);
  CHECK(optim::lr_at(s, 110) == 0.1f);
  CHECK(optim::lr_at(s, 10000) == 0.1f);
  for (int64_t step = 10; step < 110; ++step) CHECK(optim::lr_at(s, step + 1) < optim::lr_at(s, step));
  s.warmup = 0;
  CHECK(optim::lr_at(s, 0) == doctest::Approx(1.0f));
  s.total = -1;
  CHECK_THROWS_AS(optim::lr_at(s, 0), Error);
}

TEST_CASE("optimizer state save/load: training continues identically") {
  auto dir = std::filesystem::temp_directory_path() / ("lg_test_optim_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  Rng data_rng(2);
  Tensor x = randn({5, 4}, data_rng), target = randn({5, 4}, data_rng);
  optim::AdamWConfig cfg;
  cfg.lr = 0.01f;
  cfg.weight_decay = 0.1f;
  auto train = [&](nn::MLP& model, optim::AdamW& opt, int steps) {
    for (int i = 0; i < steps; ++i) {
      opt.zero_grad();
      mean(pow_scalar(model.forward(x) - target, 2.0f)).backward();
      opt.step();
    }
  };

  Rng rng_a(3);
  nn::MLP a(4, 2, true, rng_a);
  optim::AdamW opt_a(a.named_parameters(), cfg);
  train(a, opt_a, 3);
  nn::save_module(a, (dir / "model.safetensors").string());
  opt_a.save((dir / "optim.safetensors").string());
  auto names = opt_a.state_tensors();
  CHECK(names.front().first == "m.fc.weight");
  CHECK(names.back().first == "v.proj.bias");

  Rng rng_b(4), rng_c(5);
  nn::MLP b(4, 2, true, rng_b), fresh_state(4, 2, true, rng_c);
  optim::AdamW opt_b(b.named_parameters(), cfg), opt_fresh(fresh_state.named_parameters(), cfg);
  nn::load_module(b, (dir / "model.safetensors").string());
  opt_b.load((dir / "optim.safetensors").string());
  nn::load_module(fresh_state, (dir / "model.safetensors").string());  // same weights, no moments
  CHECK(opt_b.step_count() == 3);

  train(a, opt_a, 3);
  train(b, opt_b, 3);
  train(fresh_state, opt_fresh, 3);
  auto sa = a.state_dict(), sb = b.state_dict(), sf = fresh_state.state_dict();
  bool fresh_differs = false;
  for (auto& [name, t] : sa) {
    CHECK_MESSAGE(t.to_vector() == sb.at(name).to_vector(), name);
    fresh_differs = fresh_differs || t.to_vector() != sf.at(name).to_vector();
  }
  CHECK(fresh_differs);  // the saved moments and step count matter, so the round trip is tested

  // A state that does not fit the parameters is refused.
  Rng rng_d(6);
  nn::MLP wider(8, 2, true, rng_d);
  optim::AdamW opt_wider(wider.named_parameters(), cfg);
  CHECK_THROWS_AS(opt_wider.load((dir / "optim.safetensors").string()), Error);
  auto state = nn::read_safetensors((dir / "optim.safetensors").string());
  state.erase("v.fc.bias");
  CHECK_THROWS_WITH_AS(opt_b.load_state(state, 3), "AdamW::load_state: state has no entry 'v.fc.bias'",
                       Error);
  std::filesystem::remove_all(dir);
}
