// tests/test_charlm.cpp: the char LM and its CLI in-process: learning, exact resume, eval, sampling, every
// bad input.
//
// Needs no external corpus: each test writes a generated, repetitive text to a temporary
// directory and trains tiny models (1-2 layers, dim 16, ctx 16) for a few dozen steps.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/files.h"
#include "core/gemm_bf16.h"
#include "core/json_io.h"
#include "core/precision.h"
#include "models/charlm.h"
#include "models/charlm_checkpoint.h"
#include "models/charlm_cli.h"
#include "models/charlm_flags.h"
#include "models/svg_plot.h"
#include "tests/testing.h"

using namespace lg;
using namespace lg::charlm;
using namespace lg::testing;
namespace fs = std::filesystem;

namespace {

struct Run {
  int code;
  std::string out, err;
};

Run cli(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  Console console{out, err, false, false};
  int code = charlm_main(args, console);
  return {code, out.str(), err.str()};
}

// A tiny but complete model. `extra` flags replace the defaults' values or are appended.
std::vector<std::string> tiny_train(const std::string& data, const std::string& out,
                                    const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args = {
      "train", "--data",  data, "--out",        out,  "--layers",  "1", "--heads",  "2",   "--dim",
      "16",    "--ctx",   "16", "--batch",      "4",  "--latents", "4", "--window", "4",   "--eval-batches",
      "2",     "--steps", "30", "--eval-every", "10", "--warmup",  "5", "--lr",     "3e-3"};
  for (size_t i = 0; i < extra.size(); ++i) {
    bool is_switch = extra[i] == "--resume" || extra[i] == "--json" || extra[i] == "--recompute";
    auto it = std::find(args.begin(), args.end(), extra[i]);
    if (!is_switch && it != args.end()) {
      *(it + 1) = extra[++i];
    } else {
      args.push_back(extra[i]);
      if (!is_switch) args.push_back(extra[++i]);
    }
  }
  return args;
}

// Runs `charlm train` with the CLI's own flag parser, plus a hook after each step.
TrainResult train_with_hook(const std::vector<std::string>& args, const StepHook& hook,
                            std::string* err_text = nullptr) {
  TrainInvocation call = parse_train_args(std::vector<std::string>(args.begin() + 1, args.end()));
  std::ostringstream out, err;
  Console console{out, err, false, false};
  TrainResult r = run_train(call.settings, call.given, console, hook);
  if (err_text) *err_text = err.str();
  return r;
}

std::string only_line(const std::string& text) {
  std::string t = text;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  return t;
}

// A bad input: non-zero exit, exactly one line on stderr mentioning `needle`.
void expect_error(const Run& r, const std::string& needle) {
  INFO("stderr: " << r.err);
  CHECK(r.code != 0);
  std::string line = only_line(r.err);
  CHECK(line.find('\n') == std::string::npos);
  CHECK(line.rfind("charlm: error: ", 0) == 0);
  CHECK(line.find(needle) != std::string::npos);
}

// A small model of the given attention kind: 2 heads of size 8, M and W for latent attention.
ModelConfig small_model(const char* kind, int64_t vocab, int64_t layers, int64_t ctx, int64_t latents = 4,
                        int64_t window = 3) {
  ModelConfig c;
  c.vocab = vocab;
  c.layers = layers;
  c.heads = 2;
  c.dim = 16;
  c.ctx = ctx;
  c.latents = latents;
  c.window = window;
  c.attention = kind;
  return c;
}

}  // namespace

TEST_CASE("json: round trip, exact doubles and 64-bit words, and errors") {
  json::Json v = {{"loss", 1.2345678901234567},
                  {"name", "caf\xc3\xa9 \"q\"\n"},
                  {"list", {1, nullptr, true}},
                  {"word", json::hex_u64(0xfedcba9876543210ull)}};
  for (int indent : {-1, 2}) {
    json::Json back = json::parse(json::dump(v, indent));
    CHECK(json::get_number(back.at("loss"), "loss") == 1.2345678901234567);
    CHECK(json::get_string(back.at("name"), "name") == "caf\xc3\xa9 \"q\"\n");
    CHECK(back.at("list").size() == 3);
    CHECK(json::parse_hex_u64(json::get_string(back.at("word"), "word"), "word") == 0xfedcba9876543210ull);
    CHECK(back == v);
  }
  CHECK_THROWS_AS(json::parse("{\"a\": 1"), json::ParseError);
  CHECK_THROWS_AS(json::parse("{\"a\": 1,}"), json::ParseError);
  CHECK_THROWS_AS(json::parse("[1 2]"), json::ParseError);
  CHECK_THROWS_AS(json::parse("nan"), json::ParseError);
  CHECK_THROWS_AS(json::parse("1e400"), json::ParseError);
  CHECK_THROWS_AS(json::parse("\"a\xff\""), json::ParseError);  // not UTF-8
  CHECK_THROWS_AS(json::parse(""), json::ParseError);
  CHECK(json::get_string(json::parse("\"\\u00e9\\ud83d\\ude00\""), "s") == "\xc3\xa9\xf0\x9f\x98\x80");
  CHECK_THROWS_AS(json::parse_hex_u64("0x0123", "word"), Error);
}

// The layout of the files written before the move to nlohmann-json: this is what that build's
// own writer printed for the same document, byte for byte.
TEST_CASE("json: dump writes numbers and layout as the files always had them") {
  json::Json v = json::Json::object();
  v["int"] = 42;
  v["neg"] = int64_t{-7};
  v["big"] = int64_t{1} << 53;
  v["one"] = 1.0;
  v["zero"] = 0.0;
  v["negzero"] = -0.0;
  v["milli"] = 1e-3;
  v["tenth"] = 0.1;
  v["third"] = 1.0 / 3;
  v["small"] = 1e-5;
  v["tiny"] = 2.5e-7;
  v["e15"] = 1e15;
  v["e16"] = 1e16;
  v["e17"] = 1.5e17;
  v["huge"] = 1e300;
  v["f"] = static_cast<double>(0.1f);
  v["nan"] = std::nan("");
  v["inf"] = std::numeric_limits<double>::infinity();
  v["str"] = "tab\t nl\n quote\" back\\ ctl\x01 del\x7f caf\xc3\xa9 /";
  v["t"] = true;
  v["n"] = nullptr;
  v["scalars"] = {1, 2.5, "x", nullptr};
  v["objects"] = json::Json::array({{{"a", 1}}, json::Json::object(), 3});
  v["empty_obj"] = json::Json::object();
  v["empty_arr"] = json::Json::array();
  v["nested"] = json::Json::array({json::Json::array({1}), json::Json::array()});
  CHECK(
      json::dump(v) ==
      R"({"int":42,"neg":-7,"big":9007199254740992,"one":1,"zero":0,"negzero":-0,"milli":0.001,"tenth":0.1,)"
      R"("third":0.3333333333333333,"small":1e-05,"tiny":2.5e-07,"e15":1000000000000000,"e16":1e+16,)"
      R"("e17":1.5e+17,"huge":1e+300,"f":0.10000000149011612,"nan":null,"inf":null,)"
      "\"str\":\"tab\\t nl\\n quote\\\" back\\\\ ctl\\u0001 del\x7f caf\xc3\xa9 /\","
      R"("t":true,"n":null,"scalars":[1,2.5,"x",null],"objects":[{"a":1},{},3],"empty_obj":{},)"
      R"("empty_arr":[],"nested":[[1],[]]})");
  CHECK(json::dump(v, 2) ==
        "{\n"
        "  \"int\": 42,\n"
        "  \"neg\": -7,\n"
        "  \"big\": 9007199254740992,\n"
        "  \"one\": 1,\n"
        "  \"zero\": 0,\n"
        "  \"negzero\": -0,\n"
        "  \"milli\": 0.001,\n"
        "  \"tenth\": 0.1,\n"
        "  \"third\": 0.3333333333333333,\n"
        "  \"small\": 1e-05,\n"
        "  \"tiny\": 2.5e-07,\n"
        "  \"e15\": 1000000000000000,\n"
        "  \"e16\": 1e+16,\n"
        "  \"e17\": 1.5e+17,\n"
        "  \"huge\": 1e+300,\n"
        "  \"f\": 0.10000000149011612,\n"
        "  \"nan\": null,\n"
        "  \"inf\": null,\n"
        "  \"str\": \"tab\\t nl\\n quote\\\" back\\\\ ctl\\u0001 del\x7f caf\xc3\xa9 /\",\n"
        "  \"t\": true,\n"
        "  \"n\": null,\n"
        "  \"scalars\": [1, 2.5, \"x\", null],\n"
        "  \"objects\": [\n"
        "    {\n"
        "      \"a\": 1\n"
        "    },\n"
        "    {}, 3],\n"
        "  \"empty_obj\": {},\n"
        "  \"empty_arr\": [],\n"
        "  \"nested\": [[1], []]\n"
        "}");
  // A string that is not UTF-8 could not be read back as JSON: its bad bytes become U+FFFD.
  CHECK(json::dump(json::Json("a\xff")) == "\"a\xef\xbf\xbd\"");
}

