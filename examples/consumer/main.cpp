// examples/consumer/main.cpp: a program using installed latentgrad: its own layer, trained, saved, read back.
//
// The layer is a gated linear unit (Dauphin et al. 2017), y = (x A^T + a) * sigmoid(x B^T + b),
// written from core ops as docs/extending.md describes, so it needs no backward of its own. The
// task: tell points inside a circle from points outside it, which no linear model can. The
// program exits non-zero unless the loss falls clearly, the held-out accuracy is high, and the
// saved model reads back bit for bit.
//
//   consumer [MODEL_PATH]    (default: consumer_model.safetensors in the current directory)
#include <latentgrad/latentgrad.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

class GatedLinear : public lg::nn::Module {
 public:
  GatedLinear(int64_t in_features, int64_t out_features, lg::Rng& rng) {
    const float init_std = 1.0f / std::sqrt(static_cast<float>(in_features));
    value_weight = register_parameter("value_weight", lg::randn({out_features, in_features}, rng, init_std));
    value_bias = register_parameter("value_bias", lg::Tensor::zeros({out_features}));
    gate_weight = register_parameter("gate_weight", lg::randn({out_features, in_features}, rng, init_std));
    gate_bias = register_parameter("gate_bias", lg::Tensor::zeros({out_features}));
  }

  // (N, in) -> (N, out)
  lg::Tensor forward(const lg::Tensor& x) const {
    return lg::linear(x, value_weight, value_bias) * lg::sigmoid(lg::linear(x, gate_weight, gate_bias));
  }

  lg::Tensor value_weight, value_bias;  // (out, in), (out,)
  lg::Tensor gate_weight, gate_bias;    // (out, in), (out,)
};

// Point (x, y) -> logits of (outside, inside).
class CircleClassifier : public lg::nn::Module {
 public:
  explicit CircleClassifier(lg::Rng& rng)
      : features(register_module("features", std::make_shared<GatedLinear>(2, kHidden, rng))),
        head(register_module("head",
                             std::make_shared<lg::nn::Linear>(kHidden, 2, /*bias=*/true, rng, 0.1f))) {}

  lg::Tensor forward(const lg::Tensor& points) const {  // (N, 2) -> (N, 2)
    return head->forward(features->forward(points));
  }

  static constexpr int64_t kHidden = 16;
  std::shared_ptr<GatedLinear> features;
  std::shared_ptr<lg::nn::Linear> head;
};

struct Dataset {
  lg::Tensor points;            // (N, 2), uniform in [-1, 1]^2
  std::vector<int32_t> labels;  // 1 inside the circle of area 2 (half the square), else 0
};

Dataset make_dataset(int64_t n, lg::Rng& rng) {
  const float radius_squared = 2.0f / 3.14159265f;
  Dataset data{lg::uniform({n, 2}, rng, -1.0f, 1.0f), {}};
  const float* p = data.points.data();
  for (int64_t i = 0; i < n; ++i)
    data.labels.push_back(p[2 * i] * p[2 * i] + p[2 * i + 1] * p[2 * i + 1] < radius_squared ? 1 : 0);
  return data;
}

float accuracy(const CircleClassifier& model, const Dataset& data) {
  lg::NoGradGuard no_grad;
  const std::vector<float> logits = model.forward(data.points).to_vector();
  int64_t correct = 0;
  for (size_t i = 0; i < data.labels.size(); ++i)
    correct += (logits[2 * i + 1] > logits[2 * i] ? 1 : 0) == data.labels[i];
  return static_cast<float>(correct) / static_cast<float>(data.labels.size());
}

bool same_values(const lg::Tensor& a, const lg::Tensor& b) {
  if (a.shape() != b.shape()) return false;
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  return std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

int run(const std::string& model_path) {
  std::printf("latentgrad %s (headers %s)\n", lg::version(), LATENTGRAD_VERSION);
  if (std::string(lg::version()) != LATENTGRAD_VERSION) {
    std::fprintf(stderr, "consumer: headers and library come from different latentgrad installs\n");
    return 1;
  }

  lg::Rng rng(7);
  const Dataset train = make_dataset(512, rng);
  const Dataset held_out = make_dataset(512, rng);
  CircleClassifier model(rng);

  lg::optim::AdamWConfig adamw;
  adamw.weight_decay = 0.0f;  // a 16-unit model has nothing to spare
  lg::optim::AdamW optimizer(model.named_parameters(), adamw);
  lg::optim::LrSchedule schedule;
  schedule.lr = 0.03f;
  schedule.min_lr = 0.003f;
  schedule.warmup = 20;
  schedule.total = 400;
  float first_loss = 0.0f, last_loss = 0.0f;
  for (int64_t step = 0; step < schedule.total; ++step) {
    lg::Tensor loss = lg::cross_entropy(model.forward(train.points), train.labels);
    optimizer.zero_grad();
    loss.backward();
    lg::optim::clip_grad_norm(model.parameters(), 1.0f);
    optimizer.config.lr = lg::optim::lr_at(schedule, step);
    optimizer.step();
    last_loss = loss.item();
    if (step == 0) first_loss = last_loss;
    if (step % 50 == 0) std::printf("step %3lld  loss %.4f\n", static_cast<long long>(step), last_loss);
  }
  const float held_out_accuracy = accuracy(model, held_out);
  std::printf("loss %.4f -> %.4f, held-out accuracy %.3f\n", first_loss, last_loss, held_out_accuracy);
  // Chance is a loss of ln 2 = 0.69 and an accuracy of 0.5.
  if (!(last_loss < 0.25f * first_loss) || held_out_accuracy < 0.9f) {
    std::fprintf(stderr, "consumer: the model did not learn (loss %.4f -> %.4f, accuracy %.3f)\n", first_loss,
                 last_loss, held_out_accuracy);
    return 1;
  }

  lg::nn::save_module(model, model_path, {{"latentgrad_version", lg::version()}});
  lg::Rng other_rng(8);
  CircleClassifier restored(other_rng);  // different initial weights, overwritten by the load
  lg::nn::load_module(restored, model_path);
  std::map<std::string, std::string> metadata;
  lg::nn::read_safetensors(model_path, &metadata);
  const std::map<std::string, lg::Tensor> saved = model.state_dict(), loaded = restored.state_dict();
  bool equal = saved.size() == loaded.size() && metadata["latentgrad_version"] == lg::version();
  for (const auto& [name, tensor] : saved)
    equal = equal && loaded.count(name) && same_values(tensor, loaded.at(name));
  lg::NoGradGuard no_grad;
  equal = equal && same_values(model.forward(held_out.points), restored.forward(held_out.points));
  if (!equal) {
    std::fprintf(stderr, "consumer: the model read back from %s differs from the one saved\n",
                 model_path.c_str());
    return 1;
  }
  std::printf("saved %lld parameters to %s and read them back: identical\n",
              static_cast<long long>(model.parameter_count()), model_path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 2) {
    std::fprintf(stderr, "usage: consumer [MODEL_PATH]\n");
    return 2;
  }
  try {
    return run(argc == 2 ? argv[1] : "consumer_model.safetensors");
  } catch (const lg::Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
}
