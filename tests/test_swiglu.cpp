// tests/test_swiglu.cpp: the SwiGLU feed-forward: gradients, values, width and init, and as a block's part.
#include <doctest/doctest.h>

#include <cmath>

#include "nn/kinds.h"
#include "nn/swiglu.h"
#include "nn/transformer_block.h"
#include "tests/gradcheck.h"

using namespace lg;
using lg::testing::check_gradients;
using lg::testing::max_abs_diff;
using lg::testing::random_leaf;

namespace {

nn::BlockConfig small_config(int64_t dim) {
  nn::BlockConfig cfg;
  cfg.ffn = "swiglu";
  cfg.dim = dim;
  cfg.heads = 2;
  cfg.layers = 2;
  return cfg;
}

}  // namespace

TEST_CASE("grad: SwiGLU over input and every parameter") {
  Rng rng(1);
  nn::SwiGLU ffn(small_config(6), rng);
  lg::testing::randomize_parameters(ffn, 2, 0.5f);  // 0.02 would leave gradients inside the tolerance
  Tensor x = random_leaf({2, 3, 6}, 3);             // (B, T, D)
  std::vector<Tensor> wrt{x};
  for (const Tensor& p : ffn.parameters()) wrt.push_back(p);
  check_gradients([&] { return ffn.forward(x); }, wrt);
}

TEST_CASE("SwiGLU computes W2(silu(W1 x) * W3 x)") {
  Rng rng(4);
  nn::SwiGLU ffn(small_config(6), rng);
  lg::testing::randomize_parameters(ffn, 5, 0.5f);
  Tensor x = random_leaf({1, 6}, 6);
  const int64_t D = 6, H = nn::SwiGLU::hidden_width(D);
  // By hand, one row: a = W1 x + b1, g = W3 x + b3, h = a sigmoid(a) g, y = W2 h + b2.
  auto row = [&](const nn::Linear& l, const std::vector<float>& in, int64_t i) {
    double v = l.bias.data()[i];
    for (size_t j = 0; j < in.size(); ++j)
      v += l.weight.data()[i * static_cast<int64_t>(in.size()) + j] * in[j];
    return v;
  };
  std::vector<float> in = x.to_vector(), hidden(static_cast<size_t>(H));
  for (int64_t i = 0; i < H; ++i) {
    const double a = row(*ffn.w1, in, i), g = row(*ffn.w3, in, i);
    hidden[i] = static_cast<float>(a / (1 + std::exp(-a)) * g);
  }
  std::vector<float> y = ffn.forward(x).to_vector();
  for (int64_t i = 0; i < D; ++i) CHECK(y[i] == doctest::Approx(row(*ffn.w2, hidden, i)).epsilon(1e-4));
}

TEST_CASE("SwiGLU: width 8D/3 rounded up to a multiple of 8, names, and the residual init on W2") {
  CHECK(nn::SwiGLU::hidden_width(128) == 344);
  CHECK(nn::SwiGLU::hidden_width(384) == 1024);
  CHECK(nn::SwiGLU::hidden_width(16) == 48);
  CHECK(nn::SwiGLU::hidden_width(6) == 16);

  nn::BlockConfig cfg = small_config(96);
  cfg.layers = 8;
  Rng rng(7);
  nn::SwiGLU ffn(cfg, rng);
  const int64_t H = nn::SwiGLU::hidden_width(96);
  auto names = ffn.named_parameters();
  REQUIRE(names.size() == 6);
  CHECK(names[0].first == "w1.weight");
  CHECK(names[2].first == "w3.weight");
  CHECK(names[4].first == "w2.weight");
  CHECK(ffn.w1->weight.shape() == Shape{H, 96});
  CHECK(ffn.w2->weight.shape() == Shape{96, H});
  CHECK(ffn.parameter_count() == 3 * 96 * H + 2 * H + 96);
  auto std_of = [](const Tensor& t) {
    double s = 0;
    for (float v : t.to_vector()) s += static_cast<double>(v) * v;
    return std::sqrt(s / static_cast<double>(t.numel()));
  };
  CHECK(std_of(ffn.w1->weight) == doctest::Approx(0.02).epsilon(0.03));
  CHECK(std_of(ffn.w3->weight) == doctest::Approx(0.02).epsilon(0.03));
  CHECK(std_of(ffn.w2->weight) == doctest::Approx(0.02 / std::sqrt(16.0)).epsilon(0.03));
}

TEST_CASE("a block of every registered ffn and norm kind: gradients, and step() equals forward()") {
  // Every kind in the tables of nn/kinds.cpp, so a kind added there is checked here too.
  for (const auto& ffn_kind : nn::feed_forward_kinds().kinds())
    for (const auto& norm_kind : nn::norm_kinds().kinds()) {
      const std::string &ffn = ffn_kind.name, &norm = norm_kind.name;
      CAPTURE(ffn);
      CAPTURE(norm);
      nn::BlockConfig cfg = small_config(8);
      cfg.attention = "mha";
      cfg.ffn = ffn;
      cfg.norm = norm;
      Rng rng(8);
      nn::TransformerBlock block(cfg, rng);
      lg::testing::randomize_parameters(block, 9, 0.4f);
      Tensor x = random_leaf({2, 3, 8}, 10);
      std::vector<Tensor> wrt{x};
      for (const Tensor& p : block.parameters()) wrt.push_back(p);
      check_gradients(
          [&] {
            Rng dropout_rng(1);
            return block.forward(x, 0, dropout_rng);
          },
          wrt);

      block.eval();
      Rng unused(0);
      Tensor parallel = block.forward(x, 0, unused);
      auto state = block.attn->make_state(2);
      for (int64_t t = 0; t < 3; ++t)
        CHECK(max_abs_diff(block.step(slice(x, 1, t, t + 1), *state), slice(parallel, 1, t, t + 1)) < 1e-5f);
    }
}