TEST_CASE("json: the strict checks nn/safetensors relies on") {
  auto parse_error = [](std::string_view text) {
    try {
      json::parse(text);
    } catch (const json::ParseError& e) {
      CHECK(std::string(e.what()) == fmt::format("JSON parse error at byte {}: {}", e.byte(), e.reason()));
      CHECK(e.reason().find('\n') == std::string::npos);
      return fmt::format("{}: {}", e.byte(), e.reason());
    }
    return std::string("(no ParseError thrown)");
  };
  // the byte is the last one read: here the closing quote of the repeated key
  CHECK(parse_error(R"({"a": 1, "a": 2})") == R"(11: duplicate key "a")");
  CHECK(parse_error(R"({"a": {"b": 1, "b": 1}})") == R"(17: duplicate key "b")");
  CHECK(parse_error("[1, 02]") == "5: leading zero in a number");
  CHECK(parse_error("-01") == "2: leading zero in a number");
  CHECK(parse_error("[1e-05, 0.01, 0, -0]") == "(no ParseError thrown)");
  CHECK(parse_error("[1e-05 02]").ends_with("unexpected number literal; expected ']'"));  // a missing comma
  CHECK(parse_error(R"("\udc00")").find("surrogate U+DC00..U+DFFF must follow U+D800..U+DBFF") !=
        std::string::npos);
  CHECK(parse_error("{} x") == "3: unexpected text after the top-level value");
  CHECK(parse_error("[1,").starts_with("3: syntax error while parsing value - unexpected end of input"));
  CHECK(parse_error("[18446744073709551616]") == "21: integer 18446744073709551616 does not fit in 64 bits");
  CHECK(parse_error("-9223372036854775809").ends_with("does not fit in 64 bits"));
  CHECK(parse_error(fmt::format("\"{}\x01\"", std::string(1000, 'a'))).size() <
        300);                                                             // quotes a long token in part
  CHECK(json::parse(R"({"a": 1, "b": {"a": 2}})").at("b").at("a") == 2);  // same key, other objects
  CHECK(json::parse("[0, -0.5, 10]").size() == 3);

  // Nesting: 200 levels parse; one more is refused before it is built, however deep the text goes.
  CHECK(json::parse(std::string(200, '[') + std::string(200, ']')).is_array());
  CHECK(parse_error(std::string(201, '[') + std::string(201, ']')) ==
        "200: nesting deeper than 200 arrays and objects");
  CHECK(parse_error(std::string(1'000'000, '[')).ends_with("nesting deeper than 200 arrays and objects"));
  CHECK(parse_error(R"({"a": )" + std::string(300, '[')).starts_with("205: nesting deeper"));

  // get_uint64: plain digits, exact over 64 bits; "8.0", "-2" and "1e3" are other spellings, refused.
  json::Json v = json::parse("[8, 18446744073709551615, 8.0, -2, 1e3, \"8\"]");
  CHECK(json::get_uint64(v[0], "size") == 8u);
  CHECK(json::get_uint64(v[1], "size") == 18446744073709551615ull);
  CHECK_THROWS_WITH_AS(json::get_uint64(v[2], "size"), "size must be a non-negative integer, found 8.0",
                       Error);
  CHECK_THROWS_WITH_AS(json::get_uint64(v[3], "size"), "size must be a non-negative integer, found -2",
                       Error);
  CHECK_THROWS_WITH_AS(json::get_uint64(v[4], "size"), "size must be a non-negative integer, found 1000.0",
                       Error);
  CHECK_THROWS_WITH_AS(json::get_uint64(v[5], "size"), "size must be a number, found a string", Error);
  CHECK(json::get_uint64(json::Json(int64_t{1} << 40), "size") == (uint64_t{1} << 40));  // built in code
  CHECK_THROWS_AS(json::get_uint64(json::Json(0.5), "size"), Error);

  // The other typed getters: lg::Error naming the key, never a nlohmann exception.
  json::Json o = json::parse(R"({"n": 8.0, "big": 18446744073709551615, "half": 0.5, "s": "x", "b": true})");
  CHECK(json::get_int(json::at(o, "n"), "n") == 8);
  CHECK_THROWS_WITH_AS(json::get_int(json::at(o, "big"), "big"),
                       "big 18446744073709551615 does not fit in 64 bits", Error);
  CHECK_THROWS_WITH_AS(json::get_int(json::at(o, "half"), "half"), "half must be an integer, found 0.5",
                       Error);
  CHECK_THROWS_WITH_AS(json::get_int(json::at(o, "s"), "config.dim"),
                       "config.dim must be a number, found a string", Error);
  CHECK_THROWS_WITH_AS(json::get_string(json::at(o, "b"), "attn"), "attn must be a string, found a boolean",
                       Error);
  CHECK_THROWS_WITH_AS(json::get_array(json::at(o, "s"), "vocab"), "vocab must be an array, found a string",
                       Error);
  CHECK_THROWS_WITH_AS(json::at(o, "missing"), "missing key 'missing'", Error);
  CHECK_THROWS_WITH_AS(json::at(json::at(o, "s"), "dim"),
                       "the parent of 'dim' must be an object, found a string", Error);
}

TEST_CASE("data: vocabulary from the train split, unknown id, split and batches") {
  Vocab v = Vocab::from_text("abcab");
  CHECK(v.size() == 4);
  CHECK(v.encode("abcz") == std::vector<int32_t>{1, 2, 3, kUnknownId});
  CHECK(v.count_unknown("zzab") == 2);
  CHECK(v.byte_of(3) == 'c');
  SplitFractions f = parse_split("0.8,0.1,0.1");
  Splits s = split_corpus(std::string(100, 'x'), f);
  CHECK(s.train.size() == 80);
  CHECK(s.val.size() == 10);
  CHECK(s.test.size() == 10);
  CHECK_THROWS_AS(parse_split("0.5,0.5"), Error);
  CHECK_THROWS_AS(parse_split("0.9,0.1,0"), Error);
  CHECK_THROWS_AS(parse_split("0.9,0.2,0.1"), Error);
  CHECK_THROWS_AS(parse_split("a,b,c"), Error);

  std::vector<int32_t> ids(50);
  for (int i = 0; i < 50; ++i) ids[i] = i;
  Rng r1(3), r2(3);
  std::vector<int32_t> x1, y1, x2, y2;
  sample_batch(ids, 3, 8, r1, x1, y1);
  sample_batch(ids, 3, 8, r2, x2, y2);
  CHECK(x1 == x2);
  for (size_t i = 0; i < x1.size(); ++i) CHECK(y1[i] == x1[i] + 1);  // targets are the next token
}

TEST_CASE("data: a train fraction above 1 within parse_split's tolerance still splits within the corpus") {
  // 2,000,000 * 1.0000009 = 2,000,001.8: one byte more than the corpus.
  SplitFractions f = parse_split("1.0000009,1e-300,1e-300");
  const std::string corpus(2'000'000, 'x');
  Splits s = split_corpus(corpus, f);
  CHECK(s.train.size() == corpus.size());
  CHECK(s.val.empty());
  CHECK(s.test.empty());
  CHECK_THROWS_WITH_AS(check_split_lengths(s, static_cast<int64_t>(corpus.size()), 16),
                       doctest::Contains("give a val split of 0 bytes"), Error);
}

TEST_CASE("svg chart is a complete document with axes, ticks and legend") {
  plot::Series a{"train loss", "#1f77b4", {10, 20, 30}, {3.0, 2.5, 2.2}};
  plot::Series b{"val loss", "#d62728", {10, 20, 30}, {3.1, 2.6, std::numeric_limits<double>::quiet_NaN()}};
  std::string svg = plot::line_chart_svg({a, b}, "t", "step", "loss", true);
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find(">train loss<") != std::string::npos);
  CHECK(svg.find(">val loss<") != std::string::npos);
  CHECK(svg.find(">0<") != std::string::npos);  // x axis starts at step 0
  CHECK(svg.find("nan") == std::string::npos);
}

