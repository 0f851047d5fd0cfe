// tests/test_latent_attention.cpp: the five properties of the latent attention spec, for W = 0 and W > 0.
//
// (1) causal, (2) fast paths = naive formula, (3) shift invariant, (4) step() = forward(),
// (5) gradients = finite differences; for both cores forward() can run (the fused op and the
// chunked path composed from core ops), with chunk lengths that do and do not divide T.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <omp.h>

#include <cmath>
#include <functional>

#include "core/cpu.h"
#include "nn/latent_attention.h"
#include "tests/gradcheck.h"

using namespace lg;
using lg::testing::max_abs_diff;
using lg::nn::BlockConfig;
using lg::nn::LatentAttention;

namespace {

BlockConfig latent_config(int64_t dim, int64_t heads, int64_t latents, int64_t window, int64_t chunk) {
  BlockConfig c;
  c.attention = "latent";
  c.dim = dim;
  c.heads = heads;
  c.latents = latents;
  c.window = window;
  c.chunk = chunk;
  c.layers = 2;
  return c;
}

BlockConfig small_config(int64_t window, int64_t chunk) { return latent_config(8, 2, 3, window, chunk); }

// Latents at std 1 (the layer's scale), the rest at 0.4: see lg::testing::randomize_parameters.
void randomize(nn::Module& module, uint64_t seed) {
  lg::testing::randomize_parameters(module, seed, 0.4f, {{"latents", 1.0f}});
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

using Core = LatentAttention::Core;
const Core kCores[] = {Core::Fused, Core::Chunked};
std::string core_name(Core core) { return core == Core::Fused ? "fused" : "chunked"; }

// Two analytic gradients of the same tensors, each a list of flat values: they agree to rounding,
// 1e-4 of the largest reference value (or absolutely, below 1).
void check_gradients_agree(const std::vector<std::vector<float>>& got, const std::vector<std::vector<float>>& ref) {
  REQUIRE(got.size() == ref.size());
  for (size_t k = 0; k < ref.size(); ++k) {
    CAPTURE(k);
    float worst = 0, largest = 0;
    for (size_t j = 0; j < ref[k].size(); ++j) {
      worst = std::max(worst, std::abs(got[k][j] - ref[k][j]));
      largest = std::max(largest, std::abs(ref[k][j]));
    }
    CHECK(worst <= 1e-4f * std::max(1.0f, largest));
  }
}

}  // namespace

TEST_CASE("latent attention (1): causal, outputs up to t ignore inputs after t") {
  for (Core core : kCores)
    for (const Case& c : kCases) {
      CAPTURE(core_name(core));
      CAPTURE(name(c));
      Rng rng(1);
      LatentAttention layer(small_config(c.window, c.chunk), rng);
      layer.core = core;
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
        CHECK(max_abs_diff(slice(y, 1, t + 1, kT), slice(y2, 1, t + 1, kT)) >
              1e-3f);  // the future does matter
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
      Tensor naive = layer.forward_naive(x, p0);
      for (Core core : kCores) {
        CAPTURE(core_name(core));
        layer.core = core;
        CHECK(max_abs_diff(layer.forward(x, p0), naive) < 2e-5f);
      }
      // and the cores themselves, before the output projection
      nn::LatentInputs in = layer.project(x, p0);
      Tensor reference = nn::latent_attention_naive(in, c.window);
      CHECK(max_abs_diff(nn::latent_attention_chunked(in, c.window, c.chunk), reference) < 2e-5f);
      CHECK(max_abs_diff(nn::latent_attention_fused(in, c.window), reference) < 2e-5f);
    }
  }
}

