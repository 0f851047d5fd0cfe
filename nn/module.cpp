// nn/module.cpp: parameter registration, traversal by dotted path, state dicts.
#include "nn/module.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace lg::nn {

Tensor Module::register_parameter(const std::string& name, Tensor value) {
  value.set_requires_grad(true);
  params_.emplace_back(name, value);
  return value;
}

void Module::collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& [name, t] : params_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::parameter_count() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::zero_grad() {
  for (auto& [name, t] : named_parameters()) t.zero_grad();
}

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  for (auto& [name, t] : named_parameters()) out.emplace(name, t);
  return out;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state) {
  auto params = named_parameters();
  std::set<std::string> expected;
  for (auto& [name, t] : params) {
    expected.insert(name);
    auto it = state.find(name);
    if (it == state.end()) throw Error(fmt::format("load_state_dict: missing parameter '{}'", name));
    if (it->second.shape() != t.shape())
      throw Error(fmt::format("load_state_dict: parameter '{}' has shape {} in the file, {} in the model",
                              name, shape_str(it->second.shape()), shape_str(t.shape())));
  }
  for (auto& [name, t] : state)
    if (!expected.count(name)) throw Error(fmt::format("load_state_dict: unexpected parameter '{}'", name));
  for (auto& [name, t] : params) {
    std::vector<float> v = state.at(name).to_vector();
    std::copy(v.begin(), v.end(), t.data());
  }
}

void Module::share_parameters(const Module& source) {
  auto mine = named_parameters(), theirs = source.named_parameters();
  if (mine.size() != theirs.size())
    throw Error(fmt::format("share_parameters: {} parameters here, {} in the source", mine.size(),
                            theirs.size()));
  for (size_t i = 0; i < mine.size(); ++i) {
    auto& [name, t] = mine[i];
    const auto& [source_name, s] = theirs[i];
    if (name != source_name || t.shape() != s.shape())
      throw Error(fmt::format("share_parameters: parameter '{}' {} does not match the source's '{}' {}", name,
                              shape_str(t.shape()), source_name, shape_str(s.shape())));
    TensorImpl& dst = t.impl();
    dst.storage = s.impl().storage;
    dst.offset = s.impl().offset;
    dst.strides = s.impl().strides;
    dst.grad.reset();
  }
}

}  // namespace lg::nn
