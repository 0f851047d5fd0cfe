// tests/test_latent_attention.cpp: the five properties of the latent attention spec, for W = 0 and W > 0.
//
// (1) causal, (2) chunked = naive formula, (3) shift invariant, (4) step() = forward(),
// (5) gradients = finite differences; with chunk lengths that do and do not divide T.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>

#include "nn/latent_attention.h"
#include "tests/gradcheck.h"

using namespace lg;
using lg::nn::AttentionConfig;
using lg::nn::LatentAttention;

namespace {

AttentionConfig small_config(int64_t window, int64_t chunk) {
  AttentionConfig c;
  c.kind = nn::AttentionKind::Latent;
  c.dim = 8;
  c.heads = 2;
  c.latents = 3;
  c.window = window;
  c.chunk = chunk;
  c.layers = 2;
  return c;
}

// Refills every parameter with N(0, std^2): the GPT-2 init (std 0.02) makes every score
// nearly zero and every softmax nearly uniform, which would let wrong formulas pass.
void randomize(nn::Module& module, uint64_t seed, float std = 0.4f) {
  Rng rng(seed);
  for (auto& [name, p] : module.named_parameters()) {
    Tensor fresh = randn(p.shape(), rng, name == "latents" ? 1.0f : std);
    std::copy_n(fresh.data(), p.numel(), p.data());
  }
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  std::vector<float> va = a.to_vector(), vb = b.to_vector();
  float worst = 0;
  for (size_t i = 0; i < va.size(); ++i) worst = std::max(worst, std::abs(va[i] - vb[i]));
  return worst;
}

// The configurations every property is checked on: W = 0 and W > 0 (shorter and longer than
// T), chunks that divide T = 13 (13), do not (4, 5) and exceed it (16), and a chunk of 1.
struct Case {
  int64_t window, chunk;
};
const Case kCases[] = {{0, 4}, {0, 5},  {0, 13}, {0, 16}, {0, 1}, {3, 4},
                       {3, 5}, {3, 13}, {3, 16}, {3, 1},  {6, 4}, {20, 5}};
constexpr int64_t kT = 13;

std::string name(const Case& c) { return fmt::format("W={} C={}", c.window, c.chunk); }

}  // namespace

TEST_CASE("latent attention (1): causal, outputs up to t ignore inputs after t") {
  for (const Case& c : kCases) {
    CAPTURE(name(c));
    Rng rng(1);
    LatentAttention layer(small_config(c.window, c.chunk), rng);
    randomize(layer, 2);
    NoGradGuard no_grad;
    Tensor x = randn({2, kT, 8}, rng);  // (B, T, D)
    Tensor y = layer.forward(x);
    for (int64_t t : {0, 3, 4, 8, 11}) {
      Tensor x2 = contiguous_copy(x);
      Tensor noise = randn({2, kT - t - 1, 8}, rng, 3.0f);
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t s = t + 1; s < kT; ++s)
          for (int64_t i = 0; i < 8; ++i) x2.data()[(b * kT + s) * 8 + i] = noise.at({b, s - t - 1, i});
      Tensor y2 = layer.forward(x2);
      // Only rounding may differ: the chunk's stabiliser mu sees the whole chunk.
      CHECK(max_abs_diff(slice(y, 1, 0, t + 1), slice(y2, 1, 0, t + 1)) < 1e-5f);
      CHECK(max_abs_diff(slice(y, 1, t + 1, kT), slice(y2, 1, t + 1, kT)) > 1e-3f);  // the future does matter
    }
  }
}

TEST_CASE("latent attention (2): the chunked path equals the naive formula") {
  for (const Case& c : kCases) {
    CAPTURE(name(c));
    Rng rng(3);
    LatentAttention layer(small_config(c.window, c.chunk), rng);
    randomize(layer, 4);
    NoGradGuard no_grad;
    Tensor x = randn({2, kT, 8}, rng);
    for (int64_t p0 : {0, 5}) {
      Tensor fast = layer.forward(x, p0), naive = layer.forward_naive(x, p0);
      CHECK(max_abs_diff(fast, naive) < 2e-5f);
      // and the cores themselves, before the output projection
      nn::LatentInputs in = layer.project(x, p0);
      CHECK(max_abs_diff(nn::latent_attention_chunked(in, c.window, c.chunk),
                         nn::latent_attention_naive(in, c.window)) < 2e-5f);
    }
  }
}

