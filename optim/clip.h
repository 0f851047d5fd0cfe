// optim/clip.h: gradient clipping by global norm, which keeps one bad batch from wrecking the weights.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace lg::optim {

// The L2 norm of all gradients together (parameters without a gradient count as zero). When it
// exceeds max_norm, every gradient is scaled by max_norm / norm so the global norm becomes
// max_norm. Returns the norm before clipping; a non-finite norm leaves the gradients as they
// are, so the caller can see it and skip the step.
float clip_grad_norm(const std::vector<Tensor>& params, float max_norm);

}  // namespace lg::optim
