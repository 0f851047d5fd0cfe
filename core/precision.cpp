// core/precision.cpp: the process-wide precision of linear's products (core/precision.h).
#include "core/precision.h"

#include <fmt/format.h>

#include <atomic>

#include "core/gemm_bf16.h"
#include "core/tensor.h"

namespace lg {

static std::atomic<Precision> g_precision{Precision::fp32};

void set_matmul_precision(Precision p) { g_precision.store(p); }
Precision matmul_precision() { return g_precision.load(); }

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

Precision parse_precision(const std::string& text) {
  if (text == "fp32") return Precision::fp32;
  if (text == "bf16") return Precision::bf16;
  throw Error(fmt::format("unknown precision '{}' (expected fp32 or bf16)", text));
}

void require_precision_available(Precision p) {
  if (p == Precision::bf16 && !gemm_bf16_available())
    throw Error(
        "--precision bf16 needs a CPU with AVX512-BF16 (vdpbf16ps), which this one lacks (the portable bf16 "
        "path is for tests: several hundred times slower); use --precision fp32");
}

}  // namespace lg