TEST_CASE("model: tied head, parameter names, incremental steps equal the parallel pass") {
  for (const char* kind : {"latent", "mha", "mla"}) {
    CAPTURE(kind);
    ModelConfig c = small_model(kind, 11, 2, 12);
    Rng init(1);
    auto model = std::make_unique<CharLM>(c, init);
    auto params = model->named_parameters();
    CHECK(params.front().first == "wte.weight");
    CHECK(params.back().first == "ln_f.bias");
    for (auto& [name, t] : params) CHECK(name.find("head") == std::string::npos);  // no separate head
    model->eval();
    std::vector<int32_t> ids = {1, 5, 2, 9, 3, 3, 7, 10, 4, 6};
    Rng unused(0);
    Tensor logits;
    {
      NoGradGuard no_grad;
      logits = model->forward(ids, 1, 10, unused);  // (1, 10, 11)
    }
    CharLM::State state = model->make_state(1);
    for (int t = 0; t < 10; ++t) {
      std::vector<float> step_logits = model->step({ids[t]}, state).to_vector();
      for (int v = 0; v < 11; ++v)
        CHECK(step_logits[v] == doctest::Approx(logits.at({0, t, v})).epsilon(1e-4));
    }
  }
}

TEST_CASE("the tied head: linear's bf16 products under Precision::bf16, the matmul of W^T in fp32") {
  ModelConfig c = small_model("latent", 11, 1, 12);
  Rng init(2), rng(3);
  CharLM model(c, init);
  Tensor h = randn({2, 7, c.dim}, rng).set_requires_grad();
  const Tensor r = randn({2, 7, c.vocab}, rng);
  const Tensor& w = model.wte->weight;
  // logits, dh and dW from loss sum(logits * r), for the head or for a given function of h and W
  auto run = [&](Precision p, const std::function<Tensor()>& logits) {
    PrecisionGuard guard(p);
    model.zero_grad();
    h.zero_grad();
    Tensor y = logits();
    sum(y * r).backward();
    return std::vector<std::vector<float>>{y.to_vector(), h.grad().to_vector(), w.grad().to_vector()};
  };
  auto head = [&] { return model.head(h); };
  const auto bf16 = run(Precision::bf16, head), fp32 = run(Precision::fp32, head);
  CHECK(bf16 == run(Precision::bf16, [&] { return linear(h, w, Tensor()); }));
  CHECK(fp32 == run(Precision::fp32, [&] { return matmul(h, transpose(w, 0, 1)); }));
  // The inputs were rounded (bf16 keeps 8 significant bits): the logits moved, by little.
  double worst = 0;
  for (size_t i = 0; i < fp32[0].size(); ++i) worst = std::max(worst, double(std::abs(bf16[0][i] - fp32[0][i])));
  CHECK(worst > 1e-4);
  CHECK(worst < 0.1);
}

TEST_CASE("data parallel: shards give the whole batch's loss and gradients, and share the weights") {
  for (const char* kind : {"latent", "mha", "mla"}) {
    CAPTURE(kind);
    ModelConfig c = small_model(kind, 13, 2, 9, 4, 2);
    Rng init(5), data(6);
    CharLM model(c, init);
    const int64_t B = 5, T = 9;  // 5 sequences: shards of unequal size
    std::vector<int32_t> x(B * T), y(B * T);
    for (auto& v : x) v = static_cast<int32_t>(data.below(13));
    for (auto& v : y) v = static_cast<int32_t>(data.below(13));

    Rng unused(0);
    model.zero_grad();
    Tensor loss = CharLM::loss(model.forward(x, B, T, unused), y);
    loss.backward();
    std::vector<std::vector<float>> reference;
    for (const Tensor& p : model.parameters()) reference.push_back(p.grad().to_vector());

    for (int64_t shards : {1, 2, 3, 7}) {
      CAPTURE(shards);
      DataParallel parallel(model, shards);
      CHECK(parallel.shards() == shards);
      std::vector<std::vector<float>> first;
      for (int run = 0; run < 2; ++run) {
        model.zero_grad();
        Rng dropout(0);
        float value = parallel.forward_backward(x, y, B, T, dropout);
        CHECK(value == doctest::Approx(loss.item()).epsilon(1e-5));
        std::vector<Tensor> params = model.parameters();
        for (size_t i = 0; i < params.size(); ++i) {
          REQUIRE(params[i].grad().defined());
          std::vector<float> g = params[i].grad().to_vector();
          for (size_t k = 0; k < g.size(); ++k)
            CHECK(g[k] == doctest::Approx(reference[i][k]).epsilon(1e-4).scale(1e-3));
          if (run == 0)
            first.push_back(g);
          else
            CHECK(g == first[i]);  // bitwise the same on a second run
        }
      }
      // The replicas read the model's storage: a change to the weights reaches every shard.
      Tensor w = model.parameters()[0];
      float* data0 = w.data();
      const float saved = data0[13];
      data0[13] += 0.5f;  // token 1's embedding
      model.zero_grad();
      Rng dropout(0);
      float changed = parallel.forward_backward(x, y, B, T, dropout);
      model.zero_grad();
      Tensor direct = CharLM::loss(model.forward(x, B, T, unused), y);
      CHECK(changed == doctest::Approx(direct.item()).epsilon(1e-5));
      CHECK(changed != doctest::Approx(loss.item()).epsilon(1e-6));
      data0[13] = saved;
    }
  }
}

TEST_CASE("data parallel with dropout: shards draw their own masks, reproducibly") {
  ModelConfig c = small_model("latent", 13, 1, 8);
  c.dropout = 0.2f;
  Rng init(3), data(4);
  CharLM model(c, init);
  model.train();
  const int64_t B = 4, T = 8;
  std::vector<int32_t> x(B * T), y(B * T);
  for (auto& v : x) v = static_cast<int32_t>(data.below(13));
  for (auto& v : y) v = static_cast<int32_t>(data.below(13));
  auto run = [&](int64_t shards) {
    DataParallel parallel(model, shards);
    model.zero_grad();
    Rng dropout(9);
    const float loss = parallel.forward_backward(x, y, B, T, dropout);
    std::vector<float> g = model.parameters()[0].grad().to_vector();
    g.push_back(loss);
    return g;
  };
  const std::vector<float> two = run(2);
  CHECK(two == run(2));  // the same seed, the same masks, bitwise
  CHECK(two != run(1));  // one shard draws from dropout_rng directly: other masks
  CHECK(std::isfinite(two.back()));
}

TEST_CASE(
    "recompute: bitwise the same loss and gradients as keeping the activations, with dropout and shards") {
  for (const char* kind : {"latent", "mha", "mla"})
    for (int64_t shards : {1, 2}) {
      CAPTURE(kind);
      CAPTURE(shards);
      ModelConfig c = small_model(kind, 13, 2, 9, 4, 2);
      c.dropout = 0.2f;
      Rng init_a(3), init_b(3);
      CharLM plain(c, init_a), again(c, init_b);
      again.recompute = true;
      std::vector<int32_t> x, y;
      Rng data(4);
      for (int i = 0; i < 4 * 9; ++i) {
        x.push_back(static_cast<int32_t>(1 + data.below(12)));
        y.push_back(static_cast<int32_t>(1 + data.below(12)));
      }
      DataParallel pa(plain, shards), pb(again, shards);
      Rng drop_a(5), drop_b(5);
      const float la = pa.forward_backward(x, y, 4, 9, drop_a), lb = pb.forward_backward(x, y, 4, 9, drop_b);
      CHECK(la == lb);
      CHECK(drop_a.next_u64() == drop_b.next_u64());  // the generator moved on as one run moves it
      auto ga = plain.named_parameters(), gb = again.named_parameters();
      for (size_t i = 0; i < ga.size(); ++i) {
        CAPTURE(ga[i].first);
        CHECK(ga[i].second.grad().to_vector() == gb[i].second.grad().to_vector());
      }
    }
}

TEST_CASE("share_parameters refuses a module of another shape") {
  ModelConfig c = small_model("latent", 13, 1, 8);
  Rng r(1);
  CharLM a(c, r);
  c.dim = 8;
  CharLM b(c, r);
  CHECK_THROWS_WITH_AS(a.share_parameters(b), doctest::Contains("does not match"), Error);
  c.layers = 2;
  CharLM d(c, r);
  CHECK_THROWS_WITH_AS(b.share_parameters(d), doctest::Contains("parameters here"), Error);
}

TEST_CASE("training lowers the loss and writes checkpoints, metrics.jsonl and loss.svg") {
  TempDir dir("learn");
  write_text(dir / "corpus.txt", generated_text(20000));
  std::string err;
  TrainResult r = train_with_hook(
      tiny_train(dir / "corpus.txt", dir / "run", {"--steps", "60", "--lr", "1e-2"}), {}, &err);
  INFO(err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.losses.size() == 60);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) first += r.losses[i] / 5;
  for (int i = 55; i < 60; ++i) last += r.losses[i] / 5;
  MESSAGE("loss over the first 5 steps " << first << ", last 5 steps " << last << "; test loss "
                                         << r.test.loss);
  CHECK(first > 2.5);  // starts near uniform over the ~25 distinct bytes
  CHECK(last < first - 0.8);
  CHECK(r.test.loss < first - 0.8);
  CHECK(r.test.tokens == 999);  // every byte of the 1000-byte test split after the first
  CHECK(std::isfinite(r.tokens_per_s));

  CHECK(files::exists(dir / "run/latest/model.safetensors"));
  CHECK(files::exists(dir / "run/latest/optimizer.safetensors"));
  CHECK(files::exists(dir / "run/best/checkpoint.json"));
  std::string metrics = files::read_file(dir / "run/metrics.jsonl");
  int lines = 0;
  for (size_t p = 0; (p = metrics.find('\n', p)) != std::string::npos; ++p) ++lines;
  CHECK(lines == 6);  // steps 10, 20, ..., 60
  json::Json first_line = json::parse(metrics.substr(0, metrics.find('\n')));
  CHECK(first_line.at("step").get<int64_t>() == 10);
  CHECK(first_line.contains("val_bpc"));
  std::string svg = files::read_file(dir / "run/loss.svg");
  CHECK(svg.find("</svg>") != std::string::npos);
  for (const auto& entry : fs::directory_iterator(dir.path / "run"))  // no staging or tmp leftovers
    CHECK(entry.path().filename().string().find("tmp") == std::string::npos);
}

