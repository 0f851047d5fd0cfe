// tests/test_nn.cpp: layer and nn/ fused op gradient checks, RoPE, the KV cache, Module, safetensors.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "core/cpu.h"
#include "core/gemm_bf16.h"
#include "core/ops.h"
#include "core/precision.h"
#include "nn/causal_attention_kernels.h"
#include "nn/dropout.h"
#include "nn/embedding.h"
#include "nn/fused_ops.h"
#include "nn/latent_attention.h"
#include "nn/layer_norm.h"
#include "nn/linear.h"
#include "nn/mha.h"
#include "nn/mlp.h"
#include "nn/rmsnorm.h"
#include "nn/rope.h"
#include "nn/safetensors.h"
#include "nn/swiglu.h"
#include "nn/transformer_block.h"
#include "tests/gradcheck.h"

using namespace lg;
using lg::testing::check_gradients;
using lg::testing::random_leaf;
using lg::testing::max_abs_diff;

static void randomize(const nn::Module& module, uint64_t seed, float std = 0.5f) {
  lg::testing::randomize_parameters(module, seed, std);
}

static std::vector<Tensor> with_parameters(std::vector<Tensor> inputs, const nn::Module& module) {
  for (const Tensor& p : module.parameters()) inputs.push_back(p);
  return inputs;
}

static nn::BlockConfig mha_config(int64_t dim, int64_t heads) {
  nn::BlockConfig cfg;
  cfg.attention = "mha";
  cfg.dim = dim;
  cfg.heads = heads;
  cfg.layers = 2;
  return cfg;
}

// Runs f and checks that it throws an lg::Error whose message contains `expected`.
static void check_error(const std::function<void()>& f, const std::string& expected) {
  std::string message = "(no lg::Error thrown)";
  try {
    f();
  } catch (const Error& e) {
    message = e.what();
  }
  CHECK_MESSAGE(message.find(expected) != std::string::npos,
                "expected an error containing '" << expected << "', got: " << message);
}

// ============================================================================
// Gradient checks: every layer, over its inputs and every parameter
// ============================================================================

TEST_CASE("grad: Linear with and without bias") {
  Rng rng(1);
  nn::Linear with_bias(4, 5, true, rng), without_bias(4, 3, false, rng);
  randomize(with_bias, 2);
  randomize(without_bias, 3);
  Tensor x = random_leaf({2, 3, 4}, 4);
  check_gradients([&] { return with_bias.forward(x); }, with_parameters({x}, with_bias));
  check_gradients([&] { return without_bias.forward(x); }, with_parameters({x}, without_bias));
}

TEST_CASE("grad: Embedding with repeated ids") {
  Rng rng(5);
  nn::Embedding emb(6, 4, rng);
  randomize(emb, 6);
  std::vector<int32_t> ids = {0, 3, 3, 5, 1, 3};
  check_gradients([&] { return emb.forward(ids, {2, 3}); }, emb.parameters());
  CHECK(emb.forward(ids, {2, 3}).shape() == Shape{2, 3, 4});
  check_error([&] { emb.forward({6}, {1}); }, "out of range");
}

TEST_CASE("grad: LayerNorm over input, gain and bias") {
  nn::LayerNorm ln(6);
  randomize(ln, 7);
  Tensor x = random_leaf({2, 3, 6}, 9);
  check_gradients([&] { return ln.forward(x); }, with_parameters({x}, ln));
}

TEST_CASE("grad: RMSNorm over input and gain") {
  nn::RMSNorm rms(6);
  randomize(rms, 8);  // gain 1 everywhere would hide a gain gradient mixed up across features
  Tensor x = random_leaf({2, 3, 6}, 9);  // (B, T, D)
  check_gradients([&] { return rms.forward(x); }, with_parameters({x}, rms));
}

TEST_CASE("grad: MLP") {
  Rng rng(10);
  nn::MLP mlp(4, 2, true, rng);
  randomize(mlp, 11);
  Tensor x = random_leaf({2, 3, 4}, 12);
  check_gradients([&] { return mlp.forward(x); }, with_parameters({x}, mlp));
}

TEST_CASE("grad: Dropout with a fixed seed") {
  nn::Dropout drop(0.3f);
  Tensor x = random_leaf({4, 6}, 13);
  check_gradients(
      [&] {
        Rng rng(77);
        return drop.forward(x, rng);
      },
      {x});
}

TEST_CASE("grad: rope op, contiguous and transposed inputs") {
  Tensor x = random_leaf({2, 2, 5, 6}, 14);
  check_gradients([&] { return nn::rope(x, 3); }, {x});
  Tensor y = random_leaf({6, 5}, 15);
  check_gradients([&] { return nn::rope(transpose(y, 0, 1), 0, 100.0f); }, {y});
}

TEST_CASE("split_heads_rope equals split, permute and rope; its gradient") {
  const int64_t B = 2, T = 5, H = 2, d = 4, D = H * d;
  Tensor x = random_leaf({B, T, 3 * D}, 19);
  const std::vector<nn::HeadPart> parts = {{0, true}, {1, false}, {1, true}, {2, false}};
  std::vector<Tensor> got = nn::unstack(nn::split_heads_rope(x, H, parts, 3));
  REQUIRE(got.size() == 4);
  for (size_t p = 0; p < parts.size(); ++p) {
    CAPTURE(p);
    Tensor group = slice(x, 2, parts[p].group * D, (parts[p].group + 1) * D);
    Tensor heads = permute(reshape(contiguous(group), {B, T, H, d}), {0, 2, 1, 3});  // (B, H, T, d)
    Tensor want = parts[p].rotate ? nn::rope(heads, 3) : heads;
    CHECK(got[p].shape() == Shape{B, H, T, d});
    CHECK(got[p].is_contiguous());
    CHECK(max_abs_diff(got[p], want) < 1e-6f);
  }
  // Gradients through every part, a group used twice (1), one not used at all (1 of 0..2 in
  // the second case), and a transposed (non-contiguous) input.
  check_gradients([&] { return nn::split_heads_rope(x, H, parts, 3); }, {x});
  check_gradients([&] { return nn::split_heads_rope(x, H, {{2, true}, {0, false}}, 0, 100.0f); }, {x});
  Tensor y = random_leaf({B, 2 * D, T}, 20);
  check_gradients([&] { return nn::split_heads_rope(transpose(y, 1, 2), 4, {{1, true}, {0, true}}, 7); }, {y});
  CHECK_THROWS_WITH_AS(nn::split_heads_rope(x, 5, parts, 0), doctest::Contains("does not hold"), Error);
}