TEST_CASE("latent attention (2b): large write scores stay finite and exact") {
  // Latents scaled up by `boost`: write scores of tens (8) to hundreds (100). The chunked
  // path's stabiliser is one max per chunk: its forward holds while scores within a chunk
  // spread by less than ~80 (boost 8 here), its backward, which divides by Zc^2, while they
  // spread by less than ~40 (boost 3). The fused op keeps a max per position: any spread.
  for (float boost : {3.0f, 8.0f, 100.0f})
    for (const Case& c : {Case{0, 4}, Case{3, 5}}) {
      CAPTURE(boost);
      CAPTURE(name(c));
      Rng rng(5);
      LatentAttention layer(small_config(c.window, c.chunk), rng);
      randomize(layer, 6);
      for (auto& [n, p] : layer.named_parameters())
        if (n == "latents")
          for (int64_t i = 0; i < p.numel(); ++i) p.data()[i] *= boost;
      Tensor x = lg::testing::random_leaf({1, kT, 8}, 7, 2.0f);
      Tensor naive = layer.forward_naive(x);
      for (Core core : kCores) {
        CAPTURE(core_name(core));
        const bool chunked = core == Core::Chunked;
        if (chunked && boost > 8.0f) continue;
        layer.core = core;
        layer.zero_grad();
        x.zero_grad();
        Tensor y = layer.forward(x);
        CHECK(max_abs_diff(y, naive) < 1e-4f);
        if (chunked && boost > 3.0f) continue;
        sum(y).backward();
        bool finite = true;
        for (auto& [n, p] : layer.named_parameters())
          for (float v : p.grad().to_vector()) finite = finite && std::isfinite(v);
        for (float v : x.grad().to_vector()) finite = finite && std::isfinite(v);
        CHECK(finite);
      }
    }
}