TEST_CASE("resume after SIGINT or SIGTERM continues exactly: bitwise the losses of an uninterrupted run") {
  // SIGTERM is what cluster schedulers send before they kill a job: it saves like Ctrl-C.
  install_stop_handlers();
  struct Case {
    const char *kind, *ffn, *norm;
    int signal;
  };
  for (auto [kind, ffn, norm, signal] :
       {Case{"latent", "gelu", "layernorm", SIGINT}, Case{"latent", "gelu", "layernorm", SIGTERM},
        Case{"mha", "gelu", "layernorm", SIGINT}, Case{"mha", "gelu", "layernorm", SIGTERM},
        Case{"latent", "swiglu", "rmsnorm", SIGINT}}) {
    CAPTURE(kind);
    CAPTURE(ffn);
    CAPTURE(norm);
    CAPTURE(signal);
    TempDir dir(fmt::format("resume-{}-{}-{}-{}", kind, ffn, norm, signal));
    write_text(dir / "corpus.txt", generated_text(12000));
    std::vector<std::string> extra = {"--attn",    kind,  "--ffn",   ffn,  "--norm",       norm,
                                      "--dropout", "0.1", "--steps", "24", "--eval-every", "8"};

    TrainResult whole = train_with_hook(tiny_train(dir / "corpus.txt", dir / "whole", extra), {});
    REQUIRE(whole.exit_code == 0);
    REQUIRE(whole.losses.size() == 24);

    // Interrupted at step 13 (between evaluations) by a real signal, then resumed.
    std::string err;
    TrainResult first = train_with_hook(
        tiny_train(dir / "corpus.txt", dir / "split", extra),
        [signal = signal](int64_t step, CharLM&) {
          if (step == 13) std::raise(signal);
        },
        &err);
    install_stop_handlers();                 // the handler resets itself after one signal
    CHECK(first.exit_code == 128 + signal);  // 130, 143
    CHECK(first.last_step == 13);
    CHECK(err.empty());
    CHECK(read_checkpoint_meta(dir / "split/latest").step == 13);

    std::vector<std::string> resume_args = tiny_train(dir / "corpus.txt", dir / "split", extra);
    resume_args.push_back("--resume");
    TrainResult second = train_with_hook(resume_args, {});
    REQUIRE(second.exit_code == 0);
    CHECK(second.first_step == 13);
    REQUIRE(second.losses.size() == 11);
    for (size_t i = 0; i < 13; ++i) CHECK(first.losses[i] == whole.losses[i]);
    for (size_t i = 0; i < 11; ++i) CHECK(second.losses[i] == whole.losses[13 + i]);  // bitwise
    CHECK(second.test.loss == whole.test.loss);
    CHECK(files::read_file(dir / "split/metrics.jsonl").size() > 0);
  }
}

TEST_CASE("--accum N: N micro-batches per step give the step of one N times larger batch") {
  TempDir dir("accum");
  write_text(dir / "corpus.txt", generated_text(12000));
  for (const char* threads : {"1", "2"}) {
    CAPTURE(threads);
    auto run = [&](const std::string& name, const char* batch, const char* accum) {
      std::string err;
      TrainResult r = train_with_hook(tiny_train(dir / "corpus.txt", dir / (name + threads),
                                                 {"--batch", batch, "--accum", accum, "--steps", "12",
                                                  "--eval-every", "6", "--threads", threads}),
                                      {}, &err);
      INFO(err);
      REQUIRE(r.exit_code == 0);
      return r;
    };
    TrainResult big = run("big", "8", "1"), micro = run("micro", "2", "4");
    REQUIRE(micro.losses.size() == 12);
    // The same windows, the same mean loss and gradient, up to the order of float additions.
    for (size_t i = 0; i < 12; ++i) CHECK(micro.losses[i] == doctest::Approx(big.losses[i]).epsilon(1e-4));
    CHECK(micro.test.loss == doctest::Approx(big.test.loss).epsilon(1e-4));
    // A different batch is a different run: the comparison can fail.
    TrainResult small = run("small", "2", "1");
    CHECK(std::abs(small.losses[11] - big.losses[11]) > 1e-3);
  }
}

TEST_CASE(
    "memory: a step's estimate is close to what training uses; a step that cannot fit is refused first") {
  TempDir dir("memory");
  write_text(dir / "corpus.txt", generated_text(12000));
  for (const char* recompute : {"0", "1"})
    for (const char* threads : {"1", "2"}) {
      CAPTURE(recompute);
      CAPTURE(threads);
      std::vector<std::string> extra = {"--ctx",        "256", "--batch",   "2",     "--steps", "4",
                                        "--eval-every", "4",   "--threads", threads, "--json"};
      if (std::string(recompute) == "1") extra.push_back("--recompute");
      Run run = cli(tiny_train(dir / "corpus.txt", dir / (std::string("fits") + recompute + threads), extra));
      INFO(run.err);
      REQUIRE(run.code == 0);
      const json::Json j = json::parse(run.out);
      const double estimate = j.at("memory_estimate_mb").get<double>(),
                   peak = j.at("memory_peak_mb").get<double>();
      MESSAGE("estimate " << estimate << " MB, peak " << peak << " MB");
      CHECK(estimate > 0.8 * peak);
      // Two shards at once are the worst case the estimate takes; their steps may also overlap less.
      if (std::string(threads) == "1") CHECK(estimate < 1.3 * peak);
    }
  setenv("LATENTGRAD_MEMORY_MB", "1", 1);
  Run refused = cli(tiny_train(dir / "corpus.txt", dir / "big", {"--ctx", "256"}));
  unsetenv("LATENTGRAD_MEMORY_MB");
  expect_error(refused, "--ctx 256 with --batch 4 needs about");
  expect_error(refused, "more than the 1 MB available (LATENTGRAD_MEMORY_MB): use --recompute");
  CHECK_FALSE(fs::exists(dir.path / "big"));  // refused before writing anything
}

TEST_CASE("--precision bf16: trains where the CPU has AVX512-BF16 (else refuses), to an fp32 checkpoint") {
  TempDir dir("bf16");
  write_text(dir / "corpus.txt", generated_text(12000));
  Run fp32 = cli(tiny_train(dir / "corpus.txt", dir / "fp32", {"--json"}));
  REQUIRE(fp32.code == 0);
  Run bf16 = cli(tiny_train(dir / "corpus.txt", dir / "bf16", {"--precision", "bf16", "--json"}));
  if (!gemm_bf16_available()) {
    expect_error(bf16, "--precision bf16 needs a CPU with AVX512-BF16");
    CHECK_FALSE(fs::exists(dir.path / "bf16"));
    return;
  }
  INFO(bf16.err);
  REQUIRE(bf16.code == 0);
  const json::Json a = json::parse(fp32.out), b = json::parse(bf16.out);
  CHECK(b.at("precision").get<std::string>() == "bf16");
  CHECK(a.at("precision").get<std::string>() == "fp32");
  // The same run up to bf16 rounding: the first step's loss nearly equal, the last ones close.
  const auto& la = a.at("step_losses");
  const auto& lb = b.at("step_losses");
  CHECK(lb[0].get<double>() == doctest::Approx(la[0].get<double>()).epsilon(1e-3));
  CHECK(lb[0].get<double>() != la[0].get<double>());
  CHECK(b.at("test_loss").get<double>() == doctest::Approx(a.at("test_loss").get<double>()).epsilon(0.02));
  // The checkpoint is fp32 and resumes in either precision; the setting is saved with the run.
  CHECK(files::read_file(dir / "bf16/config.toml").find("precision = \"bf16\"") != std::string::npos);
  Run resumed = cli(tiny_train(dir / "corpus.txt", dir / "bf16", {"--resume", "--steps", "35",
                                                                   "--precision", "fp32", "--json"}));
  INFO(resumed.err);
  CHECK(resumed.code == 0);
  Run refused = cli(tiny_train(dir / "corpus.txt", dir / "x", {"--precision", "fp16"}));
  expect_error(refused, "--precision: unknown precision 'fp16' (expected fp32 or bf16)");
}