TEST_CASE("grad: CausalSelfAttention over input and every parameter") {
  Rng rng(16);
  nn::CausalSelfAttention attn(mha_config(8, 2), rng);
  randomize(attn, 17);
  Tensor x = random_leaf({2, 4, 8}, 18);
  check_gradients([&] { return attn.forward(x, 2); }, with_parameters({x}, attn));
}

TEST_CASE("grad: causal_attention_fused on strided q, k, v (head views of one qkv tensor)") {
  // Like the layer: q, k, v are (B, H, T, d) views of one (B, T, 3, H, d) tensor, unit stride along d.
  Tensor qkv = random_leaf({2, 5, 3, 2, 4}, 60);
  auto head = [&](int64_t i) { return permute(reshape(slice(qkv, 2, i, i + 1), {2, 5, 2, 4}), {0, 2, 1, 3}); };
  check_gradients([&] { return nn::causal_attention_fused(head(0), head(1), head(2)); }, {qkv});
  Tensor q = random_leaf({1, 3, 7, 4}, 61, 2.0f), k = random_leaf({1, 3, 7, 4}, 62, 2.0f);
  Tensor v = random_leaf({1, 3, 7, 4}, 63);
  check_gradients([&] { return nn::causal_attention_fused(q, k, v); }, {q, k, v});
}

TEST_CASE("causal_attention_fused equals the composed path: values and every gradient") {
  // d = 32 and 64 run the kernels unrolled at compile time, other sizes the generic ones. Up to
  // T = 128 the backward takes the probabilities the forward kept; past it, it recomputes them.
  for (auto [T, d] : {std::pair<int64_t, int64_t>{1, 8}, {3, 8}, {17, 32}, {64, 32}, {33, 64}, {21, 6}, {150, 32},
                      {150, 64}, {131, 8}}) {
    CAPTURE(T);
    CAPTURE(d);
    const Shape shape{2, 3, T, d};
    Tensor q = random_leaf(shape, 70, 3.0f), k = random_leaf(shape, 71, 3.0f);  // peaked rows
    Tensor v = random_leaf(shape, 72), r = random_leaf(shape, 73);
    Tensor fused = nn::causal_attention_fused(q, k, v);
    sum(fused * r).backward();
    std::vector<Tensor> fused_grads{q.grad(), k.grad(), v.grad()};
    for (Tensor* t : {&q, &k, &v}) t->zero_grad();
    Tensor composed = nn::causal_attention_composed(q, k, v);
    sum(composed * r).backward();
    CHECK(max_abs_diff(fused, composed) < 1e-5f);
    CHECK(max_abs_diff(fused_grads[0], q.grad()) < 1e-4f);
    CHECK(max_abs_diff(fused_grads[1], k.grad()) < 1e-4f);
    CHECK(max_abs_diff(fused_grads[2], v.grad()) < 1e-4f);
  }
  check_error([&] { nn::causal_attention_fused(Tensor::zeros({2, 3, 4}), Tensor::zeros({2, 3, 4}),
                                                Tensor::zeros({2, 3, 4})); },
              "(B, H, T, d)");
}

TEST_CASE("causal_attention_fused on packed (3, B, H, T, d) q, k, v, heads merged: the same values and gradients") {
  for (auto [T, d] : {std::pair<int64_t, int64_t>{5, 8}, {64, 32}, {33, 64}, {9, 6}}) {
    CAPTURE(T);
    CAPTURE(d);
    Tensor qkv = random_leaf({3, 2, 3, T, d}, 80, 2.0f), r = random_leaf({2, T, 3 * d}, 81);
    Tensor packed = nn::causal_attention_fused(qkv);  // heads merged: (B, T, H d)
    CHECK(packed.shape() == Shape{2, T, 3 * d});
    sum(packed * r).backward();
    Tensor packed_grad = qkv.grad();
    qkv.zero_grad();
    Tensor split = reshape(
        permute(nn::causal_attention_fused(select(qkv, 0, 0), select(qkv, 0, 1), select(qkv, 0, 2)), {0, 2, 1, 3}),
        {2, T, 3 * d});
    sum(split * r).backward();
    CHECK(max_abs_diff(packed, split) == 0.0f);  // the same kernels on the same rows
    CHECK(max_abs_diff(packed_grad, qkv.grad()) == 0.0f);
  }
  Tensor qkv = random_leaf({3, 1, 2, 6, 4}, 82, 2.0f);
  check_gradients([&] { return nn::causal_attention_fused(qkv); }, {qkv});
  check_error([&] { nn::causal_attention_fused(Tensor::zeros({2, 1, 2, 6, 4})); }, "(3, B, H, T, d)");
}