TEST_CASE("latent attention (2b): large write scores stay finite and exact") {
  // Scores of +-30 and more across a chunk: the running max keeps exp() in range.
  for (const Case& c : {Case{0, 4}, Case{3, 5}}) {
    CAPTURE(name(c));
    Rng rng(5);
    LatentAttention layer(small_config(c.window, c.chunk), rng);
    randomize(layer, 6);
    for (auto& [n, p] : layer.named_parameters())
      if (n == "latents")
        for (int64_t i = 0; i < p.numel(); ++i) p.data()[i] *= 8.0f;
    NoGradGuard no_grad;
    Tensor x = randn({1, kT, 8}, rng, 2.0f);
    Tensor fast = layer.forward(x), naive = layer.forward_naive(x);
    for (float v : fast.to_vector()) REQUIRE(std::isfinite(v));
    CHECK(max_abs_diff(fast, naive) < 1e-4f);
  }
}

TEST_CASE("latent attention (3): shift invariant, positions p0.. give the outputs of 0..") {
  for (const Case& c : kCases) {
    CAPTURE(name(c));
    Rng rng(7);
    LatentAttention layer(small_config(c.window, c.chunk), rng);
    randomize(layer, 8);
    NoGradGuard no_grad;
    Tensor x = randn({2, kT, 8}, rng);
    Tensor y0 = layer.forward(x, 0);
    for (int64_t p0 : {1, 17, 1000}) {
      CAPTURE(p0);
      // RoPE angles of large positions are rounded to float: a little more slack than rounding.
      CHECK(max_abs_diff(layer.forward(x, p0), y0) < 5e-5f);
    }
  }
}

TEST_CASE("latent attention (4): step() token by token equals forward()") {
  for (const Case& c : kCases) {
    CAPTURE(name(c));
    Rng rng(9);
    LatentAttention layer(small_config(c.window, c.chunk), rng);
    randomize(layer, 10);
    NoGradGuard no_grad;
    Tensor x = randn({2, kT, 8}, rng);  // B = 2
    Tensor y = layer.forward(x);
    auto state = layer.make_state(2);
    for (int64_t t = 0; t < kT; ++t) {
      CAPTURE(t);
      Tensor yt = layer.step(contiguous_copy(slice(x, 1, t, t + 1)), *state);
      CHECK(yt.shape() == Shape{2, 1, 8});
      CHECK(max_abs_diff(yt, slice(y, 1, t, t + 1)) < 2e-5f);
    }
    CHECK(state->position == kT);
  }
}

TEST_CASE("latent attention (4b): step() from a prompt processed by forward(x, first_position) positions") {
  // Generation after a prompt: the state's rope positions and forward's first_position agree.
  Rng rng(11);
  LatentAttention layer(small_config(3, 4), rng);
  randomize(layer, 12);
  NoGradGuard no_grad;
  Tensor x = randn({1, kT, 8}, rng);
  Tensor y = layer.forward(x, 0);
  auto state = layer.make_state(1);
  Tensor last;
  for (int64_t t = 0; t < kT; ++t) last = layer.step(contiguous_copy(slice(x, 1, t, t + 1)), *state);
  CHECK(max_abs_diff(last, slice(y, 1, kT - 1, kT)) < 2e-5f);
  // The state does not grow with the position.
  auto* s = dynamic_cast<nn::LatentAttentionState*>(state.get());
  REQUIRE(s);
  CHECK(s->key_sum.size() == static_cast<size_t>(1 * 2 * 3 * 4));
  CHECK(s->window_keys.size() == static_cast<size_t>(1 * 2 * 3 * 4));
}

TEST_CASE("latent attention (5): gradients match finite differences for the input and every parameter") {
  const Case grad_cases[] = {{0, 3}, {0, 7}, {0, 1}, {2, 3}, {2, 7}, {4, 2}};
  for (const Case& c : grad_cases) {
    CAPTURE(name(c));
    Rng rng(13);
    LatentAttention layer(small_config(c.window, c.chunk), rng);
    randomize(layer, 14);
    Tensor x = lg::testing::random_leaf({2, 7, 8}, 15);  // (B, T, D), tiny: T = 7
    std::vector<Tensor> wrt = {x};
    for (auto& [n, p] : layer.named_parameters()) wrt.push_back(p);
    CHECK(wrt.size() == 6);  // x, qkv.weight, qkv.bias, latents, proj.weight, proj.bias
    lg::testing::check_gradients([&] { return layer.forward(x, 3); }, wrt);
  }
}

TEST_CASE("latent attention: parameters, init and errors") {
  Rng rng(16);
  AttentionConfig config = small_config(2, 4);
  LatentAttention layer(config, rng);
  auto params = layer.state_dict();
  CHECK(params.at("latents").shape() == Shape{3, 8});
  CHECK(params.at("qkv.weight").shape() == Shape{24, 8});
  CHECK(params.at("proj.weight").shape() == Shape{8, 8});
  Rng r2(0);
  CHECK_THROWS_AS(layer.forward(randn({1, 4, 6}, r2)), Error);
  auto state = layer.make_state(2);
  CHECK_THROWS_AS(layer.step(randn({1, 1, 8}, r2), *state), Error);
  config.heads = 3;
  CHECK_THROWS_AS(LatentAttention(config, rng), Error);
}