TEST_CASE("every registered kind of every part trains, saves, evaluates to its reported loss and samples") {
  // Driven by the tables of nn/kinds.cpp: a kind added there is run here with no change to this test.
  std::vector<std::pair<std::string, std::string>> runs;  // flag, kind
  for (const auto& k : nn::attention_kinds().kinds()) runs.emplace_back("--attn", k.name);
  for (const auto& k : nn::feed_forward_kinds().kinds()) runs.emplace_back("--ffn", k.name);
  for (const auto& k : nn::norm_kinds().kinds()) runs.emplace_back("--norm", k.name);
  TempDir dir("kinds");
  std::string corpus = generated_text(8000);
  write_text(dir / "corpus.txt", corpus);
  Splits splits = split_corpus(corpus, SplitFractions{});
  write_text(dir / "test.txt", std::string(splits.test));
  const Run help = cli({"train", "--help"});
  for (const auto& [flag, kind] : runs) {
    CAPTURE(flag);
    CAPTURE(kind);
    CHECK(help.out.find("\n                          " + kind + " ") !=
          std::string::npos);  // listed in --help
    const std::string out = dir / (flag.substr(2) + "-" + kind);
    Run train = cli(
        tiny_train(dir / "corpus.txt", out, {flag, kind, "--steps", "12", "--eval-every", "6", "--json"}));
    INFO(train.err);
    REQUIRE(train.code == 0);
    const json::Json model = json::parse(files::read_file(out + "/best/checkpoint.json")).at("model");
    CHECK(model.at(flag == "--attn" ? "attention" : flag.substr(2)) ==
          kind);  // the checkpoint names the kind
    Run eval = cli({"eval", "--ckpt", out, "--data", dir / "test.txt", "--json"});
    REQUIRE(eval.code == 0);
    CHECK(json::parse(eval.out).at("loss").get<double>() ==
          json::parse(train.out).at("test_loss").get<double>());
    Run sample = cli({"sample", "--ckpt", out, "--tokens", "20", "--seed", "3"});
    CHECK(sample.code == 0);
    CHECK(sample.out.size() >= 20);
  }
}

TEST_CASE(
    "settings: checkpoint JSON from the declarations; missing keys take defaults, unknown ones are refused") {
  TrainSettings s;
  s.model.ffn = "swiglu";
  s.steps = 17;
  const json::Json saved = s.to_json();
  for (const Setting& setting : train_settings()) CHECK(saved.contains(setting.name) == setting.saved());
  CHECK(TrainSettings::from_json(saved).to_json() == saved);

  json::Json partial = saved;
  partial.erase("ffn");
  partial.erase("beta2");
  TrainSettings back = TrainSettings::from_json(partial);
  CHECK(back.model.ffn == "gelu");
  CHECK(back.beta2 == 0.99);
  CHECK(back.steps == 17);
  json::Json unknown = saved;
  unknown["warp"] = 9;
  CHECK_THROWS_WITH_AS(TrainSettings::from_json(unknown),
                       "training.warp: not a setting of this build (a newer build wrote the checkpoint?)",
                       Error);

  ModelConfig m;
  m.vocab = 30;
  m.norm = "rmsnorm";
  json::Json model = m.to_json();
  CHECK(model.at("norm") == "rmsnorm");
  CHECK(model.at("kv_rank") == 0);  // the model section keeps its own key names
  CHECK(ModelConfig::from_json(model).to_json() == model);
  model.erase("norm");
  CHECK(ModelConfig::from_json(model).norm == "layernorm");
  model["ffn"] = "geglu";
  CHECK_THROWS_WITH_AS(ModelConfig::from_json(model),
                       doctest::Contains("model.ffn: unknown feed-forward kind 'geglu' (expected gelu"),
                       Error);
  model.erase("ffn");
  model["depth"] = 3;
  CHECK_THROWS_WITH_AS(ModelConfig::from_json(model), doctest::Contains("model.depth: not a setting"), Error);
  model.erase("depth");
  model.erase("vocab");
  CHECK_THROWS_WITH_AS(ModelConfig::from_json(model), doctest::Contains("vocab"), Error);
}

TEST_CASE("eval of the checkpoint reproduces the test loss reported at the end of training; --json output") {
  TempDir dir("eval");
  std::string corpus = generated_text(10000);
  write_text(dir / "corpus.txt", corpus);
  Run train = cli(tiny_train(dir / "corpus.txt", dir / "run", {"--json"}));
  INFO(train.err);
  REQUIRE(train.code == 0);
  json::Json summary = json::parse(train.out);  // the only thing on stdout
  for (const char* key : {"val_loss", "test_loss", "test_ppl", "test_bpc", "tokens_per_s", "params"})
    CHECK(summary.contains(key));
  CHECK(summary.at("test_bpc").get<double>() ==
        doctest::Approx(summary.at("test_loss").get<double>() / std::log(2.0)));

  Splits splits = split_corpus(corpus, SplitFractions{});
  write_text(dir / "test.txt", std::string(splits.test));
  Run eval = cli({"eval", "--ckpt", dir / "run", "--data", dir / "test.txt", "--json"});
  INFO(eval.err);
  REQUIRE(eval.code == 0);
  json::Json e = json::parse(eval.out);
  CHECK(e.at("loss").get<double>() == summary.at("test_loss").get<double>());
  CHECK(e.at("tokens").get<int64_t>() == static_cast<int64_t>(splits.test.size()) - 1);

  Run human = cli({"eval", "--ckpt", dir / "run/best", "--data", dir / "test.txt"});
  CHECK(human.code == 0);
  CHECK(human.out.find("bpc") != std::string::npos);
}

TEST_CASE("generation: latent attention's fixed-size state runs past ctx unrebuilt; growing caches rebuild") {
  for (const char* kind : {"latent", "mha"}) {
    CAPTURE(kind);
    ModelConfig c = small_model(kind, 13, 2, 8);
    Rng init(5);
    CharLM model(c, init);
    model.eval();
    Generator gen(model);
    CHECK(gen.rebuilds() == (std::string(kind) == "mha"));
    // 40 positions, five times the trained ctx, against the parallel pass over all of them.
    std::vector<int32_t> ids;
    Rng pick(6);
    for (int i = 0; i < 40; ++i) ids.push_back(static_cast<int32_t>(1 + pick.below(12)));
    Rng unused(0);
    Tensor parallel = model.forward_positions(ids, 1, 40, unused);  // (1, 40, V)
    std::vector<float> all = parallel.to_vector();
    float worst = 0;
    for (int t = 0; t < 40; ++t) {
      gen.feed(ids[t]);
      for (int v = 0; v < 13; ++v) worst = std::max(worst, std::abs(gen.logits()[v] - all[t * 13 + v]));
    }
    if (std::string(kind) == "latent")
      CHECK(worst < 1e-4f);  // the same function at every position: nothing rebuilt
    else
      CHECK(worst > 1e-3f);  // rebuilt at ctx from the last ctx / 2 tokens: another prefix
  }
}

TEST_CASE("eval --ctx: windows of another length; the model's ctx by default") {
  TempDir dir("eval_ctx");
  write_text(dir / "corpus.txt", generated_text(8000));
  REQUIRE(cli(tiny_train(dir / "corpus.txt", dir / "run", {"--steps", "10"})).code == 0);  // ctx 16
  auto eval = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"eval", "--ckpt", dir / "run", "--data", dir / "corpus.txt", "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    Run r = cli(args);
    INFO(r.err);
    REQUIRE(r.code == 0);
    return json::parse(r.out);
  };
  json::Json base = eval({}), same = eval({"--ctx", "16"}), longer = eval({"--ctx", "64"}),
             shorter = eval({"--ctx", "4"});
  CHECK(base.at("ctx") == 16);
  CHECK(base.at("trained_ctx") == 16);
  CHECK(same.at("loss") == base.at("loss"));
  CHECK(longer.at("ctx") == 64);
  CHECK(longer.at("tokens") == base.at("tokens"));  // every token once, whatever the window
  CHECK(longer.at("loss").get<double>() != base.at("loss").get<double>());
  CHECK(std::isfinite(longer.at("loss").get<double>()));
  // Shorter windows give each prediction less context: a higher loss.
  CHECK(shorter.at("loss").get<double>() > base.at("loss").get<double>());
  expect_error(cli({"eval", "--ckpt", dir / "run", "--data", dir / "corpus.txt", "--ctx", "-1"}),
               "--ctx must be >= 0");
}