TEST_CASE("causal_attention_fused: a portable build's AVX-512 and portable kernels agree") {
  // Run once as the build chooses and once forced to the portable kernels. Where the two are
  // different code (a portable build on a CPU with AVX-512), they round differently: FMA or
  // not, exponentials and sums 16, 8 or 1 at a time. Each output is a convex combination of
  // T <= 150 values of size ~1 and each gradient a sum of T such terms, so a few float ulps per
  // term stay far below the tolerances of the fused-against-composed test above, used here.
  // Elsewhere both runs take the same kernels: the same bits. Under bf16 every product gives the
  // same bits in both (vdpbf16ps against the portable loops), but where the fp32 parts (the
  // recomputed exponentials, say) differ by an ulp, a probability or a dS can round to the next
  // bf16 value, 2^-8 away: such terms move by up to 2^-8 of their size, so bf16 gets bf16's
  // tolerances. Most shapes then agree bit for bit, so the check that the AVX-512 kernels ran
  // is fp32's.
  const bool two_kernels = run_avx512_kernels();
  CHECK(std::string(cpu_kernels()) == (kPortableBuild ? (two_kernels ? "avx512" : "generic") : "native"));
  for (Precision precision : {Precision::fp32, Precision::bf16})
  for (auto [T, d] : {std::pair<int64_t, int64_t>{17, 32}, {64, 32}, {150, 32}, {33, 64}, {150, 64}, {21, 6}}) {
    CAPTURE(std::string(precision_name(precision)));
    CAPTURE(T);
    CAPTURE(d);
    const PrecisionGuard guard(precision);
    Tensor qkv = random_leaf({3, 2, 3, T, d}, 85, 2.0f), r = random_leaf({2, T, 3 * d}, 86);
    Tensor outs[2], grads[2];
    const bool was = force_generic_kernels(false);
    for (int generic = 0; generic < 2; ++generic) {
      force_generic_kernels(generic == 1);
      qkv.zero_grad();
      outs[generic] = nn::causal_attention_fused(qkv);
      sum(outs[generic] * r).backward();
      grads[generic] = qkv.grad();
    }
    force_generic_kernels(was);
    const float out_diff = max_abs_diff(outs[0], outs[1]), grad_diff = max_abs_diff(grads[0], grads[1]);
    if (two_kernels) {
      const bool bf16 = precision == Precision::bf16;
      CHECK(out_diff < (bf16 ? 1e-3f : 1e-5f));
      CHECK(grad_diff < (bf16 ? 1e-2f : 1e-4f));
      if (precision == Precision::fp32) CHECK(out_diff + grad_diff > 0.0f);  // the AVX-512 kernels did run
    } else {
      CHECK(out_diff == 0.0f);
      CHECK(grad_diff == 0.0f);
    }
  }
}

// The causal kernels the fused op runs (nn/causal_attention_fused.cpp picks them alike).
static const nn::causal_kernels::Kernels& causal_kernels_in_use() {
  if (kPortableBuild && run_avx512_kernels()) return nn::causal_kernels::isa_avx512::kernels;
  return nn::causal_kernels::LG_ISA::kernels;
}

// x with every element rounded to bf16 (a copy, no graph).
static Tensor rounded_to_bf16(const Tensor& x) {
  Tensor y = contiguous_copy(x.detach());
  for (int64_t i = 0; i < y.numel(); ++i) y.data()[i] = round_to_bf16(y.data()[i]);
  return y;
}

TEST_CASE("causal attention's bf16 scores: the bits of the bf16 GEMM's reference, at every head size") {
  // Under bf16 the kernels' score blocks must give exactly gemm_bf16_reference(q, k^T) times the
  // scale: the AVX512-BF16 blocks at d = 32 and 64 where the CPU has them, the portable loop
  // elsewhere (odd d included: the last pair's odd half is zero). In fp32 they stay within fp32
  // rounding of the exact dot products.
  const auto& kern = causal_kernels_in_use();
  for (auto [T, d] : {std::pair<int64_t, int64_t>{150, 64}, {150, 32}, {33, 64}, {50, 32}, {21, 6}, {17, 7}, {5, 1}}) {
    CAPTURE(T);
    CAPTURE(d);
    Tensor q = random_leaf({T, d}, 90, 3.0f), k = random_leaf({T, d}, 91, 3.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    const int64_t Tp = nn::causal_kernels::padded(T);
    std::vector<float> bf16(T * Tp), fp32(T * Tp), expected(T * T), kt(d * Tp);
    std::vector<uint32_t> words(nn::causal_kernels::bf16_words(T, d));
    using nn::causal_kernels::Arith;
    kern.head_scores({q.data(), d}, {k.data(), d}, T, d, scale, Arith::bf16, kt.data(), words.data(), bf16.data());
    kern.head_scores({q.data(), d}, {k.data(), d}, T, d, scale, Arith::fp32, kt.data(), nullptr, fp32.data());
    gemm_bf16_reference(false, true, T, T, d, q.data(), d, k.data(), d, expected.data(), T, false);
    int64_t same = 0, close = 0, differ_from_fp32 = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t s = 0; s <= t; ++s) {
        same += bf16[t * Tp + s] == expected[t * T + s] * scale;
        double exact = 0, size = 0;
        for (int64_t i = 0; i < d; ++i) {
          exact += double(q.data()[t * d + i]) * k.data()[s * d + i];
          size += std::fabs(double(q.data()[t * d + i]) * k.data()[s * d + i]);
        }
        close += std::fabs(fp32[t * Tp + s] - exact * scale) <= 1e-6 * size * scale * (d + 1);
        differ_from_fp32 += bf16[t * Tp + s] != fp32[t * Tp + s];
      }
    CHECK(same == T * (T + 1) / 2);
    CHECK(close == T * (T + 1) / 2);
    CHECK(differ_from_fp32 > T * (T + 1) / 4);  // bf16 inputs: most scores move
  }
}