TEST_CASE("latent attention (3): shift invariant, positions p0.. give the outputs of 0..") {
  for (Core core : kCores)
    for (const Case& c : kCases) {
      CAPTURE(core_name(core));
      CAPTURE(name(c));
      Rng rng(7);
      LatentAttention layer(small_config(c.window, c.chunk), rng);
      layer.core = core;
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
  for (Core core : kCores)
    for (const Case& c : kCases) {
      CAPTURE(core_name(core));
      CAPTURE(name(c));
      Rng rng(9);
      LatentAttention layer(small_config(c.window, c.chunk), rng);
      layer.core = core;
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
  for (Core core : kCores)
    for (const Case& c : grad_cases) {
      if (core == Core::Fused && c.chunk != 3) continue;  // the fused op has no chunks
      CAPTURE(core_name(core));
      CAPTURE(name(c));
      Rng rng(13);
      LatentAttention layer(small_config(c.window, c.chunk), rng);
      layer.core = core;
      randomize(layer, 14);
      Tensor x = lg::testing::random_leaf({2, 7, 8}, 15);  // (B, T, D), tiny: T = 7
      std::vector<Tensor> wrt = {x};
      for (auto& [n, p] : layer.named_parameters()) wrt.push_back(p);
      CHECK(wrt.size() == 6);  // x, qkv.weight, qkv.bias, latents, proj.weight, proj.bias
      lg::testing::check_gradients([&] { return layer.forward(x, 3); }, wrt);
    }
}

TEST_CASE(
    "latent attention (5b): the fused op's hand-written backward equals autograd through the chunked path") {
  // Finite differences check to ~1e-3; the two analytic gradients agree to rounding. Longer
  // sequence than (5) so the fused op's backward scan crosses many positions.
  for (const Case& c : {Case{0, 4}, Case{3, 5}, Case{20, 16}}) {
    CAPTURE(name(c));
    Rng rng(17);
    LatentAttention layer(small_config(c.window, c.chunk), rng);
    randomize(layer, 18);
    Tensor x = lg::testing::random_leaf({2, 29, 8}, 19);
    Rng wrng(20);
    Tensor weights = randn({2, 29, 8}, wrng);
    std::vector<std::vector<float>> grads[2];
    for (int i = 0; i < 2; ++i) {
      layer.core = kCores[i];
      layer.zero_grad();
      x.zero_grad();
      sum(mul(layer.forward(x, 2), weights)).backward();
      grads[i].push_back(x.grad().to_vector());
      for (auto& [n, p] : layer.named_parameters()) grads[i].push_back(p.grad().to_vector());
    }
    check_gradients_agree(grads[0], grads[1]);
  }
}

// Random inputs of `shape` (B, H, T, d) with `latents` latents per head at `latent_scale`.
static nn::LatentInputs random_latent_inputs(const Shape& shape, int64_t latents, uint64_t seed,
                                             float latent_scale = 1.0f) {
  nn::LatentInputs in;
  in.queries = lg::testing::random_leaf(shape, seed, 0.5f);
  in.keys = lg::testing::random_leaf(shape, seed + 1, 0.5f);
  in.rotated_keys = lg::testing::random_leaf(shape, seed + 2, 0.5f);
  in.values = lg::testing::random_leaf(shape, seed + 3);
  in.latents = lg::testing::random_leaf({shape[1], latents, shape[3]}, seed + 4, latent_scale);
  return in;
}

// outs[i] = run(i) for i = 0, 1, and every input's gradient of sum(outs[i] * weights).
static void run_both(const nn::LatentInputs& in, const Tensor& weights, const std::function<Tensor(int)>& run,
                     Tensor outs[2], std::vector<std::vector<float>> grads[2]) {
  std::vector<Tensor> leaves{in.queries, in.keys, in.rotated_keys, in.values, in.latents};
  for (int i = 0; i < 2; ++i) {
    for (Tensor& t : leaves) t.zero_grad();
    outs[i] = run(i);
    sum(mul(outs[i], weights)).backward();
    for (Tensor& t : leaves) grads[i].push_back(t.grad().to_vector());
  }
}

// Random inputs of `shape` (B, H, T, d) with `latents` latents per head; outputs and every
// input gradient of the fused op against the chunked path (chunk `chunk`) on sum(out * R).
static void check_fused_equals_chunked(const Shape& shape, int64_t latents, int64_t window, int64_t chunk,
                                       uint64_t seed) {
  nn::LatentInputs in = random_latent_inputs(shape, latents, seed);
  Rng wrng(seed + 5);
  Tensor weights = randn(shape, wrng);
  std::vector<std::vector<float>> grads[2];
  Tensor outs[2];
  run_both(in, weights, [&](int i) {
    return i == 0 ? nn::latent_attention_fused(in, window) : nn::latent_attention_chunked(in, window, chunk);
  }, outs, grads);
  CHECK(max_abs_diff(outs[0], outs[1]) < 2e-5f);
  {
    NoGradGuard no_grad;  // the forward without saving gives the same outputs
    CHECK(max_abs_diff(nn::latent_attention_fused(in, window), outs[0]) == 0.0f);
  }
  check_gradients_agree(grads[0], grads[1]);
}

TEST_CASE("latent attention (5c): the fused op at head sizes 32 and 64 (its unrolled kernels) equals the chunked path") {
  for (int64_t d : {32, 64}) {
    for (int64_t window : {0, 5}) {
      CAPTURE(d);
      CAPTURE(window);
      check_fused_equals_chunked({2, 2, 21, d}, 3, window, 4, 30);
    }
  }
}

TEST_CASE("latent attention (5d): the fused op's backward over a long sequence equals the chunked path") {
  // The fused backward replays the forward's running sums over all T = 100 positions before it
  // goes back. Head sizes 8 (the generic kernel) and 32 (an unrolled one).
  for (int64_t d : {8, 32}) {
    for (int64_t window : {0, 5, 20}) {  // 20: window scores eight at a time, then a tail
      CAPTURE(d);
      CAPTURE(window);
      // 19 latents: a block of 16 scores and a tail
      check_fused_equals_chunked({2, 2, 100, d}, 19, window, 7, 40);
    }
  }
}

// Whether the fused op's AVX-512 kernels run where they fit: in a native build, when it was
// built for AVX-512 (as this file was); in a portable one, when it chose them (core/cpu.h).
static bool avx512_scan_runs() {
#if defined(__AVX512F__)
  return true;
#else
  return lg::kPortableBuild && lg::run_avx512_kernels();
#endif
}

// Outputs and every input gradient of the fused op on sum(out * R), with its AVX-512 kernels
// allowed or not; the scale of the latents sets the spread of the write scores.
static void fused_with_and_without_avx512(const Shape& shape, int64_t window, float latent_scale, uint64_t seed,
                                          Tensor outs[2], std::vector<std::vector<float>> grads[2]) {
  nn::LatentInputs in = random_latent_inputs(shape, 16, seed, latent_scale);
  Rng wrng(seed + 5);
  Tensor weights = randn(shape, wrng);
  const bool was = nn::latent_attention_fused_avx512(true);
  run_both(in, weights, [&](int i) {
    nn::latent_attention_fused_avx512(i == 0);
    return nn::latent_attention_fused(in, window);
  }, outs, grads);
  nn::latent_attention_fused_avx512(was);
}

TEST_CASE("latent attention (5f): the fused op's AVX-512 kernels (16 latents, d = 32 and 64) equal its generic kernels") {
  // Windows 0, 5 and 16 (the kernels' limit), sequences shorter and longer than the window, and
  // latents at scale 1 (write scores within a few units) and 40 (spreads of hundreds: the running
  // max moves by more than exp's range, and the replayed sums must still match).
  for (int64_t d : {32, 64})
  for (int64_t window : {0, 5, 16})
    for (int64_t T : {9, 70})
      for (float latent_scale : {1.0f, 40.0f}) {
        CAPTURE(d);
        CAPTURE(window);
        CAPTURE(T);
        CAPTURE(latent_scale);
        Tensor outs[2];
        std::vector<std::vector<float>> grads[2];
        fused_with_and_without_avx512({2, 2, T, d}, window, latent_scale, 60, outs, grads);
        CHECK(max_abs_diff(outs[0], outs[1]) < 2e-5f);
        check_gradients_agree(grads[0], grads[1]);
        bool finite = true;
        for (const auto& g : grads[0])
          for (float v : g) finite = finite && std::isfinite(v);
        CHECK(finite);
        // Where the first run took the AVX-512 kernels (a native build for AVX-512, or a portable
        // build that chose them), they sum in another order.
        if (avx512_scan_runs()) {
          bool any_bit_differs = max_abs_diff(outs[0], outs[1]) > 0.0f;
          for (size_t k = 0; k < grads[0].size(); ++k)
            any_bit_differs = any_bit_differs || grads[0][k] != grads[1][k];
          CHECK(any_bit_differs);
        }
      }
  // The forward runs heads in pairs where there are at least two per thread: 3 heads on one
  // thread are a pair and a single, on two threads three singles. The same values either way.
  {
    Tensor packed = lg::testing::random_leaf({4, 1, 3, 50, 32}, 75, 0.5f);
    Tensor latents = lg::testing::random_leaf({3, 16, 32}, 76);
    const int before = omp_get_max_threads();
    Tensor outs[2];
    for (int i = 0; i < 2; ++i) {
      omp_set_num_threads(i + 1);
      outs[i] = nn::latent_attention_fused(packed, latents, 16);
    }
    omp_set_num_threads(before);
    CHECK(max_abs_diff(outs[0], outs[1]) == 0.0f);
  }
  // Against the chunked path too, and finite differences on a short sequence.
  for (int64_t d : {32, 64}) {
    CAPTURE(d);
    check_fused_equals_chunked({2, 2, 40, d}, 16, 16, 8, 70);
    nn::LatentInputs in = random_latent_inputs({1, 1, 6, d}, 16, 80);
    lg::testing::check_gradients([&] { return nn::latent_attention_fused(in, 4); },
                                 {in.queries, in.keys, in.rotated_keys, in.values, in.latents});
  }
}

TEST_CASE("latent attention (5g): a layer of the AVX-512 kernels' sizes is causal, equals naive and step()") {
  // dim 64 in 2 heads: d = 32, 16 latents, windows 0 and 16: what the fused op's AVX-512
  // kernels take (on a CPU without them, the generic ones: the properties hold either way).
  for (int64_t window : {0, 16}) {
    CAPTURE(window);
    Rng rng(90);
    LatentAttention layer(latent_config(64, 2, 16, window, 32), rng);
    randomize(layer, 91);
    NoGradGuard no_grad;
    const int64_t T = 40;
    Tensor x = randn({2, T, 64}, rng);
    Tensor y = layer.forward(x);
    // Outputs reach ~30 here: float rounding is relative to that.
    const float tolerance = 3e-6f * std::max(1.0f, max_abs_diff(y, Tensor::zeros(y.shape())));
    CHECK(max_abs_diff(y, layer.forward_naive(x)) < tolerance);
    Tensor x2 = contiguous_copy(x);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t s = 21; s < T; ++s)
        for (int64_t i = 0; i < 64; ++i) x2.data()[(b * T + s) * 64 + i] = -x2.data()[(b * T + s) * 64 + i];
    Tensor y2 = layer.forward(x2);
    CHECK(max_abs_diff(slice(y, 1, 0, 21), slice(y2, 1, 0, 21)) == 0.0f);  // per position: exactly
    CHECK(max_abs_diff(slice(y, 1, 21, T), slice(y2, 1, 21, T)) > 1e-3f);
    auto state = layer.make_state(2);
    for (int64_t t = 0; t < T; ++t) {
      CAPTURE(t);
      CHECK(max_abs_diff(layer.step(contiguous_copy(slice(x, 1, t, t + 1)), *state), slice(y, 1, t, t + 1)) <
            tolerance);
    }
  }
}

TEST_CASE("latent attention (5e): the fused op on packed inputs, heads merged, equals it on the four apart, gradients too") {
  // The layer hands the fused op its projection packed (4, B, H, T, d); the op writes the four
  // gradients into one buffer. The same kernels run on the same rows: equal to the last bit.
  // 16 latents at d = 32: the AVX-512 kernels, where built.
  struct Sizes {
    int64_t d, window, latents;
  };
  for (auto [d, window, M] : {Sizes{8, 0, 3}, Sizes{8, 5, 3}, Sizes{32, 5, 3}, Sizes{6, 3, 3}, Sizes{32, 16, 16}}) {
    CAPTURE(d);
    CAPTURE(window);
    CAPTURE(M);
    Tensor packed = lg::testing::random_leaf({4, 2, 2, 37, d}, 50, 0.5f);
    Tensor latents = lg::testing::random_leaf({2, M, d}, 51);
    Rng wrng(52);
    Tensor weights = randn({2, 37, 2 * d}, wrng);
    Tensor out = nn::latent_attention_fused(packed, latents, window);  // heads merged: (B, T, H d)
    CHECK(out.shape() == Shape{2, 37, 2 * d});
    sum(mul(out, weights)).backward();
    Tensor packed_grad = packed.grad(), latents_grad = latents.grad();
    packed.zero_grad();
    latents.zero_grad();
    nn::LatentInputs in{select(packed, 0, 0), select(packed, 0, 1), select(packed, 0, 2), select(packed, 0, 3),
                        latents};
    Tensor apart = reshape(permute(nn::latent_attention_fused(in, window), {0, 2, 1, 3}), {2, 37, 2 * d});
    sum(mul(apart, weights)).backward();
    CHECK(max_abs_diff(out, apart) == 0.0f);
    CHECK(max_abs_diff(packed_grad, packed.grad()) == 0.0f);
    CHECK(max_abs_diff(latents_grad, latents.grad()) == 0.0f);
  }
  Tensor packed = lg::testing::random_leaf({4, 1, 2, 6, 4}, 53, 0.5f);
  Tensor latents = lg::testing::random_leaf({2, 3, 4}, 54);
  lg::testing::check_gradients([&] { return nn::latent_attention_fused(packed, latents, 2); }, {packed, latents});
  CHECK_THROWS_WITH_AS(nn::latent_attention_fused(Tensor::zeros({3, 1, 2, 6, 4}), latents, 2),
                       doctest::Contains("(4, B, H, T, d)"), Error);
}

TEST_CASE("latent attention: parameters, init and errors") {
  Rng rng(16);
  BlockConfig config = small_config(2, 4);
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
