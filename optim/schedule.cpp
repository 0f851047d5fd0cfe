// optim/schedule.cpp: warmup-cosine learning rate (the schedule of GPT-2/nanoGPT training).
#include "optim/schedule.h"

#include <fmt/format.h>

#include <cmath>
#include <numbers>

#include "core/tensor.h"

namespace lg::optim {

float lr_at(const LrSchedule& s, int64_t step) {
  if (s.warmup < 0 || s.total < s.warmup)
    throw Error(
        fmt::format("lr_at: need 0 <= warmup <= total, got warmup {} and total {}", s.warmup, s.total));
  if (step < s.warmup) return s.lr * static_cast<float>(step) / static_cast<float>(s.warmup);
  if (step >= s.total) return s.min_lr;
  double progress = static_cast<double>(step - s.warmup) / static_cast<double>(s.total - s.warmup);  // [0, 1)
  double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));                               // 1 -> 0
  return static_cast<float>(s.min_lr + (s.lr - s.min_lr) * cosine);
}

}  // namespace lg::optim