TEST_CASE("sampling is deterministic for a seed and streams from the prompt") {
  TempDir dir("sample");
  write_text(dir / "corpus.txt", generated_text(10000));
  REQUIRE(cli(tiny_train(dir / "corpus.txt", dir / "run", {"--steps", "20"})).code == 0);
  auto sample = [&](const std::string& seed) {
    return cli({"sample", "--ckpt", dir / "run", "--prompt", "the ", "--tokens", "80", "--seed", seed,
                "--temperature", "1.0", "--top-k", "5"});
  };
  Run a = sample("5"), b = sample("5"), c = sample("6");
  REQUIRE(a.code == 0);
  CHECK(a.out == b.out);
  CHECK(a.out != c.out);
  CHECK(a.out.rfind("the ", 0) == 0);
  CHECK(a.out.size() == 4 + 80 + 1);
  // more tokens than ctx: the state is rebuilt from a sliding window
  Run greedy = cli({"sample", "--ckpt", dir / "run", "--tokens", "50", "--temperature", "0"});
  CHECK(greedy.code == 0);
  CHECK(greedy.out.size() == 51);
}

TEST_CASE("bad input: usage errors name the flag, exit non-zero, leave no files") {
  TempDir dir("usage");
  write_text(dir / "corpus.txt", generated_text(5000));
  const std::string data = dir / "corpus.txt", out = dir / "run";
  struct Case {
    std::vector<std::string> extra;
    std::string needle;
  };
  std::vector<Case> cases = {
      {{"--layers", "-1"}, "--layers must be a positive integer"},
      {{"--layers", "0"}, "--layers must be a positive integer"},
      {{"--steps", "abc"}, "--steps: 'abc' is not an integer"},
      {{"--steps", "1e3"}, "--steps: '1e3' is not an integer"},
      {{"--lr", "fast"}, "--lr: 'fast' is not a finite number"},
      {{"--lr", "0"}, "--lr must be a positive number"},
      {{"--lr", "nan"}, "--lr: 'nan' is not a finite number"},
      {{"--dim", "30", "--heads", "4"}, "--dim 30 is not divisible by --heads 4"},
      {{"--dim", "12", "--heads", "4"}, "is odd; RoPE needs an even head size"},
      {{"--dropout", "1.5"}, "--dropout must be in [0, 1)"},
      {{"--batch", "0"}, "--batch must be a positive integer"},
      {{"--split", "0.5,0.5"}, "expected three fractions"},
      {{"--attn", "sparse"}, "unknown attention kind 'sparse'"},
      {{"--bogus", "1"}, "unknown flag --bogus"},
      {{"--ctx"}, "--ctx needs a value"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.needle);
    std::vector<std::string> args = {"train", "--data", data, "--out", out};
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    Run r = cli(args);
    expect_error(r, c.needle);
    CHECK(r.code == kExitUsage);
    CHECK_FALSE(fs::exists(out));
  }
  expect_error(cli({"train", "--out", out}), "--data is required");
  expect_error(cli({"fly"}), "unknown command 'fly'");
  expect_error(cli({"sample", "--ckpt", out, "--tokens", "-5"}), "--tokens must be a positive integer");
  expect_error(cli({"sample", "--ckpt", out, "--temperature", "-1"}), "--temperature must be >= 0");
  for (const char* command : {"train", "eval", "sample"}) {
    Run help = cli({command, "--help"});
    CHECK(help.code == 0);
    CHECK(help.out.find("usage: charlm") == 0);
  }
  CHECK(cli({"--help"}).code == 0);
}

// Every field of two train settings.
// Every declared setting (models/charlm_settings.cpp) has the same value in both, and so has the vocabulary.
static void check_same_settings(const TrainSettings& a, const TrainSettings& b) {
  for (const Setting& setting : train_settings()) {
    CAPTURE(setting.name);
    CHECK(setting.text(a) == setting.text(b));
  }
  CHECK(a.model.vocab == b.model.vocab);
}

TEST_CASE("config: a run records every setting in OUT/config.toml, which --config reads back equal") {
  TempDir dir("config");
  write_text(dir / "corpus.txt", generated_text(10000));
  const std::vector<std::string> args = tiny_train(
      dir / "corpus.txt", dir / "run",
      {"--steps",   "12",   "--split",        "0.8,0.1,0.1", "--seed",       "7",     "--dropout",   "0.1",
       "--min-lr",  "3e-4", "--weight-decay", "0.05",        "--grad-clip",  "0.5",   "--log-every", "3",
       "--threads", "1",    "--bucket-mb",    "2.5",         "--no-overlap", "--json"});
  const TrainSettings ran = parse_train_args(std::vector<std::string>(args.begin() + 1, args.end())).settings;
  Run train = cli(args);
  INFO(train.err);
  REQUIRE(train.code == 0);
  TrainInvocation back = parse_train_args({"--config", dir / "run/config.toml"});
  check_same_settings(back.settings, ran);
  CHECK(back.given.count("--steps") == 1);  // a key of the file counts as given (for --resume's checks)
  CHECK(back.given.count("--resume") == 0);

  // The recorded config resumes its own run: every key matches the checkpoint.
  Run more = cli({"train", "--config", dir / "run/config.toml", "--resume", "--steps", "16"});
  INFO(more.err);
  CHECK(more.code == 0);
  CHECK(read_checkpoint_meta(dir / "run/latest").step == 16);
  CHECK(parse_train_args({"--config", dir / "run/config.toml"}).settings.steps == 16);
  // and --resume still refuses a setting that differs from the checkpoint, from the file too
  std::string wider = files::read_file(dir / "run/config.toml");
  wider.replace(wider.find("dim = 16"), 8, "dim = 32");
  write_text(dir / "wider.toml", wider);
  Run refused = cli({"train", "--config", dir / "wider.toml", "--resume", "--steps", "20"});
  expect_error(refused, "--resume: --dim 32 differs from the checkpoint's 16");
}

TEST_CASE("config: every setting survives the file; the command line overrides it") {
  TrainSettings s;
  s.data = "corpus with spaces, and a comma.txt";
  s.out = "runs/o'neil";
  s.model.attention = "mla";
  s.model.layers = 3;
  s.model.heads = 2;
  s.model.dim = 24;
  s.model.ctx = 40;
  s.model.latents = 5;
  s.model.window = 6;
  s.model.kv_rank = 9;
  s.model.q_rank = 7;
  s.model.rope_dim = 4;
  s.model.dropout = 0.15f;
  s.batch = 3;
  s.accum = 4;
  s.steps = 77;
  s.lr = 1.2345678901234567e-3;
  s.min_lr = 1e-5;
  s.warmup = 11;
  s.weight_decay = 0.01;
  s.grad_clip = 0;
  s.eval_every = 13;
  s.eval_batches = 2;
  s.log_every = 4;
  s.split = SplitFractions{0.7, 0.2, 0.1};
  s.seed = 9007199254740992ull;  // 2^53, the largest
  s.threads = 2;
  s.bucket_mb = 0.25;
  s.overlap = false;
  s.recompute = true;
  s.json = true;
  s.model.ffn = "swiglu";
  s.model.norm = "rmsnorm";
  s.beta1 = 0.8;
  s.beta2 = 0.95;
  s.precision = "bf16";
  // Every setting away from its default: a setting added to the declarations must be added here.
  for (const Setting& setting : train_settings()) {
    CAPTURE(setting.name);
    if (setting.name != "resume") CHECK(setting.text(s) != setting.text(TrainSettings{}));
  }
  TempDir dir("config_fields");
  write_text(dir / "all.toml", train_config_toml(s));
  check_same_settings(parse_train_args({"--config", dir / "all.toml"}).settings, s);

  TrainInvocation over =
      parse_train_args({"--steps", "5", "--config", dir / "all.toml", "--out", "elsewhere"});
  CHECK(over.settings.steps == 5);
  CHECK(over.settings.out == "elsewhere");
  CHECK(over.settings.batch == 3);
  // INI reads the same: `;` comments, `name=value`
  write_text(dir / "run.ini", "; an INI file\ndata=x.txt\nout=y\nsteps=9\nresume=false\njson=true\n");
  TrainInvocation ini = parse_train_args({"--config", dir / "run.ini"});
  CHECK(ini.settings.steps == 9);
  CHECK(ini.settings.json);
  CHECK_FALSE(ini.settings.resume);
  CHECK(ini.given.count("--resume") == 0);
}

TEST_CASE("config: every preset in configs/ parses; char_baseline.toml is the defaults") {
  int presets = 0;
  for (const auto& entry : fs::directory_iterator(LG_CONFIGS_DIR)) {
    const std::string path = entry.path().string(), name = entry.path().filename().string();
    CAPTURE(path);
    CHECK(entry.path().extension() == ".toml");
    // the header says how to run it
    CHECK(files::read_file(path).find("charlm train --config configs/" + name) != std::string::npos);
    TrainInvocation call = parse_train_args({"--config", path, "--data", "corpus.txt", "--out", "run"});
    CHECK_NOTHROW(call.settings.validate(false));
    if (name == "char_baseline.toml") {
      TrainSettings defaults;
      defaults.data = "corpus.txt";
      defaults.out = "run";
      check_same_settings(call.settings, defaults);
    }
    ++presets;
  }
  CHECK(presets == 3);
}

