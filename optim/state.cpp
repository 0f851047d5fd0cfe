// optim/state.cpp: name-checked copies into optimizer buffers, shared by AdamW and SGD.
#include "optim/state.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace lg::optim {

void load_buffers(const char* who, const std::map<std::string, Tensor>& source,
                  const std::vector<std::pair<std::string, Tensor>>& buffers) {
  std::set<std::string> expected;
  for (const auto& [name, buffer] : buffers) {
    expected.insert(name);
    auto it = source.find(name);
    if (it == source.end()) throw Error(fmt::format("{}: state has no entry '{}'", who, name));
    if (it->second.shape() != buffer.shape())
      throw Error(fmt::format("{}: state entry '{}' has shape {}, the optimizer expects {}", who, name,
                              shape_str(it->second.shape()), shape_str(buffer.shape())));
  }
  for (const auto& [name, t] : source)
    if (!expected.count(name)) throw Error(fmt::format("{}: unexpected state entry '{}'", who, name));
  for (const auto& [name, buffer] : buffers) {
    std::vector<float> values = source.at(name).to_vector();
    std::copy(values.begin(), values.end(), buffer.data());
  }
}

int64_t parse_step(const char* who, const std::map<std::string, std::string>& metadata) {
  auto it = metadata.find("step");
  if (it == metadata.end()) throw Error(fmt::format("{}: saved state has no 'step' metadata", who));
  const std::string& text = it->second;
  bool digits_only = !text.empty() && text.size() <= 18 &&
                     std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits_only) throw Error(fmt::format("{}: saved step '{}' is not a non-negative integer", who, text));
  return std::stoll(text);
}

}  // namespace lg::optim
