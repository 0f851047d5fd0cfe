// tests/test_mla.cpp: DeepSeek-V2 MLA: gradients, causality, shift, absorbed step() = forward(), cache size.
#include <doctest/doctest.h>

#include <cmath>

#include "nn/mla.h"
#include "tests/gradcheck.h"

using namespace lg;
using lg::testing::max_abs_diff;
using lg::nn::BlockConfig;
using lg::nn::MLA;

namespace {

BlockConfig mla_config(int64_t q_rank) {
  BlockConfig c;
  c.attention = "mla";
  c.dim = 8;
  c.heads = 2;  // d = 4, so d_R = 2 and d_c = 4 by default
  c.q_rank = q_rank;
  c.layers = 2;
  return c;
}

void randomize(nn::Module& module, uint64_t seed) { lg::testing::randomize_parameters(module, seed, 0.5f); }

}  // namespace

TEST_CASE("mla: defaults and parameter names") {
  Rng rng(1);
  MLA plain(mla_config(0), rng);
  CHECK(plain.kv_rank() == 4);
  CHECK(plain.rope_dim() == 2);
  auto p = plain.state_dict();
  CHECK(p.at("q.weight").shape() == Shape{8, 8});
  CHECK(p.at("q_rope.weight").shape() == Shape{4, 8});
  CHECK(p.at("kv_down.weight").shape() == Shape{4, 8});
  CHECK(p.at("k_up.weight").shape() == Shape{8, 4});
  CHECK(p.at("v_up.weight").shape() == Shape{8, 4});
  CHECK(p.at("k_rope.weight").shape() == Shape{2, 8});
  CHECK(p.count("k_up.bias") == 0);
  MLA compressed(mla_config(6), rng);
  auto pc = compressed.state_dict();
  CHECK(pc.at("q_down.weight").shape() == Shape{6, 8});
  CHECK(pc.at("q_up.weight").shape() == Shape{8, 6});
  CHECK(pc.at("q_rope.weight").shape() == Shape{4, 6});
  CHECK(pc.count("q.weight") == 0);
  BlockConfig odd = mla_config(0);
  odd.rope_dim = 3;
  CHECK_THROWS_AS(MLA(odd, rng), Error);
}

TEST_CASE("mla: gradients match finite differences for the input and every parameter") {
  for (int64_t q_rank : {0, 6}) {
    CAPTURE(q_rank);
    Rng rng(2);
    MLA layer(mla_config(q_rank), rng);
    randomize(layer, 3);
    Tensor x = lg::testing::random_leaf({2, 5, 8}, 4);  // (B, T, D)
    std::vector<Tensor> wrt = {x};
    for (auto& [n, p] : layer.named_parameters()) wrt.push_back(p);
    lg::testing::check_gradients([&] { return layer.forward(x, 2); }, wrt);
  }
}

TEST_CASE("mla: causal, and shift invariant") {
  for (int64_t q_rank : {0, 6}) {
    CAPTURE(q_rank);
    Rng rng(5);
    MLA layer(mla_config(q_rank), rng);
    randomize(layer, 6);
    NoGradGuard no_grad;
    const int64_t T = 9;
    Tensor x = randn({2, T, 8}, rng);
    Tensor y = layer.forward(x);
    for (int64_t t : {0, 4, 7}) {
      Tensor x2 = contiguous_copy(x);
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t s = t + 1; s < T; ++s)
          for (int64_t i = 0; i < 8; ++i) x2.data()[(b * T + s) * 8 + i] += 1.0f + 0.1f * i;
      Tensor y2 = layer.forward(x2);
      CHECK(max_abs_diff(slice(y, 1, 0, t + 1), slice(y2, 1, 0, t + 1)) < 1e-6f);
      CHECK(max_abs_diff(slice(y, 1, t + 1, T), slice(y2, 1, t + 1, T)) > 1e-3f);
    }
    CHECK(max_abs_diff(layer.forward(x, 250), y) < 5e-5f);
  }
}

TEST_CASE("mla: step() with absorbed weights equals forward(), with and without query compression") {
  for (int64_t q_rank : {0, 6}) {
    CAPTURE(q_rank);
    Rng rng(7);
    MLA layer(mla_config(q_rank), rng);
    randomize(layer, 8);
    NoGradGuard no_grad;
    const int64_t B = 2, T = 11;
    Tensor x = randn({B, T, 8}, rng);
    Tensor y = layer.forward(x);
    auto state = layer.make_state(B);
    for (int64_t t = 0; t < T; ++t) {
      CAPTURE(t);
      Tensor yt = layer.step(contiguous_copy(slice(x, 1, t, t + 1)), *state);
      CHECK(max_abs_diff(yt, slice(y, 1, t, t + 1)) < 2e-5f);
    }
  }
}

TEST_CASE("mla: the cache holds exactly d_c + d_R floats per token") {
  BlockConfig config = mla_config(0);
  config.kv_rank = 3;
  config.rope_dim = 4;
  Rng rng(9);
  MLA layer(config, rng);
  NoGradGuard no_grad;
  auto base = layer.make_state(2);
  auto* state = dynamic_cast<nn::MLAState*>(base.get());
  REQUIRE(state);
  CHECK(state->floats_per_token() == 3 + 4);
  Tensor x = randn({2, 1, 8}, rng);
  for (int64_t t = 1; t <= 6; ++t) {
    layer.step(x, *state);
    CHECK(state->cached_floats() == 2 * t * (3 + 4));
  }
  CHECK(state->latents[0].size() == 6 * 3);
  CHECK(state->rope_keys[1].size() == 6 * 4);
}