TEST_CASE("causal attention kernels under bf16: the AVX512-BF16 blocks give the portable loops' bits") {
  // Forward and backward of one head, once as the fused op runs them (the instruction at d = 32
  // and 64 where the CPU has it) and once by the portable loops: every output bit for bit, with
  // the probabilities kept and recomputed. Where the instruction does not run, both are the
  // portable loops. Either way they differ from fp32 (bf16 ran).
  using nn::causal_kernels::Arith;
  const auto& kern = causal_kernels_in_use();
  for (auto [T, d] : {std::pair<int64_t, int64_t>{150, 64}, {64, 64}, {33, 32}, {150, 32}, {21, 6}, {9, 7}})
    for (bool keep : {false, true}) {
      CAPTURE(T);
      CAPTURE(d);
      CAPTURE(keep);
      const int64_t Tp = nn::causal_kernels::padded(T), rows = nn::causal_kernels::kRows;
      Tensor q = random_leaf({T, d}, 92, 3.0f), k = random_leaf({T, d}, 93, 3.0f);
      Tensor v = random_leaf({T, d}, 94), g = random_leaf({T, d}, 95);
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      std::vector<float> out[3][4];  // per arithmetic: o, dq, dk, dv
      const Arith ariths[3] = {Arith::bf16, Arith::bf16_portable, Arith::fp32};
      for (int a = 0; a < 3; ++a) {
        std::vector<float> o(T * d), lse(T), kt(d * Tp), vt(d * Tp), p(keep ? Tp * Tp : rows * Tp),
            p2(rows * Tp), ds(rows * Tp), dq(T * d), dk(T * d, 0.0f), dv(T * d, 0.0f);
        std::vector<uint32_t> words(nn::causal_kernels::bf16_words(T, d));
        kern.forward_head({q.data(), d}, {k.data(), d}, {v.data(), d}, T, d, scale, ariths[a], o.data(), d,
                          keep ? nullptr : lse.data(), kt.data(), words.data(), p.data(), keep);
        kern.backward_head({q.data(), d}, {k.data(), d}, {v.data(), d}, {g.data(), d}, {o.data(), d},
                           keep ? nullptr : lse.data(), keep ? p.data() : nullptr, T, d, scale, ariths[a], dq.data(),
                           dk.data(), dv.data(), kt.data(), vt.data(), words.data(), p2.data(), ds.data());
        out[a][0] = o, out[a][1] = dq, out[a][2] = dk, out[a][3] = dv;
      }
      for (int i = 0; i < 4; ++i) {
        CAPTURE(i);
        CHECK(std::memcmp(out[0][i].data(), out[1][i].data(), out[0][i].size() * sizeof(float)) == 0);
        CHECK(out[0][i] != out[2][i]);
      }
    }
}

TEST_CASE("causal_attention_fused under bf16: near the composed path on bf16-rounded inputs, and near fp32") {
  // With q, k and v rounded to bf16 beforehand, the composed (fp32) path differs from the fused
  // bf16 one in the rounding of the probabilities for P V (2^-9 of each, relative) and in the
  // order of the sums: each output moves by at most about 2^-9 max|v|; 2^-8 max|v| is asked.
  // The gradients go through bf16 products too (dO v^T, dS K, dS^T Q, P^T dO), so they stay
  // within bf16's reach of fp32's, not closer. Up to T = 128 the backward takes the kept
  // probabilities, past it it recomputes them.
  for (auto [T, d] : {std::pair<int64_t, int64_t>{33, 64}, {64, 32}, {150, 64}, {21, 6}}) {
    CAPTURE(T);
    CAPTURE(d);
    const Shape shape{2, 3, T, d};
    Tensor q = random_leaf(shape, 74, 3.0f), k = random_leaf(shape, 75, 3.0f);
    Tensor v = random_leaf(shape, 76), r = random_leaf(shape, 77);
    Tensor fused, grads[3];
    {
      PrecisionGuard bf16(Precision::bf16);
      fused = nn::causal_attention_fused(q, k, v);
      sum(fused * r).backward();
      grads[0] = q.grad(), grads[1] = k.grad(), grads[2] = v.grad();
    }
    Tensor vr = rounded_to_bf16(v);
    float v_size = 0;
    for (int64_t j = 0; j < vr.numel(); ++j) v_size = std::max(v_size, std::fabs(vr.data()[j]));
    Tensor composed = nn::causal_attention_composed(rounded_to_bf16(q), rounded_to_bf16(k), vr);
    CHECK(max_abs_diff(fused, composed) < std::ldexp(v_size, -8));
    for (Tensor* t : {&q, &k, &v}) t->zero_grad();
    Tensor fp32 = nn::causal_attention_fused(q, k, v);
    sum(fp32 * r).backward();
    CHECK(max_abs_diff(fused, fp32) > 1e-4f);  // bf16 did run
    const Tensor fp32_grads[3] = {q.grad(), k.grad(), v.grad()};
    for (int i = 0; i < 3; ++i) {
      CAPTURE(i);
      float size = 0;
      for (int64_t j = 0; j < fp32_grads[i].numel(); ++j) size = std::max(size, std::fabs(fp32_grads[i].data()[j]));
      CHECK(max_abs_diff(grads[i], fp32_grads[i]) < 0.05f * size);
      CHECK(max_abs_diff(grads[i], fp32_grads[i]) > 0.0f);
    }
  }
}

TEST_CASE("grad: latent_attention_fused over its five inputs, W = 0 and W > 0") {
  // Here so that this file checks every op of nn/fused_ops.h; the op's thorough tests, the packed
  // overload among them, are in tests/test_latent_attention.cpp.
  nn::LatentInputs in;
  in.queries = random_leaf({1, 2, 5, 4}, 64, 0.5f);
  in.keys = random_leaf({1, 2, 5, 4}, 65, 0.5f);
  in.rotated_keys = random_leaf({1, 2, 5, 4}, 66, 0.5f);
  in.values = random_leaf({1, 2, 5, 4}, 67);
  in.latents = random_leaf({2, 3, 4}, 68);  // (H, M, d)
  for (int64_t window : {0, 2})
    check_gradients([&] { return nn::latent_attention_fused(in, window); },
                    {in.queries, in.keys, in.rotated_keys, in.values, in.latents});
}

