// optim/state.h: saving and restoring an optimizer's per-parameter buffers by name.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lg::optim {

// Copies source[name] into each named buffer. Throws lg::Error (prefixed by `who`) on a
// missing, mis-shaped or unexpected entry, before changing anything.
void load_buffers(const char* who, const std::map<std::string, Tensor>& source,
                  const std::vector<std::pair<std::string, Tensor>>& buffers);

// Parses the "step" metadata entry of a saved optimizer state; throws lg::Error if absent or invalid.
int64_t parse_step(const char* who, const std::map<std::string, std::string>& metadata);

}  // namespace lg::optim
