// nn/module.h: the base of every layer: named parameters and submodules, train/eval, save/load by name.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/ops.h"

namespace lg::nn {

class Module {
 public:
  virtual ~Module() = default;

  // Every parameter with its dotted path, e.g. "blocks.0.attn.latents", in registration order.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t parameter_count() const;

  void train(bool on = true);       // sets this module and every submodule
  void eval() { train(false); }
  bool is_training() const { return training_; }
  void zero_grad();

  // Parameters by name. load_state_dict copies values into the existing tensors (so an
  // optimizer holding them keeps working) and throws lg::Error naming any missing,
  // unexpected or mis-shaped entry.
  std::map<std::string, Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, Tensor>& state);

  // Makes every parameter read `source`'s parameter of the same name: same storage, so the
  // values (and every later update to them) are shared, but this module's parameters stay
  // separate leaves with their own .grad. Data-parallel training runs one such replica per
  // thread. Throws lg::Error if the two modules' names or shapes differ.
  void share_parameters(const Module& source);

 protected:
  // Registers a leaf that requires grad; returns the stored handle.
  Tensor register_parameter(const std::string& name, Tensor value);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    children_.emplace_back(name, module);
    return module;
  }

 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace lg::nn
