// optim/adamw.h: Adam with decoupled weight decay (Loshchilov & Hutter 2019), as GPT-2-style training uses.
//
// With g the gradient and t the step count (from 1), for each parameter p:
//   m = beta1 m + (1 - beta1) g,    v = beta2 v + (1 - beta2) g^2
//   p = p - lr weight_decay p - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// The decay term uses p before the Adam update, as PyTorch's AdamW does, and applies only to
// weight matrices (dim() >= 2): decaying biases and LayerNorm gains toward 0 only hurts.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lg::optim {

struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
};

class AdamW {
 public:
  // params: contiguous leaves under stable names (Module::named_parameters()); the names key
  // the saved state. Throws lg::Error on a duplicate name or a non-contiguous tensor.
  explicit AdamW(std::vector<std::pair<std::string, Tensor>> params, AdamWConfig config = {});

  // One update from the accumulated gradients; parameters without a gradient are left alone.
  void step();
  void zero_grad();  // drops every parameter's gradient
  int64_t step_count() const { return step_; }

  // The moment buffers as "m.<name>" and "v.<name>", in parameter order (views of the live
  // buffers). With step_count() they are the whole state: write them with write_safetensors.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Restores what state_tensors() and step_count() returned; throws lg::Error naming any
  // missing, unexpected or mis-shaped entry.
  void load_state(const std::map<std::string, Tensor>& state, int64_t step_count);
  // The state as a safetensors file, the step in its metadata; load() throws lg::Error on a
  // bad file or a state that does not match these parameters.
  void save(const std::string& path) const;
  void load(const std::string& path);

  AdamWConfig config;  // public so a schedule can set config.lr before each step()

 private:
  struct Slot {
    std::string name;
    Tensor param;
    Tensor m;  // first moment, param's shape
    Tensor v;  // second moment, param's shape
  };
  std::vector<Slot> slots_;
  int64_t step_ = 0;
};

}  // namespace lg::optim