TEST_CASE("grad: CausalSelfAttention with the composed core (the reference path)") {
  Rng rng(16);
  nn::CausalSelfAttention attn(mha_config(8, 2), rng);
  attn.core = nn::CausalSelfAttention::Core::Composed;
  randomize(attn, 17);
  Tensor x = random_leaf({2, 4, 8}, 18);
  check_gradients([&] { return attn.forward(x, 2); }, with_parameters({x}, attn));
}

TEST_CASE("grad: TransformerBlock with MHA and residual dropout") {
  nn::BlockConfig cfg = mha_config(8, 2);
  cfg.dropout = 0.2f;
  Rng rng(19);
  nn::TransformerBlock block(cfg, rng);
  randomize(block, 20);
  Tensor x = random_leaf({2, 3, 8}, 21);
  check_gradients(
      [&] {
        Rng dropout_rng(5);
        return block.forward(x, 1, dropout_rng);
      },
      with_parameters({x}, block));
}

// ============================================================================
// Layer behaviour
// ============================================================================

TEST_CASE("Dropout is the identity in eval mode and at p = 0, and leaves the generator alone") {
  Tensor x = random_leaf({3, 5}, 22);
  Rng rng(3);
  auto before = rng.state();
  nn::Dropout none(0.0f), half(0.5f);
  CHECK(none.forward(x, rng).to_vector() == x.to_vector());
  half.eval();
  CHECK(half.forward(x, rng).to_vector() == x.to_vector());
  CHECK(rng.state() == before);
  half.train();
  std::vector<float> dropped = half.forward(x, rng).to_vector(), kept = x.to_vector();
  int zeros = 0;
  for (size_t i = 0; i < dropped.size(); ++i) {
    if (dropped[i] == 0.0f)
      ++zeros;
    else
      CHECK(dropped[i] == doctest::Approx(2.0f * kept[i]));  // survivors scaled by 1 / (1 - p)
  }
  CHECK(zeros > 0);
  CHECK(zeros < 15);
  check_error([] { nn::Dropout bad(1.0f); }, "not in [0, 1)");
}

TEST_CASE("LayerNorm starts as plain normalisation") {
  nn::LayerNorm ln(4);
  Tensor x = Tensor::from_vector({1, 2, 3, 6}, {1, 4});
  // mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5
  std::vector<float> y = ln.forward(x).to_vector();
  for (int j = 0; j < 4; ++j)
    CHECK(y[j] == doctest::Approx((x.data()[j] - 3.0) / std::sqrt(3.5 + 1e-5)).epsilon(1e-5));
}

TEST_CASE("RMSNorm divides by the root mean square, then scales by the gain") {
  nn::RMSNorm rms(4);
  rms.weight.data()[3] = 2.0f;
  Tensor x = Tensor::from_vector({1, 2, 3, 6}, {1, 4});
  // mean square (1 + 4 + 9 + 36) / 4 = 12.5
  std::vector<float> y = rms.forward(x).to_vector();
  const double gain[4] = {1, 1, 1, 2};
  for (int j = 0; j < 4; ++j)
    CHECK(y[j] == doctest::Approx(x.data()[j] / std::sqrt(12.5 + 1e-5) * gain[j]).epsilon(1e-5));
}

TEST_CASE("rope: rotated q_t . k_s depends only on t - s") {
  Tensor q = random_leaf({1, 8}, 23), k = random_leaf({1, 8}, 24);
  auto score = [&](int64_t t, int64_t s) { return sum(nn::rope(q, t) * nn::rope(k, s)).item(); };
  float reference = score(3, 0);
  for (auto [t, s] : std::vector<std::pair<int64_t, int64_t>>{{5, 2}, {10, 7}, {103, 100}, {1003, 1000}})
    CHECK(score(t, s) == doctest::Approx(reference).epsilon(1e-4));
  // ...and does depend on it (otherwise the checks above would hold for a rope that did nothing useful).
  CHECK(std::abs(score(4, 0) - reference) > 1e-2f);
  CHECK(std::abs(score(0, 0) - sum(q * k).item()) < 1e-5f);  // position 0 is no rotation

  // Row t of a (T, d) input sits at position first_position + t.
  Tensor rows = random_leaf({4, 8}, 25);
  Tensor all = nn::rope(rows, 6);
  for (int64_t t = 0; t < 4; ++t)
    CHECK(max_abs_diff(slice(all, 0, t, t + 1), nn::rope(slice(rows, 0, t, t + 1), 6 + t)) < 1e-6f);
}

TEST_CASE("MHA: causal, and step() over positions equals forward(), B = 2") {
  Rng rng(26);
  nn::CausalSelfAttention attn(mha_config(16, 4), rng);
  randomize(attn, 27, 0.3f);    // peaked attention: a wrong key order or mask would show
  const int64_t B = 2, T = 20;  // T > the cache's first capacity, so it grows
  Tensor x = random_leaf({B, T, 16}, 28);
  Tensor parallel = attn.forward(x);  // (B, T, D)

  auto state = attn.make_state(B);
  for (int64_t t = 0; t < T; ++t) {
    Tensor out = attn.step(slice(x, 1, t, t + 1), *state);  // (B, 1, D)
    CHECK(!out.requires_grad());
    CHECK_MESSAGE(max_abs_diff(out, slice(parallel, 1, t, t + 1)) < 1e-5f, "position " << t);
  }
  CHECK(state->position == T);

  // Causal: changing positions after t leaves outputs up to t unchanged.
  Tensor changed = contiguous_copy(x);
  for (int64_t i = 11 * 16; i < T * 16; ++i) changed.data()[i] += 1.0f;  // rows 11.. of sequence 0
  Tensor y = attn.forward(changed);
  CHECK(max_abs_diff(slice(y, 1, 0, 11), slice(parallel, 1, 0, 11)) < 1e-6f);
  CHECK(max_abs_diff(slice(y, 1, 11, T), slice(parallel, 1, 11, T)) > 1e-3f);

  check_error([&] { attn.step(slice(x, 1, 0, 2), *state); }, "input must be (2, 1, 16)");
  nn::AttentionState foreign;
  check_error([&] { attn.step(slice(x, 1, 0, 1), foreign); }, "not made by");
}

