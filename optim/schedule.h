// optim/schedule.h: the learning rate over training: linear warmup, then cosine decay to a floor.
#pragma once

#include <cstdint>

namespace lg::optim {

struct LrSchedule {
  float lr = 1e-3f;      // peak, reached at step `warmup`
  float min_lr = 1e-4f;  // floor, reached at step `total` and held after
  int64_t warmup = 100;  // steps of linear warmup from 0
  int64_t total = 5000;  // step at which the cosine ends (total >= warmup)
};

// The rate for step (0-based):
//   step < warmup            lr * step / warmup
//   warmup <= step < total   min_lr + (lr - min_lr) (1 + cos(pi (step - warmup) / (total - warmup))) / 2
//   step >= total            min_lr
// Throws lg::Error when warmup < 0 or total < warmup.
float lr_at(const LrSchedule& schedule, int64_t step);

}  // namespace lg::optim
