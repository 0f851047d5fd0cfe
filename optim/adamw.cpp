// optim/adamw.cpp: the AdamW update as one parallel loop over every parameter, and its saved state.
#include "optim/adamw.h"

#include <fmt/format.h>

#include <cmath>
#include <set>

#include "nn/safetensors.h"
#include "optim/blocks.h"
#include "optim/state.h"

namespace lg::optim {

AdamW::AdamW(std::vector<std::pair<std::string, Tensor>> params, AdamWConfig settings) : config(settings) {
  std::set<std::string> names;
  for (auto& [name, p] : params) {
    if (!names.insert(name).second)
      throw Error(fmt::format("AdamW: parameter name '{}' appears twice", name));
    if (!p.is_contiguous()) throw Error(fmt::format("AdamW: parameter '{}' is not contiguous", name));
    slots_.push_back({name, p, Tensor::zeros(p.shape()), Tensor::zeros(p.shape())});
  }
}

void AdamW::step() {
  ++step_;
  const float beta1 = config.beta1, beta2 = config.beta2, eps = config.eps, lr = config.lr;
  // Bias corrections in double: 1 - beta2^t is tiny for small t and float would round it badly.
  const double correction1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step_));
  const double correction2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step_));
  const float step_size = static_cast<float>(lr / correction1);
  const float inv_sqrt_correction2 = static_cast<float>(1.0 / std::sqrt(correction2));
  // Every parameter with a gradient, cut into blocks: one parallel loop for the whole model.
  std::vector<const Slot*> live;
  std::vector<Tensor> grads;
  std::vector<int64_t> sizes;
  for (const Slot& slot : slots_) {
    Tensor grad = slot.param.grad();
    if (!grad.defined()) continue;
    live.push_back(&slot);
    sizes.push_back(slot.param.numel());
    grads.push_back(std::move(grad));
  }
  const std::vector<Block> blocks = cut_into_blocks(sizes);
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  const float decay = lr * config.weight_decay;
#pragma omp parallel for schedule(static) if (n_blocks > 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const Slot& slot = *live[blocks[b].tensor];
    const float keep = slot.param.dim() >= 2 ? 1.0f - decay : 1.0f;
    float* __restrict p = slot.param.data();
    float* __restrict m = slot.m.data();
    float* __restrict v = slot.v.data();
    const float* __restrict g = grads[blocks[b].tensor].data();
#pragma omp simd
    for (int64_t i = blocks[b].begin; i < blocks[b].end; ++i) {
      m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
      v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
      p[i] = p[i] * keep - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_correction2 + eps);
    }
  }
}

void AdamW::zero_grad() {
  for (Slot& slot : slots_) slot.param.zero_grad();
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Slot& slot : slots_) out.emplace_back("m." + slot.name, slot.m);
  for (const Slot& slot : slots_) out.emplace_back("v." + slot.name, slot.v);
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& state, int64_t step_count) {
  if (step_count < 0) throw Error(fmt::format("AdamW::load_state: negative step count {}", step_count));
  load_buffers("AdamW::load_state", state, state_tensors());
  step_ = step_count;
}

void AdamW::save(const std::string& path) const {
  nn::write_safetensors(path, state_tensors(), {{"optimizer", "adamw"}, {"step", std::to_string(step_)}});
}

void AdamW::load(const std::string& path) {
  std::map<std::string, std::string> metadata;
  std::map<std::string, Tensor> state = nn::read_safetensors(path, &metadata);
  if (metadata.count("optimizer") && metadata.at("optimizer") != "adamw")
    throw Error(fmt::format("AdamW::load {}: the file holds {} state", path, metadata.at("optimizer")));
  load_state(state, parse_step("AdamW::load", metadata));
}

}  // namespace lg::optim