TEST_CASE("TransformerBlock: step() equals forward() in eval mode; dropout only while training") {
  nn::BlockConfig cfg = mha_config(16, 2);
  cfg.dropout = 0.5f;
  Rng rng(29);
  nn::TransformerBlock block(cfg, rng);
  randomize(block, 30, 0.3f);
  Tensor x = random_leaf({2, 6, 16}, 31);
  Rng dropout_rng(1);
  Tensor train_a = block.forward(x, 0, dropout_rng), train_b = block.forward(x, 0, dropout_rng);
  CHECK(max_abs_diff(train_a, train_b) > 1e-3f);  // fresh masks each call

  block.eval();
  Tensor parallel = block.forward(x, 0, dropout_rng);
  CHECK(max_abs_diff(parallel, block.forward(x, 0, dropout_rng)) == 0.0f);
  auto state = block.attn->make_state(2);
  for (int64_t t = 0; t < 6; ++t)
    CHECK(max_abs_diff(block.step(slice(x, 1, t, t + 1), *state), slice(parallel, 1, t, t + 1)) < 1e-5f);
}

TEST_CASE("kinds by name: each part's table builds its kinds and refuses an unknown name with the list") {
  Rng rng(0);
  nn::BlockConfig cfg = mha_config(8, 2);
  CHECK(dynamic_cast<nn::CausalSelfAttention*>(nn::make_attention(cfg, rng).get()) != nullptr);
  cfg.attention = "latent";
  CHECK(dynamic_cast<nn::LatentAttention*>(nn::make_attention(cfg, rng).get()) != nullptr);
  cfg.ffn = "swiglu";
  CHECK(dynamic_cast<nn::SwiGLU*>(nn::make_feed_forward(cfg, rng).get()) != nullptr);
  cfg.ffn = "gelu";
  CHECK(dynamic_cast<nn::MLP*>(nn::make_feed_forward(cfg, rng).get()) != nullptr);
  cfg.norm = "rmsnorm";
  CHECK(dynamic_cast<nn::RMSNorm*>(nn::make_norm(cfg, rng).get()) != nullptr);
  cfg.norm = "layernorm";
  CHECK(dynamic_cast<nn::LayerNorm*>(nn::make_norm(cfg, rng).get()) != nullptr);
  // Every name in a table builds a module of that part.
  for (const auto& kind : nn::attention_kinds().kinds()) CHECK(kind.make(mha_config(8, 2), rng) != nullptr);
  for (const auto& kind : nn::feed_forward_kinds().kinds()) CHECK(kind.make(cfg, rng) != nullptr);
  for (const auto& kind : nn::norm_kinds().kinds()) CHECK(kind.make(cfg, rng) != nullptr);

  // The lists come from the tables, so these hold whatever kinds are added.
  cfg.attention = "flash";
  check_error([&] { nn::make_attention(cfg, rng); },
              "unknown attention kind 'flash' (expected " + nn::attention_kinds().names(" or ") + ")");
  cfg.ffn = "relu";
  check_error([&] { nn::make_feed_forward(cfg, rng); },
              "unknown feed-forward kind 'relu' (expected " + nn::feed_forward_kinds().names(" or ") + ")");
  cfg.norm = "batchnorm";
  check_error([&] { nn::make_norm(cfg, rng); },
              "unknown norm kind 'batchnorm' (expected " + nn::norm_kinds().names(" or ") + ")");
  CHECK(nn::attention_kinds().names(" or ").find("latent, mha") == 0);  // "a, b or c"
  CHECK(nn::norm_kinds().names(" | ").find("layernorm | rmsnorm") == 0);
}

// ============================================================================
// Module: names, counts, init, state dicts
// ============================================================================

TEST_CASE("Module: dotted names and parameter count of a TransformerBlock") {
  Rng rng(32);
  nn::TransformerBlock block(mha_config(8, 2), rng);
  std::vector<std::string> names;
  for (auto& [name, p] : block.named_parameters()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                          "attn.proj.weight", "attn.proj.bias", "ln2.weight", "ln2.bias",
                                          "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight",
                                          "mlp.proj.bias"});
  // D = 8: LayerNorms 2 * 2D = 32, qkv 3D*D + 3D = 216, proj D*D + D = 72,
  // fc 4D*D + 4D = 288, mlp proj 4D*D + D = 264.
  CHECK(block.parameter_count() == 32 + 216 + 72 + 288 + 264);
  nn::BlockConfig no_bias = mha_config(8, 2);
  no_bias.bias = false;
  nn::TransformerBlock lean(no_bias, rng);
  CHECK(lean.parameter_count() == 32 + 192 + 64 + 256 + 256);
}

static double stddev(const Tensor& t) {
  std::vector<float> v = t.to_vector();
  double s = 0, s2 = 0;
  for (float x : v) s += x, s2 += static_cast<double>(x) * x;
  double mean = s / v.size();
  return std::sqrt(s2 / v.size() - mean * mean);
}

