// core/cpu.cpp: a portable build's choice between its AVX-512 and portable kernels (see cpu.h).
#include "core/cpu.h"

#include <fmt/format.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "core/tensor.h"

namespace lg {

namespace {

std::atomic<bool> forced_generic{false};

// What the CPU (and the OS, which must save the 512-bit registers) offers, and what
// LATENTGRAD_ISA asks for.
bool choose_avx512() {
  const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  const char* env = std::getenv("LATENTGRAD_ISA");
  const std::string asked = env ? env : "";
  if (asked.empty() || asked == "auto") return cpu;
  if (asked == "generic") return false;
  if (asked == "avx512") {
    if (!cpu) throw Error("LATENTGRAD_ISA=avx512: this CPU has no AVX-512 (F, DQ, BW, VL)");
    return true;
  }
  throw Error(fmt::format("LATENTGRAD_ISA={}: expected auto, generic or avx512", asked));
}

}  // namespace

bool run_avx512_kernels() {
  if constexpr (!kPortableBuild) return false;
  static const bool chosen = choose_avx512();
  return chosen && !forced_generic.load(std::memory_order_relaxed);
}

const char* cpu_kernels() {
  if constexpr (!kPortableBuild) return "native";
  return run_avx512_kernels() ? "avx512" : "generic";
}

bool force_generic_kernels(bool force) { return forced_generic.exchange(force); }

}  // namespace lg