TEST_CASE("bad input: a bad --config file is one usage error naming the file and the key") {
  TempDir dir("config_errors");
  auto with_config = [&](const std::string& text) {
    write_text(dir / "c.toml", text);
    return cli({"train", "--config", dir / "c.toml", "--data", "x.txt", "--out", dir / "run"});
  };
  const std::string file = dir / "c.toml";
  struct Case {
    std::string text, needle;
  };
  std::vector<Case> cases = {
      {"stepz = 3\n", file + ": unknown key 'stepz'"},
      {"steps = abc\n", "--steps: 'abc' is not an integer (key steps of " + file + ")"},
      {"steps = 0\n", "--steps must be a positive integer, got 0 (key steps of " + file + ")"},
      {"min-lr = 0.5\n", "--min-lr 0.5 is above --lr 0.001 (key min-lr of " + file + ")"},
      {"json = yes\n", file + ": json must be true or false, got 'yes'"},
      {"[model]\nlayers = 2\n", file + ": sections ([model]) are not read"},
      {"split = 0.8,0.1,0.1\n", file + ": split takes one value, got 3"},
      {"steps = 3\nlr = 0.01\nsteps = 4\n", file + ": steps is set twice"},
      {"steps = 3\nsteps = 4\n", file + ": steps takes one value, got 2"},
      {"config = other.toml\n", file + ": unknown key 'config'"},
      {"help = true\n", file + ": unknown key 'help'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    Run r = with_config(c.text);
    expect_error(r, c.needle);
    CHECK(r.code == kExitUsage);
  }
  Run missing = cli({"train", "--config", dir / "none.toml"});
  expect_error(missing, "--config " + dir / "none.toml" + ": no such file");
  CHECK(missing.code == kExitUsage);
  // Not a regular file, or too large: refused before CLI11 opens it (a FIFO would block, /dev/zero never
  // end).
  expect_error(cli({"train", "--config", dir.path.string()}),
               "--config " + dir.path.string() + ": not a regular file");
  expect_error(cli({"train", "--config=/dev/zero"}), "--config /dev/zero: not a regular file");
  REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);
  expect_error(cli({"train", "--config", dir / "fifo"}), ": not a regular file");
  write_text(dir / "big.toml", std::string((1 << 20) + 1, '#'));
  expect_error(cli({"train", "--config", dir / "big.toml"}), "more than a config file's limit");
  expect_error(cli({"train", "--config", "a.toml", "--config", "b.toml"}), "--config given twice");
  expect_error(cli({"train", "--config=", "--data", "x.txt", "--out", dir / "run"}), "--config is empty");
  CHECK_FALSE(fs::exists(dir / "run"));
}

TEST_CASE("bad input: corpus problems and unwritable --out") {
  TempDir dir("corpus");
  const std::string out = dir / "run";
  auto train = [&](const std::string& data, const std::string& out_dir) {
    return cli(tiny_train(data, out_dir));
  };
  expect_error(train(dir / "missing.txt", out), "cannot read");
  write_text(dir / "empty.txt", "");
  expect_error(train(dir / "empty.txt", out), "is empty");
  expect_error(train(dir.path.string(), out), "is a directory");
  write_text(dir / "short.txt", generated_text(300));  // val split of 15 bytes < ctx + 1
  expect_error(train(dir / "short.txt", out), "corpus too short");
  CHECK_FALSE(fs::exists(out));
  write_text(dir / "corpus.txt", generated_text(5000));
  write_text(dir / "file", "x");
  expect_error(train(dir / "corpus.txt", dir / "file/run"), "cannot write to");
}

// A one-layer checkpoint written directly (no training), without an optimizer file.
static void save_small_checkpoint(const std::string& dir, const char* kind) {
  CheckpointMeta meta;
  meta.vocab = Vocab::from_text(generated_text(2000));
  meta.model = small_model(kind, meta.vocab.size(), 1, 16);
  meta.training = TrainSettings{}.to_json();
  Rng init(1);
  CharLM model(meta.model, init);
  save_checkpoint(dir, meta, model, nullptr);
}

TEST_CASE("bad input: --data that is not a regular file is refused at once, by train and by eval") {
  TempDir dir("special");
  const std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // A checkpoint to evaluate with, written directly (no training needed).
  save_small_checkpoint(dir / "ckpt", "latent");

  // Reading a FIFO waits for a writer and /dev/zero never ends: were either read, the alarm
  // would end this test instead of a hang.
  ::alarm(30);
  struct Case {
    std::string path, message;
  };
  const Case cases[] = {{fifo, "is a FIFO, not a regular file"},
                        {"/dev/zero", "is a character device, not a regular file"},
                        {dir.path.string(), "is a directory, not a regular file"}};
  for (const Case& c : cases) {
    INFO(c.path);
    CHECK_THROWS_WITH_AS(read_corpus(c.path), doctest::Contains(c.message.c_str()), Error);
    expect_error(cli(tiny_train(c.path, dir / "run")), c.message);
    expect_error(cli({"eval", "--ckpt", dir / "ckpt", "--data", c.path}), c.message);
  }
  ::alarm(0);
  CHECK_FALSE(fs::exists(dir / "run"));
}

TEST_CASE("a checkpoint.json that lists a file outside the checkpoint is refused without reading it") {
  TempDir dir("files");
  save_small_checkpoint(dir / "ckpt", "mha");
  REQUIRE(read_checkpoint_meta(dir / "ckpt").model.dim == 16);

  REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);
  std::string json = files::read_file(dir / "ckpt/checkpoint.json");
  const std::string files_key = "\"files\": {";
  REQUIRE(json.find(files_key) != std::string::npos);
  json.insert(json.find(files_key) + files_key.size(), R"("../fifo": {"bytes": 0, "fnv1a64": "0"},)");
  write_text(dir / "ckpt/checkpoint.json", json);
  ::alarm(30);  // were the FIFO opened, it would wait for a writer forever
  CHECK_THROWS_WITH_AS(read_checkpoint_meta(dir / "ckpt"),
                       doctest::Contains("files lists \"../fifo\"; a checkpoint holds only model.safetensors "
                                         "and optimizer.safetensors"),
                       Error);
  ::alarm(0);
}

TEST_CASE("a corpus larger than memory allows is refused before reading, with the size it needs") {
  TempDir dir("large");
  write_text(dir / "corpus.txt", std::string(1000, 'a'));
  // 1000 bytes of text and 1000 int32 token ids: 5000 bytes.
  CHECK(read_corpus(dir / "corpus.txt", 5000).size() == 1000);
  CHECK_THROWS_WITH_AS(
      read_corpus(dir / "corpus.txt", 4999),
      doctest::Contains("its 1000 bytes need 4.9 KiB of memory (5 bytes per byte: the text and "
                        "its token ids) but 4.9 KiB are available"),
      Error);
  CHECK(available_memory_bytes() > 0);
}

