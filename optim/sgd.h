// optim/sgd.h: stochastic gradient descent with (heavy-ball) momentum, PyTorch's formulation.
//
//   b = momentum b + (g + weight_decay p)      (b starts at 0, so the first step takes b = g)
//   p = p - lr b
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lg::optim {

struct SGDConfig {
  float lr = 0.01f;
  float momentum = 0.9f;      // 0: plain gradient descent
  float weight_decay = 0.0f;  // coupled L2, added to the gradient, on every parameter
};

class SGD {
 public:
  // params as for AdamW: contiguous leaves under stable names.
  explicit SGD(std::vector<std::pair<std::string, Tensor>> params, SGDConfig config = {});
  void step();  // parameters without a gradient are left alone
  void zero_grad();

  // The momentum buffers as "momentum.<name>" (views of the live buffers), and their restore.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  void load_state(const std::map<std::string, Tensor>& state);

  SGDConfig config;

 private:
  struct Slot {
    std::string name;
    Tensor param;
    Tensor momentum;  // param's shape
  };
  std::vector<Slot> slots_;
};

}  // namespace lg::optim