TEST_CASE("GPT-2 init: std 0.02, residual projections 0.02 / sqrt(2 layers), zero biases, unit gains") {
  nn::BlockConfig cfg = mha_config(64, 4);
  cfg.layers = 8;
  Rng rng(33);
  nn::TransformerBlock block(cfg, rng);
  auto state = block.state_dict();
  const double residual = 0.02 / std::sqrt(16.0);
  CHECK(stddev(state.at("attn.qkv.weight")) == doctest::Approx(0.02).epsilon(0.05));
  CHECK(stddev(state.at("mlp.fc.weight")) == doctest::Approx(0.02).epsilon(0.05));
  CHECK(stddev(state.at("attn.proj.weight")) == doctest::Approx(residual).epsilon(0.05));
  CHECK(stddev(state.at("mlp.proj.weight")) == doctest::Approx(residual).epsilon(0.05));
  for (const char* name :
       {"attn.qkv.bias", "attn.proj.bias", "mlp.fc.bias", "mlp.proj.bias", "ln1.bias", "ln2.bias"})
    for (float v : state.at(name).to_vector()) CHECK(v == 0.0f);
  for (const char* name : {"ln1.weight", "ln2.weight"})
    for (float v : state.at(name).to_vector()) CHECK(v == 1.0f);
  nn::Embedding emb(100, 64, rng);
  CHECK(stddev(emb.weight) == doctest::Approx(0.02).epsilon(0.05));
}

TEST_CASE("Module: state_dict round trip copies values; load_state_dict errors") {
  Rng rng_a(34), rng_b(35);
  nn::TransformerBlock a(mha_config(8, 2), rng_a), b(mha_config(8, 2), rng_b);
  randomize(a, 36);
  Tensor x = random_leaf({1, 3, 8}, 37);
  Rng dropout_rng(0);
  Tensor expected = a.forward(x, 0, dropout_rng);
  CHECK(max_abs_diff(b.forward(x, 0, dropout_rng), expected) > 1e-3f);
  b.load_state_dict(a.state_dict());
  CHECK(max_abs_diff(b.forward(x, 0, dropout_rng), expected) == 0.0f);
  a.state_dict().at("ln1.bias").data()[0] += 1.0f;  // b holds copies, not a's tensors
  CHECK(max_abs_diff(b.forward(x, 0, dropout_rng), expected) == 0.0f);

  auto missing = a.state_dict();
  missing.erase("mlp.fc.bias");
  check_error([&] { b.load_state_dict(missing); }, "missing parameter 'mlp.fc.bias'");
  auto unexpected = a.state_dict();
  unexpected.emplace("mlp.extra", Tensor::zeros({2}));
  check_error([&] { b.load_state_dict(unexpected); }, "unexpected parameter 'mlp.extra'");
  auto misshaped = a.state_dict();
  misshaped["attn.proj.weight"] = Tensor::zeros({8, 7});
  check_error([&] { b.load_state_dict(misshaped); }, "'attn.proj.weight' has shape (8, 7)");
}

// ============================================================================
// safetensors
// ============================================================================

