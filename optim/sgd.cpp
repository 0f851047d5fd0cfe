// optim/sgd.cpp: the momentum update as one parallel loop per parameter.
#include "optim/sgd.h"

#include <fmt/format.h>

#include <set>

#include "optim/state.h"

namespace lg::optim {

SGD::SGD(std::vector<std::pair<std::string, Tensor>> params, SGDConfig settings) : config(settings) {
  std::set<std::string> names;
  for (auto& [name, p] : params) {
    if (!names.insert(name).second) throw Error(fmt::format("SGD: parameter name '{}' appears twice", name));
    if (!p.is_contiguous()) throw Error(fmt::format("SGD: parameter '{}' is not contiguous", name));
    slots_.push_back({name, p, Tensor::zeros(p.shape())});
  }
}

void SGD::step() {
  const float lr = config.lr, momentum = config.momentum, decay = config.weight_decay;
  for (Slot& slot : slots_) {
    Tensor grad = slot.param.grad();
    if (!grad.defined()) continue;
    float* p = slot.param.data();
    float* b = slot.momentum.data();
    const float* g = grad.data();
    const int64_t n = slot.param.numel();
#pragma omp parallel for schedule(static) if (n > (1 << 14))
    for (int64_t i = 0; i < n; ++i) {
      b[i] = momentum * b[i] + g[i] + decay * p[i];
      p[i] -= lr * b[i];
    }
  }
}

void SGD::zero_grad() {
  for (Slot& slot : slots_) slot.param.zero_grad();
}

std::vector<std::pair<std::string, Tensor>> SGD::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Slot& slot : slots_) out.emplace_back("momentum." + slot.name, slot.momentum);
  return out;
}

void SGD::load_state(const std::map<std::string, Tensor>& state) {
  load_buffers("SGD::load_state", state, state_tensors());
}

}  // namespace lg::optim