TEST_CASE(
    "bad input: missing, truncated, corrupted and incompatible checkpoints; prompt outside the vocabulary") {
  TempDir dir("ckpt");
  write_text(dir / "corpus.txt", generated_text(8000));
  REQUIRE(cli(tiny_train(dir / "corpus.txt", dir / "run", {"--steps", "10"})).code == 0);
  const std::string good = dir / "run/best";
  auto eval = [&](const std::string& ckpt) {
    return cli({"eval", "--ckpt", ckpt, "--data", dir / "corpus.txt"});
  };
  REQUIRE(eval(good).code == 0);

  expect_error(eval(dir / "nothing"), "no checkpoint at");
  write_text(dir / "one.txt", "t");
  expect_error(cli({"eval", "--ckpt", good, "--data", dir / "one.txt"}), "evaluation needs at least 2");
  expect_error(cli({"sample", "--ckpt", dir / "nothing"}), "no checkpoint at");
  expect_error(cli({"sample", "--ckpt", good, "--prompt", "the \xce\xa9"}),
               "is not in the checkpoint's vocabulary");
  expect_error(cli({"sample", "--ckpt", good, "--prompt", "Zebra"}), "'Z' (byte 0x5a) at offset 0");

  auto copy_of_good = [&](const std::string& name) {
    std::string copy = dir / name;
    fs::copy(good, copy, fs::copy_options::recursive);
    return copy;
  };
  {  // truncated weights
    std::string c = copy_of_good("truncated");
    std::string bytes = files::read_file(c + "/model.safetensors");
    write_text(c + "/model.safetensors", bytes.substr(0, bytes.size() / 2));
    expect_error(eval(c), "truncated");
  }
  {  // one flipped byte in the weights
    std::string c = copy_of_good("flipped");
    std::string bytes = files::read_file(c + "/model.safetensors");
    bytes[bytes.size() - 3] ^= 0x40;
    write_text(c + "/model.safetensors", bytes);
    expect_error(eval(c), "corrupted");
  }
  {  // a FIFO in place of the weights, or of checkpoint.json: refused at once, never opened (it would block)
    alarm(30);  // a regression dies here instead of hanging the suite
    for (const char* name : {"model.safetensors", "checkpoint.json"}) {
      std::string c = copy_of_good(std::string("fifo-") + name);
      fs::remove(c + "/" + name);
      REQUIRE(::mkfifo((c + "/" + name).c_str(), 0600) == 0);
      expect_error(eval(c), "not a regular file");
    }
    alarm(0);
  }
  {  // checkpoint.json cut short
    std::string c = copy_of_good("badjson");
    std::string text = files::read_file(c + "/checkpoint.json");
    write_text(c + "/checkpoint.json", text.substr(0, text.size() / 3));
    expect_error(eval(c), "JSON parse error");
  }
  {  // a model config that does not match the weights
    std::string c = copy_of_good("incompatible");
    std::string text = files::read_file(c + "/checkpoint.json");
    text.replace(text.find("\"dim\": 16"), 9, "\"dim\": 32");
    write_text(c + "/checkpoint.json", text);
    expect_error(eval(c), "has shape");
  }
  {  // a future format
    std::string c = copy_of_good("future");
    std::string text = files::read_file(c + "/checkpoint.json");
    text.replace(text.find("\"format_version\": 1"), 19, "\"format_version\": 9");
    write_text(c + "/checkpoint.json", text);
    expect_error(eval(c), "format version 9 is not supported");
  }
  {  // missing weights
    std::string c = copy_of_good("noweights");
    fs::remove(c + "/model.safetensors");
    expect_error(eval(c), "cannot read");
  }
  // resuming: a different corpus, a different architecture, a run that already exists
  write_text(dir / "other.txt", generated_text(8000, 99));
  std::vector<std::string> resume = tiny_train(dir / "other.txt", dir / "run", {"--steps", "20", "--resume"});
  expect_error(cli(resume), "is not the corpus the checkpoint was trained on");
  expect_error(cli(tiny_train(dir / "corpus.txt", dir / "run", {"--resume", "--dim", "32"})),
               "--resume: --dim 32 differs from the checkpoint's 16");
  expect_error(cli(tiny_train(dir / "corpus.txt", dir / "run")), "already holds a training run");
  expect_error(cli(tiny_train(dir / "corpus.txt", dir / "fresh", {"--resume"})), "--resume: no checkpoint");
}

TEST_CASE("a non-finite loss stops training, keeps the last good checkpoint and says so") {
  TempDir dir("nan");
  write_text(dir / "corpus.txt", generated_text(8000));
  std::string err;
  TrainResult r = train_with_hook(
      tiny_train(dir / "corpus.txt", dir / "run", {"--steps", "30", "--eval-every", "5"}),
      [](int64_t step, CharLM& model) {
        if (step == 7) model.ln_f->parameters()[0].data()[0] = std::numeric_limits<float>::quiet_NaN();
      },
      &err);
  CHECK(r.exit_code == 1);
  CHECK(r.last_step == 7);
  CHECK(err.find("loss is nan at step 8") != std::string::npos);
  CHECK(err.find("last good checkpoint is " + (dir / "run/latest") + " (step 5)") != std::string::npos);
  CHECK(read_checkpoint_meta(dir / "run/latest").step == 5);
  CHECK(cli({"eval", "--ckpt", dir / "run/latest", "--data", dir / "corpus.txt"}).code == 0);

  // Diverging from the first step: nothing was saved, and the message says that too.
  Run diverged = cli(tiny_train(dir / "corpus.txt", dir / "run2", {"--lr", "1e30", "--grad-clip", "0"}));
  expect_error(diverged, "training stopped");
}

// tests/fixtures/README.md: a checkpoint and the outputs of its run, from the build before nlohmann-json.
TEST_CASE("fixture ckpt_v1: an old checkpoint loads, evaluates to its recorded loss and resumes exactly") {
  const std::string fixture = std::string(LG_FIXTURES) + "/ckpt_v1",
                    run = std::string(LG_FIXTURES) + "/ckpt_v1_run";
  auto recorded = [&](const std::string& name) {
    std::string text = files::read_file(run + "/" + name);
    return json::parse(text.substr(0, text.find('\n')));
  };

  CheckpointMeta meta = read_checkpoint_meta(fixture);
  CHECK(meta.step == 20);
  CHECK(meta.model.dim == 16);
  CHECK(meta.model.attention == "latent");
  CHECK(meta.model.ffn == "gelu");  // from before the ffn and norm settings: their defaults
  CHECK(meta.model.norm == "layernorm");
  CHECK_FALSE(json::Json::parse(files::read_file(fixture + "/checkpoint.json")).at("model").contains("ffn"));
  CHECK(meta.vocab.size() == 25);
  CHECK(meta.best_step == 20);
  CHECK(meta.data_rng[0] == 0x94955ec1b40fbd04ull);  // the hex words, exactly
  CHECK(meta.training.at("lr") == 0.003);

  // The run's corpus is not kept: it is generated_text(4000, 11), written again here and held
  // to the size and hash the checkpoint recorded.
  TempDir dir("fixture");
  const std::string corpus = dir / "corpus.txt";
  write_text(corpus, generated_text(4000, 11));
  const std::string text = files::read_file(corpus);
  REQUIRE(static_cast<int64_t>(text.size()) == meta.corpus.bytes);
  REQUIRE(files::fnv1a64(text) == meta.corpus.fnv1a);

  // The same loss, tokens and accuracy as that build printed (the same up to float rounding
  // where this CPU's kernels add in another order).
  Run eval = cli({"eval", "--ckpt", fixture, "--data", corpus, "--json", "--threads", "1"});
  INFO(eval.err);
  REQUIRE(eval.code == 0);
  json::Json now = json::parse(eval.out), then = recorded("eval.json");
  CHECK(now.at("tokens") == then.at("tokens"));
  CHECK(now.at("accuracy").get<double>() == doctest::Approx(then.at("accuracy").get<double>()).epsilon(1e-3));
  CHECK(now.at("loss").get<double>() == doctest::Approx(then.at("loss").get<double>()).epsilon(1e-6));

  // Resuming restores weights, AdamW moments and the batch sampler: the same six steps as then.
  fs::create_directories(dir.path / "res");
  fs::copy(fixture, dir.path / "res/latest", fs::copy_options::recursive);
  Run resume = cli({"train", "--data", corpus, "--out", dir / "res", "--resume", "--steps", "26", "--threads",
                    "1", "--json"});
  INFO(resume.err);
  REQUIRE(resume.code == 0);
  json::Json resumed = json::parse(resume.out), resumed_then = recorded("resume.json");
  REQUIRE(resumed.at("step_losses").size() == 6);
  for (size_t i = 0; i < 6; ++i)
    CHECK(resumed.at("step_losses")[i].get<double>() ==
          doctest::Approx(resumed_then.at("step_losses")[i].get<double>()).epsilon(1e-5));
  CHECK(read_checkpoint_meta(dir / "res/latest").step == 26);
}

TEST_CASE("fixture ckpt_v1: every JSON file of the old build is written back byte for byte") {
  const std::string fixture = std::string(LG_FIXTURES) + "/ckpt_v1",
                    run = std::string(LG_FIXTURES) + "/ckpt_v1_run";
  std::string meta = files::read_file(fixture + "/checkpoint.json");
  CHECK(json::dump(json::parse(meta), 2) + "\n" == meta);
  for (const char* name : {"metrics.jsonl", "train.json", "eval.json", "resume.json"}) {
    CAPTURE(name);
    std::string text = files::read_file(run + "/" + name), again;
    for (size_t start = 0, end; start < text.size(); start = end + 1) {
      end = text.find('\n', start);
      again += json::dump(json::parse(text.substr(start, end - start))) + "\n";
    }
    CHECK(again == text);
  }
  for (const char* name : {"model.safetensors", "optimizer.safetensors"}) {
    CAPTURE(name);
    std::string file = files::read_file(fixture + "/" + name);
    uint64_t length = 0;
    std::memcpy(&length, file.data(), 8);
    std::string header = file.substr(8, length);
    header.erase(header.find_last_not_of(' ') + 1);  // the padding to 8-byte alignment
    json::Json parsed = json::parse(header);
    CHECK(json::dump(parsed) == header);
    const json::Json& metadata = parsed.at("__metadata__");
    if (metadata.contains("config")) {  // the model config, JSON inside the metadata
      std::string config = metadata.at("config");
      CHECK(json::dump(json::parse(config)) == config);
    }
  }
}