static std::string temp_path(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("lg_test_nn_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

static std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

static void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

static std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

static std::string float_bytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// A file built by hand: length, header (padded to 8 bytes as the format asks), data.
static std::string hand_made(const std::string& header, const std::string& data) {
  std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  return le64(padded.size()) + padded + data;
}

TEST_CASE("safetensors: round trip of values, shapes, views and metadata") {
  std::string path = temp_path("round_trip.safetensors");
  Tensor matrix = Tensor::from_vector({1, -2, 3.5f, 4, 5, 6e-8f}, {2, 3});
  Tensor scalar = Tensor::full({}, 42.0f);
  Tensor empty = Tensor::zeros({0, 4});
  Tensor view = transpose(matrix, 0, 1);  // written in logical order
  std::map<std::string, std::string> metadata = {{"step", "12"},
                                                 {"note", "quote \" backslash \\ newline \n"}};
  nn::write_safetensors(path, {{"matrix", matrix}, {"scalar", scalar}, {"empty", empty}, {"view", view}},
                        metadata);
  CHECK_FALSE(std::filesystem::exists(path + ".tmp." + std::to_string(::getpid())));  // renamed into place

  std::map<std::string, std::string> got_metadata;
  auto got = nn::read_safetensors(path, &got_metadata);
  CHECK(got.size() == 4);
  CHECK(got_metadata == metadata);
  CHECK(got.at("matrix").shape() == Shape{2, 3});
  CHECK(got.at("matrix").to_vector() == matrix.to_vector());
  CHECK(got.at("scalar").shape() == Shape{});
  CHECK(got.at("scalar").item() == 42.0f);
  CHECK(got.at("empty").shape() == Shape{0, 4});
  CHECK(got.at("view").shape() == Shape{3, 2});
  CHECK(got.at("view").to_vector() == std::vector<float>{1, 4, -2, 5, 3.5f, 6e-8f});
  CHECK_FALSE(got.at("matrix").requires_grad());

  // Overwriting replaces the whole file.
  nn::write_safetensors(path, {{"only", scalar}});
  auto replaced = nn::read_safetensors(path);
  CHECK(replaced.size() == 1);
  CHECK(replaced.count("only") == 1);
}

TEST_CASE("safetensors: the bytes follow the format") {
  std::string path = temp_path("layout.safetensors");
  nn::write_safetensors(path, {{"x", Tensor::from_vector({1.5f, -2.0f}, {2})}});
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(header.size() == 54);  // padded with two spaces to 56, a multiple of 8
  CHECK(read_bytes(path) == le64(56) + header + "  " + float_bytes({1.5f, -2.0f}));
}

TEST_CASE("safetensors: reads a file written by another writer") {
  // Spacing, key order, metadata last, a \u escape and data order unlike ours: all legal.
  std::string header =
      "{ \"b\u00e9ta\" : {\"data_offsets\": [8, 20], \"shape\": [3, 1], \"dtype\": \"F32\"},\n"
      "  \"\\u0061\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},\n"
      "  \"__metadata__\": {\"format\": \"pt\"} }";
  std::string path = temp_path("foreign.safetensors");
  write_bytes(path, hand_made(header, float_bytes({7, 8, 1, 2, 3})));
  std::map<std::string, std::string> metadata;
  auto got = nn::read_safetensors(path, &metadata);
  CHECK(got.at("a").to_vector() == std::vector<float>{7, 8});
  CHECK(got.at("b\u00e9ta").shape() == Shape{3, 1});
  CHECK(got.at("b\u00e9ta").to_vector() == std::vector<float>{1, 2, 3});
  CHECK(metadata.at("format") == "pt");
}

TEST_CASE("safetensors: missing, truncated and corrupted files raise lg::Error") {
  std::string good = temp_path("good.safetensors"), bad = temp_path("bad.safetensors");
  nn::write_safetensors(good, {{"w", Tensor::from_vector({1, 2, 3, 4}, {2, 2})}, {"b", Tensor::ones({2})}});
  const std::string bytes = read_bytes(good);
  auto read_bad = [&] { nn::read_safetensors(bad); };

  const std::string missing = temp_path("does_not_exist.safetensors");
  check_error([&] { nn::read_safetensors(missing); }, "cannot read " + missing);
  write_bytes(bad, bytes.substr(0, 5));
  check_error(read_bad, "too short");
  write_bytes(bad, bytes.substr(0, 30));  // cut inside the header
  check_error(read_bad, "bad header length");
  write_bytes(bad, bytes.substr(0, bytes.size() - 4));  // cut inside the data
  check_error(read_bad, "out of range");
  write_bytes(bad, bytes + "junk");
  check_error(read_bad, "bytes after the last tensor");
  write_bytes(bad, le64(0) + bytes.substr(8));
  check_error(read_bad, "bad header length 0");
  write_bytes(bad, std::string(8, '\xff') + bytes.substr(8));
  check_error(read_bad, "bad header length");

  std::string flipped = bytes;
  flipped[8] = 'x';  // the header's opening brace
  write_bytes(bad, flipped);
  check_error(read_bad, "malformed JSON header at byte 0");
  flipped = bytes;
  flipped[8 + bytes.substr(8).find(':')] = ';';
  write_bytes(bad, flipped);
  check_error(read_bad, "malformed JSON");

  auto check_header = [&](const std::string& header, const std::string& data, const std::string& expected) {
    write_bytes(bad, hand_made(header, data));
    check_error(read_bad, expected);
  };
  const std::string eight = float_bytes({1, 2});
  check_header(R"({"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}})", eight, "unsupported dtype F16");
  check_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight,
               "span 8 bytes but shape (3,) needs 12");
  check_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", eight, "end before begin");
  check_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", eight, "out of range");
  check_header(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      float_bytes({1, 2, 3}), "overlap");
  check_header(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
      float_bytes({1, 2, 3, 4, 5}), "unused bytes");
  check_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight,
               "tensor 'a': shape[0] must be a non-negative integer, found -2");
  check_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}})", eight,
               "tensor 'a': data_offsets[1] must be a non-negative integer, found 8.0");
  check_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,08]}})", eight, "leading zero");
  check_header(R"({"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}})", eight,
               "does not fit in 64 bits");
  check_header(R"({"a":{"dtype":"F32","shape":[2]}})", eight, "needs the fields");
  check_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"strides":[1]}})", eight,
               "tensor 'a': unknown field \"strides\"");
  check_header(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      eight, "duplicate key");
  check_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} trailing)", eight,
               "after the top-level value");
  check_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", eight, "unexpected end of input");
  check_header(R"([1, 2])", "", "header is not a JSON object");
  check_header(R"({"__metadata__":{"k":1}})", "", "is not a string");

  check_error(
      [&] {
        nn::write_safetensors(bad, {{"a", Tensor::ones({1})}, {"a", Tensor::ones({1})}});
      },
      "appears twice");
  const std::string unwritable = temp_path("no_such_dir/x.safetensors");
  check_error([&] { nn::write_safetensors(unwritable, {}); }, "cannot write " + unwritable);
}

TEST_CASE("safetensors: an empty tensor's other sizes are bounded too") {
  std::string path = temp_path("empty_huge.safetensors");
  // No elements, but strides of 2^40 * 2^40: refused before a tensor is made.
  write_bytes(
      path,
      hand_made(R"({"a":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}})", ""));
  check_error([&] { nn::read_safetensors(path); }, "tensor 'a': shape is too large");
  write_bytes(path,
              hand_made(R"({"a":{"dtype":"F32","shape":[0,1048576,1048576],"data_offsets":[0,0]}})", ""));
  CHECK(nn::read_safetensors(path).at("a").shape() == Shape{0, 1 << 20, 1 << 20});
}

TEST_CASE("save_module / load_module") {
  Rng rng_a(38), rng_b(39);
  nn::TransformerBlock a(mha_config(8, 2), rng_a), b(mha_config(8, 2), rng_b);
  std::string path = temp_path("block.safetensors");
  nn::save_module(a, path, {{"kind", "mha"}});
  nn::load_module(b, path);
  auto sa = a.state_dict(), sb = b.state_dict();
  for (auto& [name, t] : sa) CHECK_MESSAGE(t.to_vector() == sb.at(name).to_vector(), name);

  Rng rng_c(40);
  nn::TransformerBlock wider(mha_config(16, 2), rng_c);
  check_error([&] { nn::load_module(wider, path); }, "has shape");
  std::filesystem::remove_all(std::filesystem::path(path).parent_path());
}

// Runs last in this file (doctest orders by file, then line), like the core ops' check in
// tests/test_ops_grad.cpp.
TEST_CASE("every op of nn/fused_ops.h has a gradient check") {
  for (std::string_view op : nn::kFusedOps)
    CHECK_MESSAGE(lg::testing::checked_ops().count(std::string(op)) == 1,
                  "op '" << op << "' is listed in nn/fused_ops.h but no gradient check here builds it");
}
